// Package k8s is the start of the Kubernetes workload attestor: it finds
// the pod and container a process runs in from its cgroups
// (/proc/<pid>/cgroup), with cgroup v1 and v2 and the path formats of the
// cgroupfs and systemd drivers under Docker, containerd and CRI-O:
//
//	/kubepods/burstable/pod<uid>/<container id>
//	/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/cri-containerd-<id>.scope
//
// The pod's details (namespace, service account, labels, image), which
// become k8s:* selectors, come from the kubelet's pod list, still to be
// built; so is the attestor itself.
package k8s
