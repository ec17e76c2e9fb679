package k8s_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shortleaf/shortleaf/attest/k8s"
)

const (
	pod1 = "2c48913c-b29f-11e7-9350-020968147796"
	ctr1 = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961"
	pod2 = "7d4a2d5b-0c1e-4b7a-9d1e-3a6f1b2c4d5e"
	ctr2 = "4f1c6a2e8b9d0c7e5a3b1f2d4e6c8a0b9d7f5e3c1a2b4d6f8e0c2a4b6d8f0e1a"
	pod3 = "0b6e8f2a-91c4-4d7e-8a3b-5c2d1e0f9a8b"
	ctr3 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
)

// Real /proc/<pid>/cgroup layouts of the cgroup versions, drivers and
// runtimes a kubelet uses, and processes that are not in a pod.
func TestParseCgroups(t *testing.T) {
	for _, tc := range []struct {
		file    string
		want    k8s.Container
		found   bool
		wantErr string
	}{
		{file: "cgroupv1-docker-cgroupfs.txt", want: k8s.Container{PodUID: pod1, ContainerID: ctr1}, found: true},
		{file: "cgroupv1-containerd-systemd.txt", want: k8s.Container{PodUID: pod2, ContainerID: ctr2}, found: true},
		{file: "cgroupv2-containerd-systemd.txt", want: k8s.Container{PodUID: pod2, ContainerID: ctr2}, found: true},
		{file: "cgroupv2-docker-systemd.txt", want: k8s.Container{PodUID: pod2, ContainerID: ctr2}, found: true},
		{file: "cgroupv2-crio-guaranteed.txt", want: k8s.Container{PodUID: pod3, ContainerID: ctr3}, found: true},
		{file: "cgroupv2-cgroupfs.txt", want: k8s.Container{PodUID: pod1, ContainerID: ctr1}, found: true},
		// CRI-O's monitor runs beside the container, not in it.
		{file: "cgroupv2-crio-conmon.txt"},
		{file: "host-session.txt"},
		{file: "docker-not-kubernetes.txt"},
		{file: "two-containers.txt", wantErr: "names container e3b0c44298fc of pod " + pod1 + ", an earlier line 9bca8d63d5fa"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			content, err := os.ReadFile(filepath.Join("testdata", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			got, found, err := k8s.ParseCgroups(content)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || found != tc.found || got != tc.want {
				t.Fatalf("got %+v found=%v err=%v, want %+v found=%v", got, found, err, tc.want, tc.found)
			}
		})
	}
}

func TestParseCgroupsRefusesWhatIsNotACgroupFile(t *testing.T) {
	for name, content := range map[string]string{
		"no fields": "kubepods\n",
		"too large": strings.Repeat("0::/a\n", 20_000),
	} {
		if _, _, err := k8s.ParseCgroups([]byte(content)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// FuzzParseCgroups: any content gives an answer or an error, never a panic,
// and a container found is well formed.
func FuzzParseCgroups(f *testing.F) {
	entries, _ := os.ReadDir("testdata")
	for _, e := range entries {
		if b, err := os.ReadFile(filepath.Join("testdata", e.Name())); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, content []byte) {
		c, found, err := k8s.ParseCgroups(content)
		if err != nil || !found {
			return
		}
		if len(c.ContainerID) != 64 || len(c.PodUID) != 36 || strings.Contains(c.PodUID, "_") {
			t.Fatalf("malformed container %+v", c)
		}
	})
}
