package k8s_test

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/attest/k8s"
)

func podList(t testing.TB) []byte {
	t.Helper()
	raw, err := os.ReadFile("testdata/kubelet-pods.json")
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestSelectorsOfAContainerInTheKubeletsPodList(t *testing.T) {
	pods, err := k8s.ParsePodList(podList(t))
	if err != nil {
		t.Fatal(err)
	}
	got, ok := k8s.Selectors(pods, k8s.Container{PodUID: pod2, ContainerID: ctr2})
	if !ok {
		t.Fatal("the running container was not found")
	}
	var have []string
	for _, s := range got {
		have = append(have, s.String())
	}
	want := []string{
		"k8s:ns:payments", "k8s:sa:web", "k8s:pod-name:web-7f9c6d5b8-x2k4q", "k8s:pod-uid:" + pod2, "k8s:node-name:node-3",
		"k8s:container-name:app",
		"k8s:container-image:registry.internal/web@sha256:2222222222222222222222222222222222222222222222222222222222222222",
		"k8s:container-image:registry.internal/web:1.4",
		"k8s:pod-label:app:web", "k8s:pod-label:pod-template-hash:7f9c6d5b8", "k8s:pod-label:tier:front",
	}
	if !slices.Equal(have, want) {
		t.Fatalf("selectors\n%s\nwant\n%s", strings.Join(have, "\n"), strings.Join(want, "\n"))
	}

	// An init container is found too.
	if got, ok := k8s.Selectors(pods, k8s.Container{PodUID: pod2, ContainerID: ctr3}); !ok || !slices.Contains(got, attest.Selector{Type: "k8s", Value: "container-name:migrate"}) {
		t.Fatalf("init container: %v %v", got, ok)
	}
	// A pod whose container has no ID yet, a container of another pod, and
	// a pod not listed: not found (the attestor retries, then gives none).
	for name, c := range map[string]k8s.Container{
		"container not started":    {PodUID: pod3, ContainerID: ctr3},
		"container of another pod": {PodUID: pod3, ContainerID: ctr2},
		"pod not listed":           {PodUID: pod1, ContainerID: ctr1},
	} {
		if got, ok := k8s.Selectors(pods, c); ok {
			t.Errorf("%s: found %v", name, got)
		}
	}
}

func TestParsePodListRefusesWhatIsNotOne(t *testing.T) {
	for name, raw := range map[string]string{
		"not json":    "<html>",
		"wrong shape": `{"items": {"a": 1}}`,
		"too large":   `{"items": [` + strings.Repeat(" ", 17<<20) + `]}`,
	} {
		if _, err := k8s.ParsePodList([]byte(raw)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// FuzzParsePodList: any kubelet answer decodes or is refused, and
// selecting from it never panics.
func FuzzParsePodList(f *testing.F) {
	f.Add(podList(f))
	f.Add([]byte(`{"items":[{"metadata":{"uid":"` + pod1 + `"},"status":{"containerStatuses":[{"containerID":"docker://` + ctr1 + `"}]}}]}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		pods, err := k8s.ParsePodList(raw)
		if err != nil {
			return
		}
		k8s.Selectors(pods, k8s.Container{PodUID: pod1, ContainerID: ctr1})
		k8s.Selectors(pods, k8s.Container{PodUID: pod2, ContainerID: ctr2})
	})
}
