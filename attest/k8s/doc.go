// Package k8s is the start of the Kubernetes workload attestor: it finds
// the pod and container a process runs in from its cgroups
// (/proc/<pid>/cgroup), with cgroup v1 and v2 and the path formats of the
// cgroupfs and systemd drivers under Docker, containerd and CRI-O:
//
//	/kubepods/burstable/pod<uid>/<container id>
//	/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/cri-containerd-<id>.scope
//
// Selectors turns that container, found in the kubelet's pod list
// (ParsePodList decodes its /pods answer), into k8s:* selectors: namespace,
// service account, pod name, UID and labels, node, container name and
// image. Still to be built: the kubelet client (its HTTPS port with the
// node's token, or the read-only port), the retry while a new pod is not
// yet listed, the attestor wired into the agent, and the k8s selector type
// in attest's table (until then entries cannot name k8s selectors, so none
// is registered that nothing could attest).
package k8s
