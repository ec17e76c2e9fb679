package statuspage

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/pkg/clock"
	"github.com/shortleaf/shortleaf/pkg/datastore"
)

var (
	t0 = time.Date(2026, 11, 23, 12, 0, 30, 0, time.UTC)
	td = spiffeid.RequireTrustDomainFromString("example.org")
)

type fakeCA struct{ auths []ca.Authority }

func (f fakeCA) Authorities() []ca.Authority { return f.auths }
func (f fakeCA) NextTransition(a ca.Authority) (string, time.Time) {
	return "successor preparation", a.NotBefore.Add(a.NotAfter.Sub(a.NotBefore) / 2)
}
func (f fakeCA) RootRotation() ca.RootRotationStatus  { return ca.RootRotationStatus{} }
func (f fakeCA) Bundle() (*x509bundle.Bundle, uint64) { return x509bundle.New(td), 7 }
func (f fakeCA) CheckSigner() error                   { return nil }

type fakeStore struct {
	agents []*datastore.Agent
	feds   []*datastore.Federation
}

func (f fakeStore) ListAgents(context.Context) ([]*datastore.Agent, error) { return f.agents, nil }
func (f fakeStore) ListFederations(context.Context) ([]*datastore.Federation, error) {
	return f.feds, nil
}

// The history puts what the counters grew by into the minute it was
// sampled in, and forgets minutes older than an hour.
func TestHistory(t *testing.T) {
	var h History
	h.Observe(t0, map[string]float64{"ok": 100})
	h.Observe(t0.Add(10*time.Second), map[string]float64{"ok": 130, "error": 2})
	h.Observe(t0.Add(70*time.Second), map[string]float64{"ok": 150, "error": 2})
	last := h.Last(t0.Add(70 * time.Second))
	if len(last) != historyMinutes {
		t.Fatalf("%d minutes", len(last))
	}
	if m := last[len(last)-2]; m.Counts["ok"] != 30 || m.Counts["error"] != 2 {
		t.Fatalf("minute of t0: %+v", m)
	}
	if m := last[len(last)-1]; m.Counts["ok"] != 20 {
		t.Fatalf("minute after: %+v", m)
	}
	if m := h.Last(t0.Add(2 * time.Hour)); m[len(m)-1].Counts["ok"] != 0 || m[0].Counts["ok"] != 0 {
		t.Fatal("an hour later the old minutes are still counted")
	}
}

// The page escapes what agents and federations bring (a SPIFFE ID path
// and an error message may hold markup), answers only GET, and sends a
// policy that forbids scripts.
func TestPageEscapesAndForbidsScripts(t *testing.T) {
	auths := []ca.Authority{
		{ID: "root1", Kind: ca.KindRoot, State: ca.StateActive, NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(365 * 24 * time.Hour)},
		{ID: "int1", Kind: ca.KindIntermediate, State: ca.StateActive, NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(23 * time.Hour), Replica: "r1"},
		{ID: "int2", Kind: ca.KindIntermediate, State: ca.StatePrepared, NotBefore: t0, NotAfter: t0.Add(24 * time.Hour), Replica: "r1", Tainted: true},
	}
	st := fakeStore{
		agents: []*datastore.Agent{{SPIFFEID: "spiffe://example.org/agent/x509pop/<script>alert(1)</script>", AttestationType: "x509pop",
			LastSeen: t0.Add(-5 * time.Second), BundleSequence: 6, NotAfter: t0.Add(time.Hour)}},
		feds: []*datastore.Federation{{TrustDomain: "partner.org", URL: "https://partner.org/bundle", LastError: `<img src=x onerror="alert(2)">`}},
	}
	h := Handler(Config{TrustDomain: td, ReplicaID: "r1", CA: fakeCA{auths}, Store: st, Issuance: &History{},
		IssuedTotals: func() map[string]float64 { return map[string]float64{"ok": 3} }, AgentLiveness: time.Minute, Clock: clock.NewFake(t0)})
	srv := httptest.NewServer(h)
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	page := string(body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'none'") {
		t.Fatalf("status %d, CSP %q", resp.StatusCode, resp.Header.Get("Content-Security-Policy"))
	}
	for _, bad := range []string{"<script>alert(1)", `<img src=x`} {
		if strings.Contains(page, bad) {
			t.Errorf("the page holds %q unescaped", bad)
		}
	}
	for _, want := range []string{"&lt;script&gt;alert(1)&lt;/script&gt;", "1</b> attested", "1 without the newest bundle", "prepared (tainted)",
		`class="bar tainted"`, "intermediate active int1 @r1", "partner.org"} {
		if !strings.Contains(page, want) {
			t.Errorf("the page does not hold %q", want)
		}
	}
	if resp, err := http.Post(srv.URL+"/", "text/plain", nil); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %v %v", err, resp.StatusCode)
	}
	if resp, err := http.Get(srv.URL + "/assets/page.html"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("the template is served: %v %v", err, resp.StatusCode)
	}
	if resp, err := http.Get(srv.URL + "/assets/style.css"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("the stylesheet: %v %v", err, resp.StatusCode)
	}
}
