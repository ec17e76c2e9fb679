package harness_test

import (
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/shortleaf/shortleaf/attest/k8s"
	"github.com/shortleaf/shortleaf/pkg/agent"
	"github.com/shortleaf/shortleaf/pkg/harness"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// A go-spiffe workload running, as far as the agent can tell, in a pod's
// container: its /proc/<pid>/cgroup (under the agent's proc root) names the
// pod and container, and a kubelet (HTTPS, bearer token) lists the pod. It
// gets the SVID of the entry whose k8s selectors match its pod, not the one
// for another namespace.
func TestKubernetesWorkloadGetsItsPodsSVID(t *testing.T) {
	pods, err := os.ReadFile("../../attest/k8s/testdata/kubelet-pods.json")
	if err != nil {
		t.Fatal(err)
	}
	kubelet := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/pods" || r.Header.Get("Authorization") != "Bearer node-agent-token" {
			http.Error(w, "Unauthorized", http.StatusUnauthorized)
			return
		}
		_, _ = w.Write(pods)
	}))
	defer kubelet.Close()
	dir := t.TempDir()
	caFile, tokenFile, procRoot := filepath.Join(dir, "kubelet-ca.pem"), filepath.Join(dir, "token"), filepath.Join(dir, "proc")
	_ = os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: kubelet.Certificate().Raw}), 0o600)
	_ = os.WriteFile(tokenFile, []byte("node-agent-token"), 0o600)
	// This test process is the workload: its cgroups say pod 7d4a2d5b…,
	// container "app" under containerd with the systemd driver.
	self := filepath.Join(procRoot, strconv.Itoa(os.Getpid()))
	if err := os.MkdirAll(self, 0o700); err != nil {
		t.Fatal(err)
	}
	cgroup := "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod7d4a2d5b_0c1e_4b7a_9d1e_3a6f1b2c4d5e.slice/" +
		"cri-containerd-4f1c6a2e8b9d0c7e5a3b1f2d4e6c8a0b9d7f5e3c1a2b4d6f8e0c2a4b6d8f0e1a.scope\n"
	if err := os.WriteFile(filepath.Join(self, "cgroup"), []byte(cgroup), 0o600); err != nil {
		t.Fatal(err)
	}

	srv := harness.StartServer(t)
	ag := harness.StartAgent(t, srv, func(c *agent.Config) {
		c.Kubernetes = &k8s.AttestorConfig{ProcRoot: procRoot, Kubelet: k8s.KubeletConfig{URL: kubelet.URL, TokenFile: tokenFile, CAFile: caFile}}
	})
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/payments/web", ParentId: ag.ID(),
		Selectors: []string{"k8s:ns:payments", "k8s:sa:web", "k8s:container-name:app", "k8s:pod-label:tier:front"}})
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/other/web", ParentId: ag.ID(),
		Selectors: []string{"k8s:ns:other", "k8s:sa:web"}})
	x, err := fetchX509(t, ag.Addr(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(x.SVIDs) != 1 || x.DefaultSVID().ID.String() != "spiffe://example.org/payments/web" {
		t.Fatalf("the workload got %d SVIDs, first %s; want only spiffe://example.org/payments/web", len(x.SVIDs), x.DefaultSVID().ID)
	}
}
