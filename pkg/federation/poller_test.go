package federation_test

import (
	"context"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shortleaf/shortleaf/ca/catest"
	"github.com/shortleaf/shortleaf/pkg/datastore"
	"github.com/shortleaf/shortleaf/pkg/federation"
)

// An endpoint that hangs delays only its own relationship: while the first
// (in list order) endpoint holds its request open, the second one is polled
// again and again at its one-second refresh hint.
func TestSlowEndpointDoesNotBlockOthers(t *testing.T) {
	store, err := datastore.Open(filepath.Join(t.TempDir(), "datastore.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	body, err := catest.New(t).SPIFFEBundle(time.Second).Marshal()
	if err != nil {
		t.Fatal(err)
	}

	release := make(chan struct{})
	var slowRequests atomic.Int32
	slow := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		slowRequests.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	var fastRequests atomic.Int32
	fast := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fastRequests.Add(1)
		_, _ = w.Write(body)
	}))
	t.Cleanup(func() { close(release); slow.Close(); fast.Close() })

	ctx := context.Background()
	for _, f := range []*datastore.Federation{
		{TrustDomain: "a-slow.org", URL: slow.URL, Profile: federation.ProfileWeb, WebRootsPEM: certPEM(slow)},
		{TrustDomain: "example.org", URL: fast.URL, Profile: federation.ProfileWeb, WebRootsPEM: certPEM(fast)},
	} {
		if err := store.PutFederation(ctx, f, true); err != nil {
			t.Fatal(err)
		}
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- federation.NewPoller(store, nil, nil).Run(runCtx) }()

	deadline := time.Now().Add(15 * time.Second) // under the hanging fetch's 20-s header timeout
	for fastRequests.Load() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("the fast endpoint was polled %d times while the slow one hung, want 3", fastRequests.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := slowRequests.Load(); n != 1 {
		t.Fatalf("the hanging endpoint got %d requests, want 1 (never two fetches of one relationship at once)", n)
	}
	got, err := store.GetFederation(ctx, "example.org")
	if err != nil || got.LastRefresh.IsZero() || got.LastError != "" {
		t.Fatalf("fast relationship: %+v %v", got, err)
	}
	// Stopping the poller ends the hanging fetch too.
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

func certPEM(s *httptest.Server) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Certificate().Raw})
}
