// Package k8s is the Kubernetes workload attestor. The agent, as a
// DaemonSet pod with the node's /proc, finds a caller's pod and container
// from its cgroups (/proc/<pid>/cgroup), with cgroup v1 and v2 and the path
// formats of the cgroupfs and systemd drivers under Docker, containerd and
// CRI-O:
//
//	/kubepods/burstable/pod<uid>/<container id>
//	/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/cri-containerd-<id>.scope
//
// then looks the pod up in the kubelet's pod list (its HTTPS port with the
// agent's service-account token, read again for every request, or the
// read-only port), asking again briefly while a new pod is not yet listed,
// and gives k8s:* selectors: namespace, service account, pod name, UID and
// labels, node, container name and image.
package k8s
