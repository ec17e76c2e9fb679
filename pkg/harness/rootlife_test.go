package harness_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/pkg/clock"
	"github.com/shortleaf/shortleaf/pkg/harness"
	"github.com/shortleaf/shortleaf/pkg/server"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// The operator's whole runbook for a compromised CA: taint and revoke the
// intermediate, rotate the root, taint and revoke the last intermediate of
// the old root, let the old root retire. Afterwards a brand-new agent (which
// trusts only the new root) and a restarted agent both attest and sync, and
// a federated peer polling the https_spiffe bundle endpoint never loses it:
// the server's own TLS certificate followed the CA at every step.
func TestAgentsConnectAfterTaintRevokeAndRootRetire(t *testing.T) {
	srv := harness.StartServer(t, withBundleEndpoint(harness.TrustDomain), func(c *server.Config) {
		c.AgentLiveness = time.Minute
		c.RotationInterval = 50 * time.Millisecond
	})
	ag := harness.StartAgent(t, srv)
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/web", ParentId: ag.ID(), Selectors: []string{uidSelector()}})
	if _, err := fetchX509(t, ag.Addr(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	// A federated peer polls the endpoint, authenticating it with the
	// bundle it fetched last, as a SPIRE server does.
	peer := newPollingPeer(t, srv)
	defer peer.stop()

	activeIntermediate := func() string {
		t.Helper()
		for _, a := range srv.CA().Authorities() {
			if a.Kind == ca.KindIntermediate && a.State == ca.StateActive {
				return a.ID
			}
		}
		t.Fatal("no active intermediate")
		return ""
	}
	taintAndRevoke := func(id string) {
		t.Helper()
		if _, err := srv.Admin.TaintAuthority(ctx, &adminv1.TaintAuthorityRequest{Id: id}); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(10 * time.Second); ; {
			_, err := srv.Admin.RevokeAuthority(ctx, &adminv1.RevokeAuthorityRequest{Id: id})
			if err == nil {
				return
			}
			if status.Code(err) != codes.FailedPrecondition || time.Now().After(deadline) {
				t.Fatalf("revoke %s: %v", id, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	first := activeIntermediate()
	if _, err := srv.Admin.PrepareAuthority(ctx, &adminv1.PrepareAuthorityRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Admin.ActivateAuthority(ctx, &adminv1.ActivateAuthorityRequest{}); err != nil {
		t.Fatal(err)
	}
	second := activeIntermediate()
	taintAndRevoke(first)

	root, err := srv.Admin.PrepareRoot(ctx, &adminv1.PrepareRootRequest{})
	if err != nil {
		t.Fatal(err)
	}
	waitRoot(t, srv, "the new root to take over", 15*time.Second, nil, func(r *adminv1.RootRotation) bool { return r.GetActiveRootId() == root.GetId() })
	taintAndRevoke(second) // the old root's last intermediate
	waitRoot(t, srv, "the old root to retire", 10*time.Second, nil, func(r *adminv1.RootRotation) bool { return r.GetOldRootId() == "" })

	// What the server presents now chains to the bundle that holds only the new root.
	bundle, _ := srv.CA().Bundle()
	if n := len(bundle.X509Authorities()); n != 1 {
		t.Fatalf("bundle holds %d roots after retirement", n)
	}
	conn, err := tls.Dial("tcp", srv.AgentAddr(), &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}) //nolint:gosec // the chain is verified below, as an SVID
	if err != nil {
		t.Fatal(err)
	}
	presented := conn.ConnectionState().PeerCertificates
	conn.Close()
	if _, _, err := x509svid.Verify(presented, bundle); err != nil {
		t.Fatalf("the server presents a certificate that does not chain to the current bundle: %v", err)
	}
	show, err := srv.Admin.ListAuthorities(ctx, &adminv1.ListAuthoritiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if sc := show.GetServerCertificate(); sc.GetSignerId() != activeIntermediate() {
		t.Fatalf("ca show: server certificate signed by %q, want the active intermediate %s", sc.GetSignerId(), activeIntermediate())
	}

	// A new agent, bootstrapped with the new root only.
	fresh := harness.StartAgent(t, srv)
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/fresh", ParentId: fresh.ID(), Selectors: []string{uidSelector()}})
	if _, err := fetchX509(t, fresh.Addr(), 10*time.Second); err != nil {
		t.Fatalf("a new agent after the root retired: %v", err)
	}
	// The first agent, restarted from what it stored.
	ag.Stop()
	cfg := ag.Config
	cfg.JoinToken = ""
	again := harness.RunAgent(t, cfg)
	x, err := fetchX509(t, again.Addr(), 10*time.Second)
	if err != nil {
		t.Fatalf("the restarted agent: %v", err)
	}
	if _, _, err := x509svid.Verify(x.DefaultSVID().Certificates, bundle); err != nil {
		t.Fatalf("the restarted agent serves an SVID that does not verify: %v", err)
	}
	peer.requireHealthy(t, root.GetId())
}

// pollingPeer is a federated trust domain polling the bundle endpoint.
type pollingPeer struct {
	mu      sync.Mutex
	bundle  *spiffebundle.Bundle
	fetches int
	errs    []string
	cancel  context.CancelFunc
	done    chan struct{}
}

func newPollingPeer(t *testing.T, srv *harness.Server) *pollingPeer {
	t.Helper()
	b, _ := srv.CA().Bundle()
	p := &pollingPeer{bundle: spiffebundle.FromX509Authorities(harness.TrustDomain, b.X509Authorities()), done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	url := "https://" + srv.BundleEndpointAddr()
	go func() {
		defer close(p.done)
		for ctx.Err() == nil {
			p.mu.Lock()
			auth := p.bundle
			p.mu.Unlock()
			fctx, fcancel := context.WithTimeout(ctx, 5*time.Second)
			got, err := federation.FetchBundle(fctx, harness.TrustDomain, url, federation.WithSPIFFEAuth(auth, ca.ServerID(harness.TrustDomain)))
			fcancel()
			p.mu.Lock()
			switch {
			case err != nil && ctx.Err() == nil:
				p.errs = append(p.errs, fmt.Sprintf("%s: %v", time.Now().Format(time.StampMilli), err))
			case err == nil:
				p.bundle = got
				p.fetches++
			}
			p.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(300 * time.Millisecond): // faster than the 1s refresh hint
			}
		}
	}()
	return p
}

func (p *pollingPeer) stop() {
	p.cancel()
	<-p.done
}

// requireHealthy fails unless every poll succeeded and the peer holds the
// current bundle, which has the new root.
func (p *pollingPeer) requireHealthy(t *testing.T, rootID string) {
	t.Helper()
	harness.Eventually(t, 10*time.Second, func() bool { // its next poll sees the retirement
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.bundle.X509Authorities()) == 1
	})
	p.stop()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.errs) > 0 {
		t.Fatalf("the federated peer failed %d of %d polls; first: %s", len(p.errs), len(p.errs)+p.fetches, p.errs[0])
	}
	if n := len(p.bundle.X509Authorities()); n != 1 || p.fetches < 5 {
		t.Fatalf("the federated peer holds %d roots after %d polls; want the new root alone (%s)", n, p.fetches, rootID)
	}
}

// A live agent that never takes the new bundle blocks root rotation: the
// metrics show how long and on how many, ca show names it with the
// deadline, and once the wait outlasts what the gate needs the server logs
// the blockers (hourly, not on every check).
func TestBlockedRootRotationRaisesAlarms(t *testing.T) {
	clk := clock.NewFake(time.Now())
	logs := &harness.LogBuffer{}
	srv := harness.StartServer(t, func(c *server.Config) {
		c.Clock = clk
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})
	reg := srv.Registry
	stuck := harness.AttestRaw(t, srv) // syncs, but never reports the new bundle
	ctx := context.Background()
	root, err := srv.Admin.PrepareRoot(ctx, &adminv1.PrepareRootRequest{})
	if err != nil {
		t.Fatal(err)
	}
	gauge := func(name string) float64 {
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range families {
			if f.GetName() == name {
				return f.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatalf("no metric %s", name)
		return 0
	}
	// Past the gate's lead (the 10-minute liveness window), twice.
	for minute := 1; minute <= 22; minute++ {
		if err := syncCall(stuck.Client); err != nil { // live, still lagging
			t.Fatal(err)
		}
		// The server writes sync times in batches, every few seconds of its
		// clock; this test moves that clock by minutes faster than the
		// batches are written, so it waits for the write (or the agent would
		// look gone, and stop blocking the gate).
		syncedAt := clk.Now().Unix()
		lastNudge := time.Now()
		harness.Eventually(t, 5*time.Second, func() bool {
			agents, err := srv.Admin.ListAgents(ctx, &adminv1.ListAgentsRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if len(agents.GetAgents()) == 1 && agents.GetAgents()[0].GetLastSeen() >= syncedAt {
				return true
			}
			if time.Since(lastNudge) > 50*time.Millisecond {
				clk.Add(5 * time.Second) // fire the batch timer if it was armed after the last move
				lastNudge = time.Now()
			}
			return false
		})
		clk.Add(time.Minute) // fires a rotation tick
		lastNudge = time.Now()
		harness.Eventually(t, 5*time.Second, func() bool { // the rotation loop has seen it
			if gauge("shortleaf_ca_root_gate_blocked_seconds") >= float64(minute*60) {
				return true
			}
			// The loop may have armed its next tick after the Add: fire it.
			if time.Since(lastNudge) > 200*time.Millisecond {
				clk.Add(5 * time.Second)
				lastNudge = time.Now()
			}
			return false
		})
	}
	if n := gauge("shortleaf_ca_root_gate_blockers"); n != 1 {
		t.Fatalf("shortleaf_ca_root_gate_blockers = %v, want 1", n)
	}
	if left := gauge("shortleaf_ca_root_time_to_expiry_seconds"); left < 364*24*3600 {
		t.Fatalf("shortleaf_ca_root_time_to_expiry_seconds = %v", left)
	}
	show, err := srv.Admin.ListAuthorities(ctx, &adminv1.ListAuthoritiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	rot := show.GetRootRotation()
	if rot.GetPreparedRootId() != root.GetId() || len(rot.GetBlockers()) != 1 || rot.GetBlockers()[0] != stuck.ID.String() || rot.GetDeadline() == 0 {
		t.Fatalf("ca show's root rotation = %v, want %s blocked by %s with a deadline", rot, root.GetId(), stuck.ID)
	}
	if n := strings.Count(logs.String(), "root rotation is blocked"); n != 1 {
		t.Fatalf("%d alarm lines after 22 minutes blocked, want 1 (hourly):\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), stuck.ID.String()) {
		t.Fatal("the alarm does not name the blocking agent")
	}
}

// Revocation a relying party can honour: after taint and revoke, the bundle
// endpoint's CRLs (and bundle show --format crl's source) list the revoked
// intermediate; OpenSSL checking every CRL of the chain accepts a current
// SVID and rejects one the revoked intermediate signed, and finds that
// intermediate revoked in its root's CRL.
func TestRevokedIntermediateIsInTheCRL(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl is not installed")
	}
	srv := harness.StartServer(t, withBundleEndpoint(harness.TrustDomain), func(c *server.Config) { c.RotationInterval = 50 * time.Millisecond })
	ctx := context.Background()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sign := func() []*x509.Certificate {
		chain, err := srv.CA().SignX509SVID(ca.X509SVIDParams{PublicKey: key.Public(), SPIFFEID: spiffeid.RequireFromPath(harness.TrustDomain, "/web"), TTL: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		return chain
	}
	old := sign()
	var oldID string
	for _, a := range srv.CA().Authorities() {
		if a.Cert != nil && a.Cert.Equal(old[1]) {
			oldID = a.ID
		}
	}
	if _, err := srv.Admin.PrepareAuthority(ctx, &adminv1.PrepareAuthorityRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Admin.ActivateAuthority(ctx, &adminv1.ActivateAuthorityRequest{}); err != nil {
		t.Fatal(err)
	}
	current := sign()
	if _, err := srv.Admin.TaintAuthority(ctx, &adminv1.TaintAuthorityRequest{Id: oldID}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Admin.RevokeAuthority(ctx, &adminv1.RevokeAuthorityRequest{Id: oldID}); err != nil {
		t.Fatal(err)
	}

	// Fetch the CRLs from the bundle endpoint, authenticating it as a SPIFFE peer.
	bundle, _ := srv.CA().Bundle()
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(ca.ServerID(harness.TrustDomain)))}}
	resp, err := client.Get("https://" + srv.BundleEndpointAddr() + "/crl")
	if err != nil {
		t.Fatal(err)
	}
	crlPEM, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Contains(crlPEM, []byte("BEGIN X509 CRL")) {
		t.Fatalf("GET /crl: %s\n%s", resp.Status, crlPEM)
	}
	got, err := srv.Admin.GetBundle(ctx, &adminv1.GetBundleRequest{})
	if err != nil || len(got.GetCrls()) < 2 {
		t.Fatalf("GetBundle carries %d CRLs: %v", len(got.GetCrls()), err)
	}

	dir := t.TempDir()
	write := func(name string, certs ...*x509.Certificate) string {
		var b bytes.Buffer
		for _, c := range certs {
			_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	roots := write("roots.pem", bundle.X509Authorities()...)
	crlFile := filepath.Join(dir, "crls.pem")
	if err := os.WriteFile(crlFile, crlPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	verify := func(chain []*x509.Certificate) (string, error) {
		out, err := exec.Command(openssl, "verify", "-crl_check_all", "-CRLfile", crlFile, "-CAfile", roots, //nolint:gosec // test paths
			"-untrusted", write("inter.pem", chain[1]), write("leaf.pem", chain[0])).CombinedOutput()
		return string(out), err
	}
	if out, err := verify(current); err != nil {
		t.Fatalf("openssl -crl_check_all rejects a current SVID: %v\n%s", err, out)
	}
	if out, err := verify(old); err == nil {
		t.Fatalf("openssl -crl_check_all accepts an SVID of the revoked intermediate:\n%s", out)
	}
	// The reason: the root's CRL lists the intermediate as revoked.
	out, err := exec.Command(openssl, "verify", "-crl_check", "-CRLfile", crlFile, "-CAfile", roots, write("revoked.pem", old[1])).CombinedOutput() //nolint:gosec // test paths
	if err == nil || !strings.Contains(string(out), "certificate revoked") {
		t.Fatalf("openssl does not find the intermediate revoked in the root's CRL: %v\n%s", err, out)
	}
}
