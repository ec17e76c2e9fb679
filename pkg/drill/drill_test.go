package drill_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/ca/catest"
	"github.com/shortleaf/shortleaf/pkg/clock"
	"github.com/shortleaf/shortleaf/pkg/drill"
)

var (
	ctx   = context.Background()
	start = time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
)

// A 9-day root with one-day intermediates and one-hour agent SVIDs, as an
// operator might shorten the defaults: a good schedule.
func goodConfig() drill.Config {
	return drill.Config{
		CA: ca.Config{TrustDomain: catest.TrustDomain, RootTTL: 9 * 24 * time.Hour, IntermediateTTL: 24 * time.Hour,
			MaxSVIDTTL: time.Hour},
		Start:       start,
		WorkloadTTL: 5 * time.Minute, AgentSVIDTTL: time.Hour,
		AgentLiveness: 10 * time.Minute, BundleRefreshHint: 5 * time.Minute,
		Step:        15 * time.Second,
		FastForward: true,
	}
}

func run(t *testing.T, cfg drill.Config) *drill.Report {
	t.Helper()
	r, err := drill.Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// By default the drill runs past the root's expiry: the schedule rotates
// the root and nothing is violated.
func TestGoodConfigPasses(t *testing.T) {
	r := run(t, goodConfig())
	for _, v := range r.Violations {
		t.Errorf("day %.3f: %s", v.Day, v.Reason)
	}
	// Prepared a third of 9 days before expiry: on day 6 and day 12 of 16.
	if r.RootRotations != 2 || r.End.Sub(r.Start) != 16*24*time.Hour {
		t.Fatalf("%d root rotations in %s, want 2 in the 16 days to a week past the first root's expiry", r.RootRotations, r.End.Sub(r.Start))
	}
	if r.FastForwards == 0 || r.SVIDsSigned == 0 || r.Verifications == 0 {
		t.Fatalf("report counts: %+v", r)
	}
}

// An install whose root has less left than the schedule needs (the
// operator raised intermediate_ttl from 2h to 24h when the root had half a
// day left): the next root is prepared at once, but can only take over past
// the deadline, which cuts intermediates short. The drill names the day and
// the reason.
func TestRootExpiringBeforeTheGateCanPassFails(t *testing.T) {
	clk := clock.NewFake(start)
	journal := &catest.MemoryJournal{}
	cfg := catest.Config(t)
	cfg.Clock, cfg.Journal = clk, journal
	cfg.RootTTL, cfg.RootPrepareBefore, cfg.IntermediateTTL, cfg.MaxSVIDTTL = 9*24*time.Hour, 4*time.Hour, 2*time.Hour, time.Hour
	c := catest.NewFromConfig(t, cfg)
	for clk.Now().Before(start.Add(8*24*time.Hour + 12*time.Hour)) { // as the server would, for 8.5 days
		clk.Add(10 * time.Minute)
		if err := c.Rotate(ctx); err != nil {
			t.Fatal(err)
		}
	}
	state, _ := journal.LoadCAJournal(ctx)
	raw, err := ca.ExportJournal(state, c.ReplicaID())
	if err != nil {
		t.Fatal(err)
	}
	dc := goodConfig()
	dc.Start, dc.Journal = clk.Now(), raw
	r := run(t, dc)
	if r.OK() {
		t.Fatal("no violation for a root with 12 hours left under 24-hour intermediates")
	}
	v := r.Violations[0]
	if v.Day > 0.1 || !strings.Contains(v.Reason, "after the old root's deadline") || !strings.Contains(v.Reason, "raise root_prepare_before") {
		t.Fatalf("violation on day %.3f: %s; want on day 0, past the deadline", v.Day, v.Reason)
	}
}

// An upstream authority's certificate is rotated upstream: if it expires
// within the drill, SVID lifetimes are cut short before it, and the drill
// says when.
func TestExpiringUpstreamTruncatesAndFails(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "corporate CA"},
		NotBefore: start.Add(-24 * time.Hour), NotAfter: start.Add(3 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	dc := goodConfig()
	dc.CA.Upstream = &ca.Upstream{Chain: []*x509.Certificate{cert}} // no key: the drill uses a stand-in
	r := run(t, dc)
	if r.OK() {
		t.Fatal("no violation with an upstream certificate that expires on day 3")
	}
	v := r.Violations[0]
	if v.Day < 2.9 || v.Day > 3 || !strings.Contains(v.Reason, "lifetime cut") {
		t.Fatalf("violation on day %.3f: %s; want a cut lifetime within the last hour before day 3", v.Day, v.Reason)
	}
}

// A config whose root would expire before the gate can pass (federated
// consumers are owed three weekly refresh hints, longer than the next root's
// 3-day lead) is refused by the CA: a violation on day 0 naming the key.
func TestRefusedConfigFails(t *testing.T) {
	dc := goodConfig()
	dc.BundleRefreshHint = 7 * 24 * time.Hour
	r := run(t, dc)
	if r.OK() || r.Violations[0].Day != 0 || !strings.Contains(r.Violations[0].Reason, "root_prepare_before: 72h0m0s leaves the propagation gate no time") {
		t.Fatalf("violations: %+v", r.Violations)
	}
}

// The same span gives the same verdict with and without fast-forward: the
// skipped spans hide nothing.
func TestFastForwardHidesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("steps through 10 days without skipping")
	}
	var transitions []int
	var timelines [][]drill.Event
	for _, ff := range []bool{true, false} {
		dc := goodConfig()
		dc.FastForward = ff
		r := run(t, dc)
		if !r.OK() {
			t.Fatalf("fast-forward %v: violations %+v", ff, r.Violations)
		}
		roots := 0
		for _, e := range r.Timeline {
			if e.Kind == "root" {
				roots++
			}
		}
		transitions = append(transitions, len(r.Timeline), roots)
		timelines = append(timelines, r.Timeline)
		t.Logf("fast-forward %v: %d SVIDs signed, %d transitions (%d of roots), %d spans skipped", ff, r.SVIDsSigned, len(r.Timeline), roots, r.FastForwards)
	}
	if transitions[0] != transitions[2] || transitions[1] != transitions[3] {
		t.Fatalf("transitions with and without fast-forward differ: %v", transitions)
	}
	for i, e := range timelines[0] {
		if o := timelines[1][i]; !e.At.Equal(o.At) || e.Kind != o.Kind || e.What != o.What {
			t.Fatalf("transition %d differs: %+v with fast-forward, %+v without", i, e, o)
		}
	}
}
