package workloadapi_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/ca/catest"
	"github.com/shortleaf/shortleaf/pkg/harness"
	"github.com/shortleaf/shortleaf/pkg/uds"
	wl "github.com/shortleaf/shortleaf/pkg/workloadapi"
)

// source is a hand-driven wl.Source: the seam between the Workload API and
// the agent's cache.
type source struct {
	mu      sync.Mutex
	state   *wl.State
	changed chan struct{}
}

func (s *source) Current() (*wl.State, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state, s.changed
}

func (s *source) set(st *wl.State) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.state = st
	close(s.changed)
	s.changed = make(chan struct{})
}

type fixedAttestor []attest.Selector

func (f fixedAttestor) Attest(context.Context, uds.PeerCred) ([]attest.Selector, error) {
	return f, nil
}

var uid1 = attest.Selector{Type: "unix", Value: "uid:1"}

func identity(t *testing.T, c *ca.CA, id, hint string, sels ...attest.Selector) *wl.Identity {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sid := spiffeid.RequireFromString(id)
	chain, err := c.SignX509SVID(ca.X509SVIDParams{PublicKey: key.Public(), SPIFFEID: sid, TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	var rest bytes.Buffer
	for _, cert := range chain[1:] {
		rest.Write(cert.Raw)
	}
	return &wl.Identity{Registration: &wl.Registration{EntryID: id, SPIFFEID: sid, Hint: hint, Selectors: sels},
		SVID: &wl.SVID{LeafDER: chain[0].Raw, IntermediatesDER: rest.Bytes(), KeyDER: keyDER, Serial: chain[0].SerialNumber.String()}}
}

func serve(t *testing.T, src wl.Source, sels ...attest.Selector) string {
	t.Helper()
	return serveWith(t, wl.Config{Source: src, JWT: fixedJWT{"test-token"}, Attestor: fixedAttestor(sels)})
}

func serveWith(t *testing.T, cfg wl.Config) string {
	t.Helper()
	sock := filepath.Join(harness.ShortDir(t), "wl.sock")
	lis, err := uds.Listen(sock, 0o777)
	if err != nil {
		t.Fatal(err)
	}
	g := wl.NewGRPCServer(wl.New(cfg), wl.Limits{})
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return "unix://" + sock
}

func state(c *ca.CA, ids ...*wl.Identity) *wl.State {
	b, _ := c.Bundle()
	var der bytes.Buffer
	for _, r := range b.X509Authorities() {
		der.Write(r.Raw)
	}
	return &wl.State{Ready: true, TrustDomain: catest.TrustDomain, BundleDER: der.Bytes(), Identities: ids}
}

func TestUnavailableUntilReadyThenServed(t *testing.T) {
	c := catest.New(t)
	src := &source{state: &wl.State{}, changed: make(chan struct{})}
	addr := serve(t, src, uid1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr(addr)); status.Code(err) != codes.Unavailable {
		t.Fatalf("before the first sync: %v, want Unavailable", err)
	}
	src.set(state(c, identity(t, c, "spiffe://example.org/a", "", uid1)))
	x, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr(addr))
	if err != nil || x.DefaultSVID().ID.String() != "spiffe://example.org/a" {
		t.Fatalf("after sync: %v", err)
	}
}

func TestHintsAreUniqueAndOrderStable(t *testing.T) {
	c := catest.New(t)
	src := &source{changed: make(chan struct{})}
	src.state = state(c,
		identity(t, c, "spiffe://example.org/a", "internal", uid1),
		identity(t, c, "spiffe://example.org/b", "internal", uid1), // same hint: dropped
		identity(t, c, "spiffe://example.org/c", "", uid1),
		identity(t, c, "spiffe://example.org/d", "", uid1, attest.Selector{Type: "unix", Value: "gid:9"}), // not all selectors
	)
	addr := serve(t, src, uid1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	x, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr(addr))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range x.SVIDs {
		got = append(got, s.ID.String())
	}
	if len(got) != 2 || got[0] != "spiffe://example.org/a" || got[1] != "spiffe://example.org/c" {
		t.Fatalf("SVIDs = %v, want [a c]", got)
	}
}

func TestStreamSendsEveryChangeAndEndsWhenRemoved(t *testing.T) {
	c := catest.New(t)
	src := &source{changed: make(chan struct{})}
	src.state = state(c, identity(t, c, "spiffe://example.org/a", "", uid1))
	addr := serve(t, src, uid1)
	client, err := workloadapi.New(context.Background(), workloadapi.WithAddr(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	updates := make(chan *workloadapi.X509Context, 8)
	errs := make(chan error, 8)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() { _ = client.WatchX509Context(ctx, watcher{updates, errs}) }()
	first := <-updates
	renewed := identity(t, c, "spiffe://example.org/a", "", uid1)
	src.set(state(c, renewed))
	second := <-updates
	if first.DefaultSVID().Certificates[0].SerialNumber.Cmp(second.DefaultSVID().Certificates[0].SerialNumber) == 0 {
		t.Fatal("the renewal was not sent")
	}
	// The entry goes away: the stream ends with PermissionDenied.
	src.set(state(c))
	select {
	case err := <-errs:
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("after removal: %v, want PermissionDenied", err)
		}
	case <-ctx.Done():
		t.Fatal("no error after the identity was removed")
	}
}

type watcher struct {
	updates chan<- *workloadapi.X509Context
	errs    chan<- error
}

func (w watcher) OnX509ContextUpdate(c *workloadapi.X509Context) { w.updates <- c }
func (w watcher) OnX509ContextWatchError(err error)              { w.errs <- err }
