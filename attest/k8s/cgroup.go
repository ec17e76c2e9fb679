package k8s

import (
	"bufio"
	"bytes"
	"fmt"
	"regexp"
	"strings"
)

// Container is where a process runs: its pod's UID (with dashes, as the API
// writes it) and its container's ID (64 hex digits, as the runtime names it).
type Container struct {
	PodUID      string
	ContainerID string
}

// maxCgroupFile bounds what ParseCgroups reads: a process has one line per
// hierarchy, a few kilobytes in all.
const maxCgroupFile = 64 << 10

var (
	// podSegment finds the pod UID in a path segment: "pod<uid>" under the
	// cgroupfs driver, "kubepods-<qos>-pod<uid_with_underscores>.slice"
	// under systemd.
	podSegment = regexp.MustCompile(`(?:^|-)pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?$`)
	// containerSegment finds the container ID in the last segment: the
	// bare ID (cgroupfs), or "<runtime>-<id>.scope" (systemd: docker,
	// cri-containerd, crio). CRI-O's "crio-conmon-<id>.scope" is its
	// monitor process, not the container: it does not match.
	containerSegment = regexp.MustCompile(`^(?:(?:docker|cri-containerd|crio|containerd)-)?([0-9a-f]{64})(?:\.scope)?$`)
)

// ParseCgroups reads the content of /proc/<pid>/cgroup and returns the
// container the process runs in, and false when it is not in a Kubernetes
// pod. Lines that name different containers are an error: the process
// cannot be told apart, so nothing is attested for it.
func ParseCgroups(content []byte) (Container, bool, error) {
	if len(content) > maxCgroupFile {
		return Container{}, false, fmt.Errorf("cgroup file: %d bytes, more than %d", len(content), maxCgroupFile)
	}
	var found Container
	sc := bufio.NewScanner(bytes.NewReader(content))
	sc.Buffer(make([]byte, 0, 4096), maxCgroupFile)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" {
			continue
		}
		// hierarchy-ID:controller-list:cgroup-path; the path may hold ':'.
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			return Container{}, false, fmt.Errorf("cgroup file: line %d: want hierarchy:controllers:path", n)
		}
		c, ok := containerOf(parts[2])
		if !ok {
			continue
		}
		if found != (Container{}) && found != c {
			return Container{}, false, fmt.Errorf("cgroup file: line %d names container %s of pod %s, an earlier line %s of pod %s",
				n, short(c.ContainerID), c.PodUID, short(found.ContainerID), found.PodUID)
		}
		found = c
	}
	if err := sc.Err(); err != nil {
		return Container{}, false, fmt.Errorf("cgroup file: %w", err)
	}
	return found, found != (Container{}), nil
}

// containerOf finds the pod UID in a segment of path and the container ID
// in its last segment.
func containerOf(path string) (Container, bool) {
	segments := strings.Split(strings.Trim(path, "/"), "/")
	if len(segments) < 2 {
		return Container{}, false
	}
	var pod string
	for _, seg := range segments[:len(segments)-1] {
		if m := podSegment.FindStringSubmatch(seg); m != nil {
			pod = strings.ReplaceAll(m[1], "_", "-")
		}
	}
	if pod == "" {
		return Container{}, false
	}
	m := containerSegment.FindStringSubmatch(segments[len(segments)-1])
	if m == nil {
		return Container{}, false
	}
	return Container{PodUID: pod, ContainerID: m[1]}, true
}

func short(id string) string { return id[:12] }
