package k8s_test

import (
	"context"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shortleaf/shortleaf/attest/k8s"
)

// kubeletServer is an HTTPS server answering /pods as a kubelet does: it
// checks the bearer token, and lists the pod only from the third request
// on (a workload that calls as soon as its container starts).
func kubeletServer(t *testing.T, token *atomic.Value) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	full := podList(t)
	calls := &atomic.Int64{}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/pods" {
			http.NotFound(w, r)
			return
		}
		if r.Header.Get("Authorization") != "Bearer "+token.Load().(string) {
			http.Error(w, "Unauthorized", http.StatusUnauthorized)
			return
		}
		if calls.Add(1) < 3 {
			_, _ = w.Write([]byte(`{"kind":"PodList","apiVersion":"v1","items":[]}`))
			return
		}
		_, _ = w.Write(full)
	}))
	t.Cleanup(srv.Close)
	return srv, calls
}

func TestKubeletSelectorsWaitForANewPod(t *testing.T) {
	var token atomic.Value
	token.Store("token-1")
	srv, calls := kubeletServer(t, &token)
	dir := t.TempDir()
	caFile, tokenFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "token")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokenFile, []byte("token-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	kl, err := k8s.NewKubelet(k8s.KubeletConfig{URL: srv.URL, TokenFile: tokenFile, CAFile: caFile, Retry: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	sels, err := kl.ContainerSelectors(context.Background(), k8s.Container{PodUID: pod2, ContainerID: ctr2})
	if err != nil || len(sels) == 0 || sels[0].String() != "k8s:ns:payments" {
		t.Fatalf("selectors %v, %v", sels, err)
	}
	if n := calls.Load(); n != 3 {
		t.Fatalf("%d requests, want 3 (two before the pod was listed)", n)
	}

	// The token is read for every request: a rotated token is used.
	token.Store("token-2")
	if _, err := kl.Pods(context.Background()); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("with the old token: %v, want 401", err)
	}
	_ = os.WriteFile(tokenFile, []byte("token-2"), 0o600)
	if _, err := kl.Pods(context.Background()); err != nil {
		t.Fatalf("with the rotated token: %v", err)
	}

	// A container that never appears: ErrNotListed after RetryFor.
	short, err := k8s.NewKubelet(k8s.KubeletConfig{URL: srv.URL, TokenFile: tokenFile, CAFile: caFile, Retry: 10 * time.Millisecond, RetryFor: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := short.ContainerSelectors(context.Background(), k8s.Container{PodUID: pod1, ContainerID: ctr1}); !errors.Is(err, k8s.ErrNotListed) {
		t.Fatalf("a container never listed: %v, want ErrNotListed", err)
	}
}

func TestKubeletChecksItsCertificate(t *testing.T) {
	var token atomic.Value
	token.Store("t")
	srv, _ := kubeletServer(t, &token)
	// No CA given: the system roots do not know the test server.
	kl, err := k8s.NewKubelet(k8s.KubeletConfig{URL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kl.Pods(context.Background()); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("an unknown kubelet certificate: %v", err)
	}
	if _, err := k8s.NewKubelet(k8s.KubeletConfig{URL: "ftp://node:10250"}); err == nil || !strings.Contains(err.Error(), "kubelet url") {
		t.Fatalf("a bad URL: %v", err)
	}
}
