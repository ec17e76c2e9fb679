package harness_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/pkg/harness"
	"github.com/shortleaf/shortleaf/pkg/keymanager/keymanagertest"
	"github.com/shortleaf/shortleaf/pkg/server"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// fastRotation makes intermediates live 8s with 2s SVIDs: a new intermediate
// is prepared every ~4s and activated every ~6s.
func fastRotation(c *server.Config) {
	c.IntermediateTTL = 8 * time.Second
	c.DefaultSVIDTTL = 2 * time.Second
	c.AgentSVIDTTL = 2 * time.Second
	c.MaxSVIDTTL = 2 * time.Second
	c.RotationInterval = 50 * time.Millisecond
	c.AgentLiveness = time.Minute
}

// Two workloads on two agents handshake mTLS without pause while the
// intermediate rotates several times and a whole root rotation runs: not one
// handshake may fail.
func TestNoHandshakeFailsAcrossRotations(t *testing.T) {
	srv := harness.StartServer(t, fastRotation)
	agA, agB := harness.StartAgent(t, srv), harness.StartAgent(t, srv)
	idA, idB := spiffeid.RequireFromString("spiffe://example.org/a"), spiffeid.RequireFromString("spiffe://example.org/b")
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: idA.String(), ParentId: agA.ID(), Selectors: []string{uidSelector()}})
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: idB.String(), ParentId: agB.ID(), Selectors: []string{uidSelector()}})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	probe := startMTLSProbe(t, x509Source(ctx, t, agA), idA, x509Source(ctx, t, agB), idB)

	time.Sleep(14 * time.Second) // two or more scheduled intermediate rotations

	root, err := srv.Admin.PrepareRoot(ctx, &adminv1.PrepareRootRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// The schedule activates it once the agents hold it, and retires the
	// old root once its intermediates are gone.
	waitRoot(t, srv, "the prepared root to take over", 10*time.Second, nil, func(r *adminv1.RootRotation) bool { return r.GetActiveRootId() == root.GetId() })
	waitRoot(t, srv, "the old root to retire", 20*time.Second, nil, func(r *adminv1.RootRotation) bool { return r.GetOldRootId() == "" })
	time.Sleep(4 * time.Second) // after retirement, on the new root alone

	probe.requireClean(t)
	if n := probe.intermediatesSeen(); n < 4 {
		t.Fatalf("saw %d intermediates; the test did not span enough rotations", n)
	}
	bundle, _ := srv.CA().Bundle()
	if len(bundle.X509Authorities()) != 1 {
		t.Fatalf("bundle holds %d roots after retirement", len(bundle.X509Authorities()))
	}
	t.Logf("%d handshakes, 0 failed, across %d intermediates and a root rotation", probe.ok.Load(), probe.intermediatesSeen())
}

// A live agent that has not synced since the new root was published blocks
// root activation; once it syncs, activation passes.
func TestRootActivationWaitsForLaggingAgent(t *testing.T) {
	srv := harness.StartServer(t, func(c *server.Config) { c.AgentLiveness = time.Minute })
	fast := harness.StartAgent(t, srv)
	slow := harness.StartAgent(t, srv)
	slow.Stop() // attested just now, so live, but no longer syncing

	ctx := context.Background()
	if _, err := srv.Admin.PrepareRoot(ctx, &adminv1.PrepareRootRequest{}); err != nil {
		t.Fatal(err)
	}
	// Once the fast agent has synced the new bundle, only the slow one blocks.
	for deadline := time.Now().Add(10 * time.Second); ; {
		_, err := srv.Admin.ActivateRoot(ctx, &adminv1.ActivateRootRequest{})
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), slow.ID()) {
			t.Fatalf("activation with a lagging agent: %v; want FailedPrecondition naming %s", err, slow.ID())
		}
		if !strings.Contains(err.Error(), fast.ID()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the fast agent never reported the new bundle: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	show, err := srv.Admin.ListAuthorities(ctx, &adminv1.ListAuthoritiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if p := show.GetPropagation(); p.GetLiveAgents() != 2 || p.GetCurrentAgents() != 1 {
		t.Fatalf("propagation = %v, want 1 of 2", p)
	}

	rot := show.GetRootRotation()
	if len(rot.GetBlockers()) != 1 || rot.GetBlockers()[0] != slow.ID() || rot.GetDeadline() == 0 || rot.GetForceAt() == 0 {
		t.Fatalf("ca show's root rotation = %v, want the slow agent as the one blocker and the deadlines", rot)
	}

	// Once it syncs again, the schedule activates the root on its own.
	cfg := slow.Config
	cfg.JoinToken = ""
	harness.RunAgent(t, cfg)
	waitRoot(t, srv, "activation after the agent synced", 10*time.Second, nil, func(r *adminv1.RootRotation) bool {
		return r.GetPreparedRootId() == "" && r.GetActiveRootId() != rot.GetActiveRootId()
	})
	// New SVIDs now chain to the new root.
	inter, _ := srv.CA().ActiveIntermediate()
	for _, a := range srv.CA().Authorities() {
		if a.Kind == ca.KindRoot && a.State == ca.StateActive && a.BundleSequence > 1 {
			if err := inter.CheckSignatureFrom(a.Cert); err != nil {
				t.Fatalf("the active intermediate does not chain to the new root: %v", err)
			}
			return
		}
	}
	t.Fatal("no new active root")
}

// After a forced rotation and a taint, the agent replaces the SVIDs signed by
// the tainted intermediate within a sync interval, and revoke passes once no
// agent reports holding one.
func TestTaintIsReplacedThenRevoked(t *testing.T) {
	srv := harness.StartServer(t, func(c *server.Config) { c.AgentLiveness = time.Minute; c.RotationInterval = 50 * time.Millisecond })
	ag := harness.StartAgent(t, srv)
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/web", ParentId: ag.ID(), Selectors: []string{uidSelector()}})
	before, err := fetchX509(t, ag.Addr(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var oldID string
	for _, a := range srv.CA().Authorities() {
		if a.Kind == ca.KindIntermediate && a.State == ca.StateActive {
			oldID = a.ID
		}
	}
	if _, err := srv.Admin.TaintAuthority(ctx, &adminv1.TaintAuthorityRequest{Id: oldID}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("taint of the active intermediate: %v, want FailedPrecondition", err)
	}
	if _, err := srv.Admin.PrepareAuthority(ctx, &adminv1.PrepareAuthorityRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Admin.ActivateAuthority(ctx, &adminv1.ActivateAuthorityRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Admin.RevokeAuthority(ctx, &adminv1.RevokeAuthorityRequest{Id: oldID}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("revoke before taint: %v, want FailedPrecondition", err)
	}
	tainted, err := srv.Admin.TaintAuthority(ctx, &adminv1.TaintAuthorityRequest{Id: oldID})
	if err != nil {
		t.Fatal(err)
	}
	taintedAt := time.Now()
	oldSerial := before.DefaultSVID().Certificates[0].SerialNumber
	for {
		x, err := fetchX509(t, ag.Addr(), 5*time.Second)
		if err == nil && x.DefaultSVID().Certificates[0].SerialNumber.Cmp(oldSerial) != 0 {
			if fmt.Sprintf("%x", x.DefaultSVID().Certificates[0].AuthorityKeyId) == tainted.GetKeyId() {
				t.Fatal("the replacement SVID is signed by the tainted key")
			}
			break
		}
		// One sync interval (200ms) plus the spread window, with slack for CI.
		if time.Since(taintedAt) > 5*time.Second {
			t.Fatal("the SVID signed by the tainted intermediate was not replaced")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		_, err := srv.Admin.RevokeAuthority(ctx, &adminv1.RevokeAuthorityRequest{Id: oldID})
		if err == nil {
			break
		}
		if status.Code(err) != codes.FailedPrecondition || time.Now().After(deadline) {
			t.Fatalf("revoke after replacement: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, a := range srv.CA().Authorities() {
		if a.ID == oldID {
			t.Fatal("the revoked intermediate is still held")
		}
	}
}

// The whole server with its CA keys in a SoftHSM2 token: workloads get
// SVIDs, a forced rotation happens, and a restart reopens every key.
func TestServerWithKeysInSoftHSM(t *testing.T) {
	uri := keymanagertest.SoftHSM(t)
	srv := harness.StartServer(t, func(c *server.Config) { c.KeyManagerURI = uri; c.InsecureUnencryptedKeys = false })
	ag := harness.StartAgent(t, srv)
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/web", ParentId: ag.ID(), Selectors: []string{uidSelector()}})
	if _, err := fetchX509(t, ag.Addr(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := srv.Admin.PrepareAuthority(ctx, &adminv1.PrepareAuthorityRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Admin.ActivateAuthority(ctx, &adminv1.ActivateAuthorityRequest{}); err != nil {
		t.Fatal(err)
	}
	for _, a := range srv.CA().Authorities() {
		if !strings.HasPrefix(a.KeyRef, "pkcs11:") {
			t.Fatalf("%s key %q is not in the HSM", a.Kind, a.KeyRef)
		}
	}
	ag.Stop()
	srv = srv.Restart(t)
	cfg := ag.Config
	cfg.JoinToken, cfg.ServerAddrs = "", []string{srv.AgentAddr()}
	again := harness.RunAgent(t, cfg)
	x, err := fetchX509(t, again.Addr(), 10*time.Second)
	if err != nil {
		t.Fatalf("after restart with HSM keys: %v", err)
	}
	inter, _ := srv.CA().ActiveIntermediate()
	if !x.DefaultSVID().Certificates[1].Equal(inter) {
		t.Fatal("the SVID after restart is not signed by the active HSM intermediate")
	}
}

type bundleWatcher struct{ out chan<- int }

func (w bundleWatcher) OnX509BundlesUpdate(s *x509bundle.Set) {
	if b, ok := s.Get(harness.TrustDomain); ok {
		w.out <- len(b.X509Authorities())
	}
}
func (w bundleWatcher) OnX509BundlesWatchError(error) {}

// A root prepared on the server reaches open FetchX509Bundles streams, and
// its retirement does too.
func TestBundleChangesReachOpenStreams(t *testing.T) {
	srv := harness.StartServer(t, fastRotation)
	ag := harness.StartAgent(t, srv)
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/web", ParentId: ag.ID(), Selectors: []string{uidSelector()}})
	if _, err := fetchX509(t, ag.Addr(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	client, err := workloadapi.New(context.Background(), workloadapi.WithAddr(ag.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	roots := make(chan int, 16)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go func() { _ = client.WatchX509Bundles(ctx, bundleWatcher{roots}) }()
	waitFor := func(n int) {
		t.Helper()
		for {
			select {
			case got := <-roots:
				if got == n {
					return
				}
			case <-ctx.Done():
				t.Fatalf("the stream never showed %d roots", n)
			}
		}
	}
	waitFor(1)
	if _, err := srv.Admin.PrepareRoot(ctx, &adminv1.PrepareRootRequest{}); err != nil {
		t.Fatal(err)
	}
	waitFor(2)
	// The schedule activates the new root and retires the old one.
	waitFor(1)
}

// waitRoot polls ca show until cond holds on its root rotation status,
// calling between (if set) while it waits.
func waitRoot(t *testing.T, srv *harness.Server, what string, timeout time.Duration, between func(), cond func(*adminv1.RootRotation) bool) *adminv1.RootRotation {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		show, err := srv.Admin.ListAuthorities(context.Background(), &adminv1.ListAuthoritiesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if r := show.GetRootRotation(); cond(r) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s; root rotation: %v", timeout, what, show.GetRootRotation())
		}
		if between != nil {
			between()
		} else {
			time.Sleep(50 * time.Millisecond)
		}
	}
}
