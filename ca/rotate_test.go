package ca_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/ca/catest"
	"github.com/shortleaf/shortleaf/pkg/clock"
	"github.com/shortleaf/shortleaf/pkg/datastore"
	"github.com/shortleaf/shortleaf/pkg/keymanager"
	"github.com/shortleaf/shortleaf/pkg/keymanager/keymanagertest"
)

var ctx = context.Background()

// lifecycle builds a CA with 1h intermediates and 5m max SVIDs on a fake
// clock; prepare at 30m, activate at 55m, remove at 60m.
func lifecycle(t *testing.T) (*ca.CA, *clock.Fake, ca.Config) {
	t.Helper()
	return lifecycleAt(t, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
}

func lifecycleAt(t *testing.T, start time.Time) (*ca.CA, *clock.Fake, ca.Config) {
	t.Helper()
	clk := clock.NewFake(start)
	cfg := catest.Config(t)
	cfg.Clock, cfg.IntermediateTTL, cfg.MaxSVIDTTL = clk, time.Hour, 5*time.Minute
	return catest.NewFromConfig(t, cfg), clk, cfg
}

func byKindState(c *ca.CA) map[string][]ca.Authority {
	out := map[string][]ca.Authority{}
	for _, a := range c.Authorities() {
		k := string(a.Kind) + "/" + string(a.State)
		out[k] = append(out[k], a)
	}
	return out
}

func count(c *ca.CA, kind ca.Kind, state ca.State) int {
	return len(byKindState(c)[string(kind)+"/"+string(state)])
}

func TestScheduleThresholds(t *testing.T) {
	s := ca.Schedule{TTL: time.Hour, MaxSignedTTL: 5 * time.Minute}
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	a := &ca.Authority{NotBefore: start.Add(-ca.Backdate), NotAfter: start.Add(time.Hour)}
	if got := s.PrepareAt(a); !got.Equal(start.Add(30 * time.Minute)) {
		t.Errorf("PrepareAt = %s, want half-life", got)
	}
	if got := s.ActivateAt(a); !got.Equal(start.Add(55 * time.Minute)) {
		t.Errorf("ActivateAt = %s, want NotAfter - max TTL", got)
	}
	if got := s.RemoveAt(a); !got.Equal(a.NotAfter) {
		t.Errorf("RemoveAt = %s", got)
	}
	// When the max TTL is over half the life, preparation moves up to activation.
	s2 := ca.Schedule{TTL: time.Hour, MaxSignedTTL: 30 * time.Minute}
	if !s2.PrepareAt(a).Equal(s2.ActivateAt(a)) {
		t.Error("PrepareAt must not come after ActivateAt")
	}
	if err := (ca.Schedule{TTL: time.Hour, MaxSignedTTL: 31 * time.Minute}).Validate(); err == nil || !strings.Contains(err.Error(), "intermediate_ttl") {
		t.Errorf("an impossible schedule: %v", err)
	}
}

func TestImpossibleConfigRefusedAtStart(t *testing.T) {
	cfg := catest.Config(t)
	cfg.IntermediateTTL, cfg.MaxSVIDTTL = time.Hour, 45*time.Minute
	_, err := ca.New(ctx, cfg)
	if err == nil || !strings.Contains(err.Error(), "intermediate_ttl") || !strings.Contains(err.Error(), "1h30m") {
		t.Fatalf("error %v does not say to raise intermediate_ttl to 1h30m", err)
	}
}

func TestScheduledRotationOfIntermediatesAndJWTKeys(t *testing.T) {
	c, clk, _ := lifecycle(t)
	first, _ := c.ActiveIntermediate()
	_, seq0 := c.Bundle()
	for _, kind := range []ca.Kind{ca.KindIntermediate, ca.KindJWT} {
		if count(c, kind, ca.StateActive) != 1 || count(c, kind, ca.StatePrepared) != 0 {
			t.Fatalf("%s at start: %v", kind, byKindState(c))
		}
	}
	step := func(d time.Duration) {
		clk.Add(d)
		if err := c.Rotate(ctx); err != nil {
			t.Fatal(err)
		}
	}
	step(29 * time.Minute)
	if count(c, ca.KindIntermediate, ca.StatePrepared) != 0 {
		t.Fatal("prepared before half-life")
	}
	step(time.Minute) // 30m: half-life
	for _, kind := range []ca.Kind{ca.KindIntermediate, ca.KindJWT} {
		if count(c, kind, ca.StatePrepared) != 1 {
			t.Fatalf("%s not prepared at half-life: %v", kind, byKindState(c))
		}
	}
	_, seq1 := c.Bundle()
	if seq1 != seq0+1 {
		t.Errorf("bundle sequence %d -> %d: a prepared JWT key is published, an intermediate is not", seq0, seq1)
	}
	step(24*time.Minute + 59*time.Second) // 54m59s
	if cur, _ := c.ActiveIntermediate(); !cur.Equal(first) {
		t.Fatal("activated before NotAfter - max TTL")
	}
	step(time.Second) // 55m
	cur, _ := c.ActiveIntermediate()
	if cur.Equal(first) || count(c, ca.KindIntermediate, ca.StateOld) != 1 || count(c, ca.KindJWT, ca.StateOld) != 1 {
		t.Fatalf("not activated at NotAfter - max TTL: %v", byKindState(c))
	}
	step(5*time.Minute - time.Second) // 59m59s
	if count(c, ca.KindIntermediate, ca.StateOld) != 1 {
		t.Fatal("old removed before it expired")
	}
	step(time.Second) // 60m
	if count(c, ca.KindIntermediate, ca.StateOld) != 0 || count(c, ca.KindJWT, ca.StateOld) != 0 {
		t.Fatalf("old not removed at expiry: %v", byKindState(c))
	}
}

func TestLongStopReplacesKeysAtStart(t *testing.T) {
	c, clk, cfg := lifecycle(t)
	old, _ := c.ActiveIntermediate()
	clk.Add(40 * time.Minute) // a successor is prepared, then the server stops
	if err := c.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	clk.Add(72 * time.Hour)
	again, err := ca.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cur, err := again.ActiveIntermediate()
	if err != nil || cur.Equal(old) || !cur.NotAfter.After(clk.Now().Add(cfg.MaxSVIDTTL)) {
		t.Fatalf("after a long stop the active intermediate is %v (%v)", cur, err)
	}
	for _, a := range again.Authorities() {
		if a.Kind != ca.KindRoot && !a.NotAfter.After(clk.Now()) {
			t.Errorf("expired %s %s still held", a.Kind, a.ID)
		}
	}
	for _, kind := range []ca.Kind{ca.KindIntermediate, ca.KindJWT} {
		if count(again, kind, ca.StateActive) != 1 || count(again, kind, ca.StatePrepared) != 0 {
			t.Errorf("%s after a long stop: %v", kind, byKindState(again))
		}
	}
}

// journalOf is a bbolt-backed CA config, so restarts go through the real store.
func journalOf(t *testing.T) (ca.Config, *clock.Fake) {
	t.Helper()
	dir := t.TempDir()
	store, err := datastore.Open(filepath.Join(dir, "ds.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	km, err := keymanager.New(keymanager.Config{Dir: filepath.Join(dir, "keys")})
	if err != nil {
		t.Fatal(err)
	}
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	// An agent that never syncs keeps a prepared root prepared across restarts.
	gate := func(context.Context, ca.Authority) []string { return []string{"spiffe://example.org/agent/offline"} }
	return ca.Config{TrustDomain: catest.TrustDomain, Keys: km, Journal: store, Clock: clk, IntermediateTTL: time.Hour, MaxSVIDTTL: 5 * time.Minute,
		RootGate: gate}, clk
}

func sameAuthorities(t *testing.T, state string, a, b []ca.Authority) {
	t.Helper()
	if len(a) != len(b) {
		t.Fatalf("%s: %d authorities before restart, %d after", state, len(a), len(b))
	}
	for i := range a {
		if a[i].ID != b[i].ID || a[i].State != b[i].State || a[i].Tainted != b[i].Tainted || !a[i].NotAfter.Equal(b[i].NotAfter) || a[i].KeyRef != b[i].KeyRef {
			t.Fatalf("%s: authority %d is %s/%s before restart, %s/%s after", state, i, a[i].ID, a[i].State, b[i].ID, b[i].State)
		}
	}
}

func TestRestartResumesInEveryState(t *testing.T) {
	cfg, clk := journalOf(t)
	testRestartInEveryState(t, cfg, clk)
}

// The same walk with every key in a SoftHSM2 token.
func TestRestartResumesInEveryStateWithSoftHSM(t *testing.T) {
	cfg, clk := journalOf(t)
	km, err := keymanager.NewKMS(ctx, keymanagertest.SoftHSM(t))
	if err != nil {
		t.Fatal(err)
	}
	defer km.Close()
	cfg.Keys = km
	testRestartInEveryState(t, cfg, clk)
}

func testRestartInEveryState(t *testing.T, cfg ca.Config, clk *clock.Fake) {
	c := catest.NewFromConfig(t, cfg)
	restart := func(state string) {
		t.Helper()
		before := c.Authorities()
		_, seq := c.Bundle()
		again, err := ca.New(ctx, cfg)
		if err != nil {
			t.Fatalf("%s: restart: %v", state, err)
		}
		sameAuthorities(t, state, before, again.Authorities())
		if _, seq2 := again.Bundle(); seq2 != seq {
			t.Fatalf("%s: bundle sequence %d -> %d", state, seq, seq2)
		}
		c = again
	}
	restart("fresh")
	clk.Add(30 * time.Minute)
	if err := c.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	restart("prepared")
	clk.Add(25 * time.Minute)
	if err := c.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	restart("just activated, old pending")
	if _, err := c.PrepareRoot(ctx); err != nil {
		t.Fatal(err)
	}
	restart("root prepared")
	if _, _, err := c.ActivateRoot(ctx, true); err != nil {
		t.Fatal(err)
	}
	restart("root activated, old root pending")
	old := count(c, ca.KindIntermediate, ca.StateOld)
	if old == 0 {
		t.Fatal("root activation left no old intermediate")
	}
	var oldID string
	for _, a := range c.Authorities() {
		if a.Kind == ca.KindIntermediate && a.State == ca.StateOld {
			oldID = a.ID
		}
	}
	if _, err := c.Taint(ctx, oldID); err != nil {
		t.Fatal(err)
	}
	restart("tainted")
}

// failingJournal fails every save, as a crash between writing a key and
// recording it would.
type failingJournal struct{ ca.Journal }

func (failingJournal) SaveCAJournal(context.Context, ca.JournalWrite) (int64, error) {
	return 0, errors.New("disk full")
}

func TestFailedJournalSaveChangesNothingAndLeavesNoBrokenState(t *testing.T) {
	cfg, clk := journalOf(t)
	c := catest.NewFromConfig(t, cfg)
	before := c.Authorities()

	broken := cfg
	broken.Journal = failingJournal{cfg.Journal}
	// A CA whose saves fail, at a time when a rotation is due: the new key is
	// written to the key directory but never recorded.
	clk.Add(31 * time.Minute)
	bc, err := ca.New(ctx, broken)
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("rotation with a failing journal: %v", err)
	}
	_ = bc
	keyDir := filepath.Join(filepath.Dir(cfg.Journal.(*datastore.Bolt).Path()), "keys")
	orphans := keyFiles(t, keyDir)
	if len(orphans) <= 3 {
		t.Fatalf("expected an orphan key file to test with, found %d keys", len(orphans))
	}
	// The next start resumes from the journal and destroys the orphans: only
	// keys that some authority names are left.
	again, err := ca.New(ctx, cfg)
	if err != nil {
		t.Fatalf("start after the failed save: %v", err)
	}
	named := map[string]bool{}
	for _, a := range again.Authorities() {
		named[strings.TrimPrefix(a.KeyRef, "softkms:")] = true
	}
	for _, f := range keyFiles(t, keyDir) {
		if !named[f] {
			t.Errorf("key file %s is named by no authority and was not destroyed", f)
		}
	}
	after := again.Authorities()
	if count(again, ca.KindIntermediate, ca.StatePrepared) != 1 {
		t.Fatalf("the due rotation was not applied on the next start: %v", byKindState(again))
	}
	for _, b := range before {
		found := false
		for _, a := range after {
			found = found || a.ID == b.ID
		}
		if !found {
			t.Errorf("authority %s lost", b.ID)
		}
	}
}

func keyFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

func TestForcedRotationRefusesUnsafeSteps(t *testing.T) {
	c, _, _ := lifecycle(t)
	refused := func(err error, want string) {
		t.Helper()
		var r *ca.RefusedError
		if !errors.As(err, &r) || !strings.Contains(r.Error(), want) {
			t.Fatalf("error %v, want a refusal saying %q", err, want)
		}
	}
	active, _ := c.ActiveIntermediate()
	var activeID string
	for _, a := range c.Authorities() {
		if a.Cert != nil && a.Cert.Equal(active) {
			activeID = a.ID
		}
	}
	_, err := c.Activate(ctx, ca.KindIntermediate)
	refused(err, "no intermediate is prepared")
	_, err = c.Taint(ctx, activeID)
	refused(err, "only an old key can be tainted")
	_, err = c.Revoke(ctx, activeID, nil)
	refused(err, "active")

	if _, err := c.Prepare(ctx, ca.KindIntermediate); err != nil {
		t.Fatal(err)
	}
	_, err = c.Prepare(ctx, ca.KindIntermediate)
	refused(err, "already prepared")
	if _, err := c.Activate(ctx, ca.KindIntermediate); err != nil {
		t.Fatal(err)
	}
	_, err = c.Revoke(ctx, activeID, func(string) []string { return nil })
	refused(err, "not tainted")
	if _, err := c.Taint(ctx, activeID); err != nil {
		t.Fatal(err)
	}
	if ids := c.TaintedKeyIDs(); len(ids) != 1 {
		t.Fatalf("tainted key IDs = %d", len(ids))
	}
	_, err = c.Revoke(ctx, activeID, func(string) []string { return []string{"spiffe://example.org/agent/x"} })
	refused(err, "agent/x")
	if _, err := c.Revoke(ctx, activeID, func(string) []string { return nil }); err != nil {
		t.Fatal(err)
	}
	if len(c.TaintedKeyIDs()) != 0 {
		t.Fatal("a revoked key is still listed")
	}
	if _, err := c.Taint(ctx, "nope"); !errors.Is(err, ca.ErrNotFound) {
		t.Fatalf("unknown ID: %v", err)
	}
}

// gateControl is a RootGate whose blockers a test sets.
type gateControl struct {
	mu       sync.Mutex
	blockers []string
	asked    []uint64 // bundle sequences asked about
}

func (g *gateControl) gate(_ context.Context, prepared ca.Authority) []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.asked = append(g.asked, prepared.BundleSequence)
	return g.blockers
}

func (g *gateControl) set(blockers ...string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.blockers = blockers
}

func TestRootRotationGate(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	g := &gateControl{}
	cfg := catest.Config(t)
	cfg.Clock, cfg.IntermediateTTL, cfg.MaxSVIDTTL, cfg.RootGate = clk, time.Hour, 5*time.Minute, g.gate
	c := catest.NewFromConfig(t, cfg)
	oldBundle, seq0 := c.Bundle()

	slow := "spiffe://example.org/agent/slow"
	g.set(slow)
	root, err := c.PrepareRoot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, seq1 := c.Bundle()
	if len(b.X509Authorities()) != 2 || seq1 <= seq0 || root.BundleSequence != seq1 {
		t.Fatalf("prepared root not published: %d roots, seq %d -> %d", len(b.X509Authorities()), seq0, seq1)
	}
	// While the gate blocks, the new root signs nothing, by schedule or by hand.
	if err := c.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	cur, _ := c.ActiveIntermediate()
	if err := cur.CheckSignatureFrom(oldBundle.X509Authorities()[0]); err != nil {
		t.Fatal("the intermediate changed roots while the gate blocked")
	}
	if g.asked[len(g.asked)-1] != root.BundleSequence {
		t.Fatalf("gate asked about sequence %d, want %d", g.asked[len(g.asked)-1], root.BundleSequence)
	}
	_, _, err = c.ActivateRoot(ctx, false)
	var r *ca.RefusedError
	if !errors.As(err, &r) || len(r.Blockers) != 1 || r.Blockers[0] != slow {
		t.Fatalf("activation with a lagging agent: %v", err)
	}
	if want := "1 live agent(s) do not hold bundle " + strconv.FormatUint(root.BundleSequence, 10) + " with the new root yet: " + slow; !strings.Contains(err.Error(), want) {
		t.Fatalf("refusal %q does not name the blocker: want %q", err, want)
	}
	if st := c.RootRotation(); st.PreparedRootID != root.ID || len(st.Blockers) != 1 || st.Blockers[0] != slow {
		t.Fatalf("root rotation status while blocked: %+v", st)
	}

	// Once the agent holds it, the schedule activates it on its own.
	g.set()
	clk.Add(5 * time.Second)
	if err := c.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	cur, _ = c.ActiveIntermediate()
	if err := cur.CheckSignatureFrom(root.Cert); err != nil {
		t.Fatalf("after the gate passed the intermediate does not chain to the new root: %v", err)
	}
	// The old root stays while old intermediates chain to it, and is retired
	// by the schedule once they are gone.
	_, err = c.RetireRoot(ctx, nil)
	if !errors.As(err, &r) || len(r.Blockers) == 0 {
		t.Fatalf("retire with old intermediates: %v", err)
	}
	if st := c.RootRotation(); st.OldRootID == "" || st.RetireAt.IsZero() {
		t.Fatalf("status does not show the old root's retirement: %+v", st)
	}
	clk.Add(time.Hour)
	if err := c.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	b, seq2 := c.Bundle()
	if len(b.X509Authorities()) != 1 || !b.X509Authorities()[0].Equal(root.Cert) || seq2 <= seq1 {
		t.Fatalf("after the old intermediates expired: %d roots, seq %d", len(b.X509Authorities()), seq2)
	}
}

// A manual retire refuses while something still presents a certificate
// under the old root, and names it.
func TestRootRetireRefusedWhileInUse(t *testing.T) {
	c, clk, _ := lifecycle(t)
	if _, err := c.PrepareRoot(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.ActivateRoot(ctx, false); err != nil {
		t.Fatal(err)
	}
	// Expire the old intermediates without letting the schedule retire the root.
	clk.Add(time.Hour)
	for _, a := range c.Authorities() {
		if a.Kind == ca.KindIntermediate && a.State == ca.StateOld {
			if _, err := c.Taint(ctx, a.ID); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Revoke(ctx, a.ID, func(string) []string { return nil }); err != nil {
				t.Fatal(err)
			}
		}
	}
	_, err := c.RetireRoot(ctx, func(ca.Authority) []string { return []string{"this server's TLS certificate"} })
	var r *ca.RefusedError
	if !errors.As(err, &r) || len(r.Blockers) != 1 || !strings.Contains(err.Error(), "still presented") {
		t.Fatalf("retire while the server presents a certificate under the old root: %v", err)
	}
	if _, err := c.RetireRoot(ctx, func(ca.Authority) []string { return nil }); err != nil {
		t.Fatal(err)
	}
}

// An existing CA (the company root) signs shortleaf's intermediates; the
// bundle then holds the upstream root, and root rotation is refused.
func TestUpstreamAuthority(t *testing.T) {
	upstreamKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "company root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, upstreamKey.Public(), upstreamKey)
	if err != nil {
		t.Fatal(err)
	}
	upstreamCert, _ := x509.ParseCertificate(der)
	cfg := catest.Config(t)
	cfg.Upstream = &ca.Upstream{Chain: []*x509.Certificate{upstreamCert}, Signer: upstreamKey}
	c := catest.NewFromConfig(t, cfg)

	bundle, _ := c.Bundle()
	if len(bundle.X509Authorities()) != 1 || !bundle.X509Authorities()[0].Equal(upstreamCert) {
		t.Fatal("the bundle does not hold exactly the upstream root")
	}
	chain := signLeaf(t, c, "spiffe://example.org/web", time.Minute)
	if err := chain[1].CheckSignatureFrom(upstreamCert); err != nil {
		t.Fatalf("the intermediate is not signed by the upstream CA: %v", err)
	}
	if _, _, err := x509svid.Verify(chain, bundle); err != nil {
		t.Fatalf("SVID does not verify against the upstream root: %v", err)
	}
	if _, err := c.PrepareRoot(ctx); err == nil {
		t.Fatal("root rotation accepted with an upstream authority")
	}
	// A restart keeps the same upstream-signed intermediate.
	again := catest.NewFromConfig(t, cfg)
	inter, _ := again.ActiveIntermediate()
	if !inter.Equal(chain[1]) {
		t.Fatal("restart replaced the upstream-signed intermediate")
	}
}

func TestRemovedAuthoritiesLoseTheirKeys(t *testing.T) {
	cfg, clk := journalOf(t)
	c := catest.NewFromConfig(t, cfg)
	keysDir := filepath.Join(filepath.Dir(cfg.Journal.(*datastore.Bolt).Path()), "keys")
	first, _ := os.ReadDir(keysDir)
	for range 3 { // three full intermediate lifetimes
		clk.Add(30 * time.Minute)
		if err := c.Rotate(ctx); err != nil {
			t.Fatal(err)
		}
	}
	now, _ := os.ReadDir(keysDir)
	live := 0
	for _, a := range c.Authorities() {
		if a.Kind == ca.KindRoot {
			// The root's key is sealed in the journal (every replica signs
			// intermediates with it); its file is gone.
			if a.KeyRef != "sealed" {
				t.Errorf("root %s is not sealed: %s", a.ID, a.KeyRef)
			}
			continue
		}
		live++
	}
	if len(now) != live {
		t.Fatalf("%d key files for %d authorities (started with %d): removed keys were not deleted", len(now), live, len(first))
	}
}

// Clock steps. Backward past the active intermediate's NotBefore: it must not
// sign (its SVIDs would not chain), a fresh one takes over at the next
// rotation, the step is logged and counted, and SVIDs verify again. Forward
// past the schedule: the expired keys are replaced at once, as after a long
// stop.
func TestClockSteps(t *testing.T) {
	t.Run("backward", func(t *testing.T) {
		clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
		cfg := catest.Config(t)
		cfg.Clock, cfg.IntermediateTTL, cfg.MaxSVIDTTL = clk, time.Hour, 5*time.Minute
		var mu sync.Mutex
		transitions := map[string]int{}
		cfg.OnTransition = func(tr ca.Transition) {
			mu.Lock()
			defer mu.Unlock()
			transitions[string(tr.Kind)+"/"+tr.What]++
		}
		c := catest.NewFromConfig(t, cfg)
		for range 36 { // three hours of rotations
			clk.Add(5 * time.Minute)
			if err := c.Rotate(ctx); err != nil {
				t.Fatal(err)
			}
		}
		before := byKindState(c)["intermediate/active"][0]
		// An NTP correction, or a VM restored from a snapshot: back to ten
		// minutes after the root was made, before every key issued since.
		clk.Add(-(3*time.Hour - 10*time.Minute))
		if _, err := c.SignX509SVID(params(t, 5*time.Minute)); !errors.Is(err, ca.ErrSignerNotYetValid) {
			t.Fatalf("signing with a not-yet-valid intermediate: %v, want ErrSignerNotYetValid", err)
		}
		if _, _, err := c.SignJWTSVID(ca.JWTSVIDParams{SPIFFEID: webID, Audience: []string{"a"}, TTL: time.Minute}); !errors.Is(err, ca.ErrSignerNotYetValid) {
			t.Fatalf("signing with a not-yet-valid JWT key: %v, want ErrSignerNotYetValid", err)
		}
		if err := c.Rotate(ctx); err != nil {
			t.Fatal(err)
		}
		after := byKindState(c)["intermediate/active"][0]
		if after.ID == before.ID || clk.Now().Before(after.NotBefore) {
			t.Fatalf("after the step the active intermediate is %s (NotBefore %s, now %s); want a fresh, valid one", after.ID, after.NotBefore, clk.Now())
		}
		mu.Lock()
		counted := transitions["intermediate/activated_after_clock_step"] + transitions["jwt/activated_after_clock_step"]
		mu.Unlock()
		if counted != 2 {
			t.Fatalf("transitions %v: want one activated_after_clock_step for the intermediate and one for the JWT key (the metric counts these)", transitions)
		}
		chain, err := c.SignX509SVID(params(t, 5*time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		bundle, _ := c.Bundle()
		if _, _, err := x509svid.Verify(chain, bundle, x509svid.WithTime(clk.Now())); err != nil {
			t.Fatalf("SVID after the step does not verify: %v", err)
		}
	})
	t.Run("forward", func(t *testing.T) {
		c, clk, _ := lifecycle(t)
		clk.Add(3 * time.Hour) // past the intermediate's NotAfter
		if _, err := c.SignX509SVID(params(t, 5*time.Minute)); err == nil {
			t.Fatal("signed with an expired intermediate")
		}
		if err := c.Rotate(ctx); err != nil {
			t.Fatal(err)
		}
		chain, err := c.SignX509SVID(params(t, 5*time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		if got := chain[0].NotAfter.Sub(clk.Now()); got != 5*time.Minute {
			t.Fatalf("SVID after the step lives %s, want the full 5m", got)
		}
	})
}

// params asks for an X.509-SVID for webID under a fresh P-256 key.
func params(t *testing.T, ttl time.Duration) ca.X509SVIDParams {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return ca.X509SVIDParams{PublicKey: key.Public(), SPIFFEID: webID, TTL: ttl}
}

// A revoked intermediate is listed in its root's CRL until it expires; every
// intermediate publishes an empty CRL (leaves are revoked by expiry); each
// CRL verifies under its issuer and is valid for an intermediate lifetime.
func TestCRLsListRevokedIntermediates(t *testing.T) {
	c, clk, _ := lifecycle(t)
	first, _ := c.ActiveIntermediate()
	var firstID string
	for _, a := range c.Authorities() {
		if a.Cert != nil && a.Cert.Equal(first) {
			firstID = a.ID
		}
	}
	if _, err := c.Prepare(ctx, ca.KindIntermediate); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Activate(ctx, ca.KindIntermediate); err != nil {
		t.Fatal(err)
	}
	before, err := c.CRLs()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Taint(ctx, firstID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Revoke(ctx, firstID, func(string) []string { return nil }); err != nil {
		t.Fatal(err)
	}
	crls, err := c.CRLs()
	if err != nil {
		t.Fatal(err)
	}
	byIssuer := map[string]*x509.RevocationList{}
	for _, crl := range crls {
		byIssuer[string(crl.AuthorityKeyId)] = crl
	}
	bundle, _ := c.Bundle()
	root := bundle.X509Authorities()[0]
	rootCRL := byIssuer[string(root.SubjectKeyId)]
	if rootCRL == nil || len(rootCRL.RevokedCertificateEntries) != 1 || rootCRL.RevokedCertificateEntries[0].SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Fatalf("the root's CRL does not list exactly the revoked intermediate: %+v", rootCRL)
	}
	if err := rootCRL.CheckSignatureFrom(root); err != nil {
		t.Fatalf("root CRL signature: %v", err)
	}
	if got := rootCRL.NextUpdate.Sub(clk.Now()); got != time.Hour {
		t.Fatalf("nextUpdate %s after now, want the intermediate lifetime", got)
	}
	if rootCRL.Number.Cmp(before[0].Number) <= 0 {
		t.Fatalf("CRL number did not grow: %v -> %v", before[0].Number, rootCRL.Number)
	}
	active, _ := c.ActiveIntermediate()
	if crl := byIssuer[string(active.SubjectKeyId)]; crl == nil || len(crl.RevokedCertificateEntries) != 0 || crl.CheckSignatureFrom(active) != nil {
		t.Fatalf("the active intermediate's CRL: %+v", crl)
	}
	// Listed until the revoked intermediate would have expired; then dropped.
	clk.Add(first.NotAfter.Sub(clk.Now()) + time.Minute)
	if err := c.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	crls, err = c.CRLs()
	if err != nil {
		t.Fatal(err)
	}
	for _, crl := range crls {
		if len(crl.RevokedCertificateEntries) != 0 {
			t.Fatal("an expired revoked intermediate is still listed")
		}
	}
}
