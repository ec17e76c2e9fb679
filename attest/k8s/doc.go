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
// image. Kubelet reads that list from the node's kubelet (its HTTPS port
// with the agent's service-account token, read again for every request, or
// the read-only port) and asks again briefly while a new pod is not yet
// listed. Still to be built: the attestor wired into the agent (pid →
// /proc/<pid>/cgroup → Container → selectors) with its config, and the k8s
// selector type in attest's table (until then entries cannot name k8s
// selectors, so none is registered that nothing could attest).
package k8s
