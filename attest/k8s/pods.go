package k8s

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/shortleaf/shortleaf/attest"
)

// maxPodList bounds a kubelet pod list read: a node runs at most a few
// hundred pods (110 by default), each a few kilobytes.
const maxPodList = 16 << 20

// ParsePodList decodes the kubelet's /pods answer.
func ParsePodList(raw []byte) (*corev1.PodList, error) {
	if len(raw) > maxPodList {
		return nil, fmt.Errorf("kubelet pod list: %d bytes, more than %d", len(raw), maxPodList)
	}
	var pods corev1.PodList
	if err := json.Unmarshal(raw, &pods); err != nil {
		return nil, fmt.Errorf("kubelet pod list: %w", err)
	}
	return &pods, nil
}

// Selectors returns the k8s selectors of container c, found in the
// kubelet's pod list, and false when the pod or the container is not in it
// (a pod just started: the caller retries briefly):
//
//	k8s:ns:<namespace>  k8s:sa:<service account>  k8s:pod-name:<name>
//	k8s:pod-uid:<uid>  k8s:node-name:<node>  k8s:pod-label:<key>:<value>
//	k8s:container-name:<name>  k8s:container-image:<image>
//
// The image is the one the container runs (its status), and also the one
// its spec names when that differs (a tag against the resolved reference).
func Selectors(pods *corev1.PodList, c Container) ([]attest.Selector, bool) {
	for i := range pods.Items {
		pod := &pods.Items[i]
		if string(pod.UID) != c.PodUID {
			continue
		}
		status, ok := containerStatus(pod, c.ContainerID)
		if !ok {
			return nil, false
		}
		var out []attest.Selector
		add := func(key, value string) { // an empty field makes no selector
			if value != "" {
				out = append(out, attest.Selector{Type: "k8s", Value: key + ":" + value})
			}
		}
		add("ns", pod.Namespace)
		add("sa", pod.Spec.ServiceAccountName)
		add("pod-name", pod.Name)
		add("pod-uid", string(pod.UID))
		add("node-name", pod.Spec.NodeName)
		add("container-name", status.Name)
		add("container-image", status.Image)
		if img := specImage(pod, status.Name); img != status.Image {
			add("container-image", img)
		}
		keys := make([]string, 0, len(pod.Labels))
		for k := range pod.Labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			out = append(out, attest.Selector{Type: "k8s", Value: "pod-label:" + k + ":" + pod.Labels[k]})
		}
		return out, true
	}
	return nil, false
}

// containerStatus finds the status of the container with this ID, among
// the pod's containers, init containers and ephemeral containers. The
// kubelet writes IDs as "<runtime>://<id>".
func containerStatus(pod *corev1.Pod, id string) (corev1.ContainerStatus, bool) {
	for _, list := range [][]corev1.ContainerStatus{pod.Status.ContainerStatuses, pod.Status.InitContainerStatuses, pod.Status.EphemeralContainerStatuses} {
		for _, st := range list {
			if _, cid, ok := strings.Cut(st.ContainerID, "://"); ok && cid == id {
				return st, true
			}
		}
	}
	return corev1.ContainerStatus{}, false
}

// specImage is the image the pod's spec names for a container.
func specImage(pod *corev1.Pod, name string) string {
	for _, list := range [][]corev1.Container{pod.Spec.Containers, pod.Spec.InitContainers} {
		for _, ctr := range list {
			if ctr.Name == name {
				return ctr.Image
			}
		}
	}
	for _, ctr := range pod.Spec.EphemeralContainers {
		if ctr.Name == name {
			return ctr.Image
		}
	}
	return ""
}
