package ca_test

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/ca/catest"
	"github.com/shortleaf/shortleaf/pkg/clock"
	"github.com/shortleaf/shortleaf/pkg/keymanager"
)

// replicaSet is several replicas of one CA on one journal and one clock;
// leader names the replica that leads, and the journal's fence agrees
// unless a test makes them differ.
type replicaSet struct {
	clk     *clock.Fake
	journal *ca.MemoryJournal
	mu      sync.Mutex
	leader  string
	term    int64 // raised by each lead()
	cfg     map[string]ca.Config
	keyDirs map[string]string
}

func newReplicaSet(t *testing.T, ids ...string) *replicaSet {
	t.Helper()
	rs := &replicaSet{clk: clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)), journal: &ca.MemoryJournal{}, leader: ids[0], term: 1, cfg: map[string]ca.Config{}, keyDirs: map[string]string{}}
	rs.journal.Leading = rs.leads
	for _, id := range ids {
		rs.keyDirs[id] = filepath.Join(t.TempDir(), "keys")
		// No passphrase: sealing is then cheap (the harness seals under one).
		km, err := keymanager.New(keymanager.Config{Dir: rs.keyDirs[id]})
		if err != nil {
			t.Fatal(err)
		}
		rs.cfg[id] = ca.Config{TrustDomain: catest.TrustDomain, Keys: km, Journal: rs.journal, Clock: rs.clk, ReplicaID: id,
			IntermediateTTL: time.Hour, MaxSVIDTTL: 5 * time.Minute, RootTTL: 30 * 24 * time.Hour, RootPrepareBefore: 10 * 24 * time.Hour,
			Leadership: func() (int64, bool) { return rs.leadership(id) }}
	}
	return rs
}

func (rs *replicaSet) leads(id string) bool {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.leader == id
}

func (rs *replicaSet) leadership(id string) (int64, bool) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.term, rs.leader == id
}

func (rs *replicaSet) lead(id string) {
	rs.mu.Lock()
	rs.leader = id
	rs.term++
	rs.mu.Unlock()
}

func (rs *replicaSet) start(t *testing.T, id string) *ca.CA {
	t.Helper()
	c, err := ca.New(ctx, rs.cfg[id])
	if err != nil {
		t.Fatalf("replica %s: %v", id, err)
	}
	return c
}

func rotate(t *testing.T, cs ...*ca.CA) {
	t.Helper()
	for _, c := range cs {
		if err := c.Rotate(ctx); err != nil {
			t.Fatalf("replica %s: %v", c.ReplicaID(), err)
		}
	}
}

func keyDir(rs *replicaSet, id string) string { return rs.keyDirs[id] }

// Replicas share one root and one bundle, and each signs with an
// intermediate and a JWT key of its own; what one signs verifies against
// every other's bundle.
func TestReplicasShareRootAndBundle(t *testing.T) {
	rs := newReplicaSet(t, "a", "b", "c")
	a, b, c := rs.start(t, "a"), rs.start(t, "b"), rs.start(t, "c")
	rotate(t, a, b, c) // each reads what the others wrote
	bundleA, seqA := a.Bundle()
	inters := map[string]bool{}
	for _, r := range []*ca.CA{a, b, c} {
		bundle, seq := r.Bundle()
		if seq != seqA || !bundle.Equal(bundleA) || len(bundle.X509Authorities()) != 1 {
			t.Fatalf("replica %s has bundle %d with %d roots; a has %d", r.ReplicaID(), seq, len(bundle.X509Authorities()), seqA)
		}
		if n := len(r.JWTBundle().JWTAuthorities()); n != 3 {
			t.Fatalf("replica %s publishes %d JWT keys, want every replica's 3", r.ReplicaID(), n)
		}
		inter, err := r.ActiveIntermediate()
		if err != nil {
			t.Fatal(err)
		}
		inters[string(inter.Raw)] = true
		chain := signLeaf(t, r, "spiffe://example.org/w", time.Minute)
		if _, _, err := x509svid.Verify(chain, bundleA, x509svid.WithTime(rs.clk.Now())); err != nil {
			t.Fatalf("replica %s's SVID does not verify against a's bundle: %v", r.ReplicaID(), err)
		}
		if got := r.Replicas(); len(got) != 3 || got[0].ID != r.ReplicaID() {
			t.Fatalf("replica %s lists replicas %+v", r.ReplicaID(), got)
		}
	}
	if len(inters) != 3 {
		t.Fatalf("%d distinct intermediates for 3 replicas", len(inters))
	}
}

// Replicas started at once on an empty journal make one root between them;
// the losers' root keys are destroyed, and only the sealed root is kept.
func TestConcurrentFirstStartsMakeOneRoot(t *testing.T) {
	ids := []string{"a", "b", "c", "d"}
	rs := newReplicaSet(t, ids...)
	cas := make([]*ca.CA, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() {
			c, err := ca.New(ctx, rs.cfg[id])
			if err != nil {
				t.Errorf("replica %s: %v", id, err)
			}
			cas[i] = c
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	rotate(t, cas...)
	roots := map[string]bool{}
	for i, c := range cas {
		for _, a := range c.Authorities() {
			if a.Kind == ca.KindRoot {
				roots[a.ID] = true
			}
		}
		// Only keys some authority names are left: the replica's own.
		own := 0
		for _, a := range c.Authorities() {
			if a.Replica == ids[i] {
				own++
			}
		}
		if files := keyFiles(t, keyDir(rs, ids[i])); len(files) != own {
			t.Errorf("replica %s keeps %d key files for %d authorities of its own: %v", ids[i], len(files), own, files)
		}
	}
	if len(roots) != 1 {
		t.Fatalf("%d roots after concurrent first starts", len(roots))
	}
}

// Only the leader runs root rotation. A replica that still believes it
// leads after another took over has its leader write refused, and nothing
// changes.
func TestOnlyTheLeaderRotatesTheRoot(t *testing.T) {
	rs := newReplicaSet(t, "a", "b")
	a, b := rs.start(t, "a"), rs.start(t, "b")
	first := a.RootRotation().ActiveRootID
	rs.clk.Add(20*24*time.Hour + time.Minute) // past the root's prepare time
	rotate(t, b)
	if st := b.RootRotation(); st.PreparedRootID != "" || st.ActiveRootID != first {
		t.Fatalf("replica b, which does not lead, rotated the root: %+v", st)
	}
	// The journal's fence says b leads now, but a has not noticed.
	rs.mu.Lock()
	rs.journal.Leading = func(id string) bool { return id == "b" }
	rs.mu.Unlock()
	before, _ := rs.journal.LoadCAJournal(ctx)
	if err := a.Rotate(ctx); !errors.Is(err, ca.ErrNotLeader) {
		t.Fatalf("deposed leader's rotation: %v, want ErrNotLeader", err)
	}
	after, _ := rs.journal.LoadCAJournal(ctx)
	if string(after.Cluster.Data) != string(before.Cluster.Data) {
		t.Fatal("the deposed leader's write changed the cluster record")
	}
	rs.lead("b")
	rotate(t, b, a)
	// No gate to wait on: the new leader prepared and activated the next root.
	if st := a.RootRotation(); st.ActiveRootID == first || st.OldRootID != first {
		t.Fatalf("the new leader did not rotate the root: %+v", st)
	}
}

// A key of one replica tainted and revoked through another: the owner
// replaces what it signed, then drops it and destroys its key.
func TestTaintAndRevokeAcrossReplicas(t *testing.T) {
	rs := newReplicaSet(t, "a", "b")
	a, b := rs.start(t, "a"), rs.start(t, "b")
	old, _ := b.ActiveIntermediate()
	if _, err := b.Prepare(ctx, ca.KindIntermediate); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Activate(ctx, ca.KindIntermediate); err != nil {
		t.Fatal(err)
	}
	rotate(t, a)
	var oldID, oldRef string
	for _, au := range a.Authorities() {
		if au.Cert != nil && au.Cert.Equal(old) {
			oldID, oldRef = au.ID, au.KeyRef
		}
	}
	if _, err := a.Taint(ctx, oldID); err != nil {
		t.Fatalf("taint b's old intermediate through a: %v", err)
	}
	rotate(t, b)
	if ids := b.TaintedKeyIDs(); len(ids) != 1 || string(ids[0]) != string(old.SubjectKeyId) {
		t.Fatalf("b's tainted key IDs: %x", ids)
	}
	if _, err := a.Revoke(ctx, oldID, func(string) []string { return nil }); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(keyDir(rs, "b"), strings.TrimPrefix(oldRef, "softkms:"))
	if _, err := os.Stat(file); err != nil {
		t.Fatalf("b's key before b read the revocation: %v", err)
	}
	rotate(t, b)
	for _, c := range []*ca.CA{a, b} {
		for _, au := range c.Authorities() {
			if au.ID == oldID {
				t.Fatalf("replica %s still lists the revoked intermediate", c.ReplicaID())
			}
		}
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Fatalf("the revoked intermediate's key is still on b: %v", err)
	}
	crls, err := a.CRLs()
	if err != nil || len(crls) == 0 || len(crls[0].RevokedCertificateEntries) != 1 {
		t.Fatalf("root CRL after the revocation: %v", err)
	}
}

// A replica gone for longer than its keys' lifetime leaves the journal:
// the leader prunes its record, and its JWT keys leave the bundle.
func TestGoneReplicaIsPruned(t *testing.T) {
	rs := newReplicaSet(t, "a", "b")
	a, b := rs.start(t, "a"), rs.start(t, "b")
	rotate(t, a)
	_, seq := a.Bundle()
	bJWT := b.JWTBundle().JWTAuthorities()
	// b stops; a runs on for two intermediate lifetimes.
	for range 24 {
		rs.clk.Add(5 * time.Minute)
		rotate(t, a)
	}
	if got := a.Replicas(); len(got) != 1 {
		t.Fatalf("replicas after b was gone for its keys' lifetime: %+v", got)
	}
	for kid := range bJWT {
		if _, ok := a.JWTBundle().FindJWTAuthority(kid); ok {
			t.Fatalf("b's JWT key %s is still published", kid)
		}
	}
	if _, now := a.Bundle(); now <= seq {
		t.Fatalf("bundle sequence %d did not move past %d", now, seq)
	}
	state, _ := rs.journal.LoadCAJournal(ctx)
	if _, ok := state.Replicas["b"]; ok {
		t.Fatal("b's record is still in the journal")
	}
	// b comes back after all: it starts afresh.
	b = rs.start(t, "b")
	if _, err := b.ActiveIntermediate(); err != nil {
		t.Fatal(err)
	}
}

// The journal of a single server from before replicas (one record, version
// 1, the root's key in a file) is split on first load: the roots stay in
// the cluster record, the rest become this replica's, and the root's key
// is sealed into the journal and its file destroyed.
func TestSingleServerJournalIsSplit(t *testing.T) {
	rs := newReplicaSet(t, "local")
	cfg := rs.cfg["local"]
	soft := cfg.Keys.(*keymanager.Soft)
	cfg.Keys = unsealingKeys{soft} // as before replicas: every key in a file
	first, err := ca.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	before := first.Authorities()
	state, _ := rs.journal.LoadCAJournal(ctx)
	v1 := singleServerJournal(t, state)
	journal := ca.NewMemoryJournal(ca.JournalState{Cluster: ca.JournalRecord{Data: v1, Revision: 1}})
	cfg = rs.cfg["local"]
	cfg.Journal = journal
	rootFile := ""
	for _, a := range before {
		if a.Kind == ca.KindRoot {
			rootFile = filepath.Join(keyDir(rs, "local"), strings.TrimPrefix(a.KeyRef, "softkms:"))
		}
	}
	if _, err := os.Stat(rootFile); err != nil {
		t.Fatalf("the single server's root key file: %v", err)
	}
	upgraded, err := ca.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	after := upgraded.Authorities()
	if len(after) != len(before) {
		t.Fatalf("%d authorities before the split, %d after", len(before), len(after))
	}
	for i := range before {
		if before[i].ID != after[i].ID || before[i].State != after[i].State {
			t.Fatalf("authority %d: %s/%s before, %s/%s after", i, before[i].ID, before[i].State, after[i].ID, after[i].State)
		}
		if after[i].Kind == ca.KindRoot && after[i].KeyRef != "sealed" {
			t.Fatalf("root %s is not sealed: %s", after[i].ID, after[i].KeyRef)
		}
	}
	if _, err := os.Stat(rootFile); !os.IsNotExist(err) {
		t.Fatalf("the root's key file outlived its sealing: %v", err)
	}
	split, _ := journal.LoadCAJournal(ctx)
	var cluster struct {
		Version     int
		Authorities []struct{ Kind string }
	}
	if err := json.Unmarshal(split.Cluster.Data, &cluster); err != nil || cluster.Version != 2 || len(cluster.Authorities) != 1 || cluster.Authorities[0].Kind != "root" {
		t.Fatalf("cluster record after the split: %s", split.Cluster.Data)
	}
	if split.Replicas["local"].Data == nil {
		t.Fatal("no record for the replica after the split")
	}
	// And it restarts from the split journal.
	if _, err := ca.New(ctx, cfg); err != nil {
		t.Fatal(err)
	}
}

// unsealingKeys hides the key manager's sealing: keys stay in files, as
// before replicas.
type unsealingKeys struct{ soft *keymanager.Soft }

func (k unsealingKeys) CreateKey(ctx context.Context, name, keyType string) (crypto.Signer, string, error) {
	return k.soft.CreateKey(ctx, name, keyType)
}

func (k unsealingKeys) LoadKey(ctx context.Context, ref string) (crypto.Signer, error) {
	return k.soft.LoadKey(ctx, ref)
}

// singleServerJournal rewrites a split journal as one version-1 record.
func singleServerJournal(t *testing.T, state ca.JournalState) []byte {
	t.Helper()
	var cluster map[string]any
	if err := json.Unmarshal(state.Cluster.Data, &cluster); err != nil {
		t.Fatal(err)
	}
	auths, _ := cluster["authorities"].([]any)
	for _, r := range state.Replicas {
		var rec map[string]any
		if err := json.Unmarshal(r.Data, &rec); err != nil {
			t.Fatal(err)
		}
		more, _ := rec["authorities"].([]any)
		auths = append(auths, more...)
	}
	cluster["authorities"], cluster["version"] = auths, 1
	raw, err := json.Marshal(cluster)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// clusterStamp is who wrote the cluster record as it is now.
type clusterStamp struct {
	WrittenBy  string `json:"written_by"`
	LeaderTerm int64  `json:"leader_term"`
	revision   int64
}

func stampOf(t *testing.T, j ca.Journal) clusterStamp {
	t.Helper()
	state, err := j.LoadCAJournal(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var s clusterStamp
	if err := json.Unmarshal(state.Cluster.Data, &s); err != nil {
		t.Fatal(err)
	}
	s.revision = state.Cluster.Revision
	return s
}

// The cluster record names the replica that last wrote it and, for a
// leader duty, the leader's term: what lets the record's history show
// that no two leaders wrote it. A replica's own rotation leaves the
// cluster record alone, whoever wrote it last.
func TestClusterRecordNamesItsWriterAndLeaderTerm(t *testing.T) {
	rs := newReplicaSet(t, "a", "b")
	a, b := rs.start(t, "a"), rs.start(t, "b")
	rotate(t, a, b)
	if _, err := b.PrepareRoot(ctx); err != nil {
		t.Fatal(err)
	}
	if s := stampOf(t, rs.journal); s.WrittenBy != "b" || s.LeaderTerm != 0 {
		t.Fatalf("after b's root prepare (no leader duty) the record says %+v", s)
	}
	rs.lead("b")    // term 2
	rotate(t, a, b) // b, leading, activates the root (no gate)
	s := stampOf(t, rs.journal)
	if s.WrittenBy != "b" || s.LeaderTerm != 2 {
		t.Fatalf("after the leader's activation the record says %+v; want b in term 2", s)
	}
	// Each replica prepares its next keys at half their life (publishing a
	// JWT key changes the bundle sequence, so the cluster record too) and
	// activates them later: then only its own record changes, and the
	// cluster record stays as the leader wrote it.
	rs.clk.Add(31 * time.Minute)
	rotate(t, b, a)
	s = stampOf(t, rs.journal)
	if s.WrittenBy != "a" || s.LeaderTerm != 0 {
		t.Fatalf("after a published its next JWT key the record says %+v", s)
	}
	rs.clk.Add(25 * time.Minute)
	rotate(t, b)
	if after := stampOf(t, rs.journal); after != s {
		t.Fatalf("b's activation of its own keys rewrote the cluster record: %+v, was %+v", after, s)
	}
}

// A replica leaves the other replicas' expired keys to them: removing them
// from its own view would bump the bundle sequence and rewrite the shared
// record on every rotation tick of every replica until the owner's own
// write, so replicas on a fast schedule starved each other's writes.
func TestReplicaLeavesOthersExpiredKeysToThem(t *testing.T) {
	rs := newReplicaSet(t, "a", "b")
	a := rs.start(t, "a")
	rs.clk.Add(10 * time.Minute) // b's keys rotate 10 minutes after a's
	b := rs.start(t, "b")
	rotate(t, a, b)
	for range 49 { // minute by minute: a prepares (30m) and activates (55m) its next keys
		rs.clk.Add(time.Minute)
		rotate(t, a, b)
	}
	// At 60m a's first keys expire; b has nothing of its own to do.
	before := stampOf(t, rs.journal)
	rs.clk.Add(time.Minute)
	rotate(t, b, b)
	if after := stampOf(t, rs.journal); after != before {
		t.Fatalf("b rewrote the cluster record for a's expired keys: %+v, was %+v", after, before)
	}
	rotate(t, a)
	if n := len(b.JWTBundle().JWTAuthorities()); n == 0 {
		t.Fatal("b publishes no JWT keys")
	}
}

// refusingJournal refuses the next refuse writes as if another replica's
// write had got in first.
type refusingJournal struct {
	ca.Journal
	mu     sync.Mutex
	refuse int
}

func (j *refusingJournal) SaveCAJournal(ctx context.Context, w ca.JournalWrite) (int64, error) {
	j.mu.Lock()
	refuse := j.refuse > 0
	j.refuse--
	j.mu.Unlock()
	if refuse {
		return 0, ca.ErrJournalConflict
	}
	return j.Journal.SaveCAJournal(ctx, w)
}

func (j *refusingJournal) refuseNext(n int) {
	j.mu.Lock()
	j.refuse = n
	j.mu.Unlock()
}

// countingKeys counts the keys made.
type countingKeys struct {
	*keymanager.Soft
	mu      sync.Mutex
	created int
}

func (k *countingKeys) CreateKey(ctx context.Context, name, keyType string) (crypto.Signer, string, error) {
	k.mu.Lock()
	k.created++
	k.mu.Unlock()
	return k.Soft.CreateKey(ctx, name, keyType)
}

// A rotation whose writes are refused (another replica wrote first) makes
// its keys once and uses them on the next attempt: making keys can take
// far longer than a write, and a replica that made them anew on each
// attempt lost every race. Keys no attempt could use are destroyed.
func TestRefusedWritesReuseTheirKeys(t *testing.T) {
	rs := newReplicaSet(t, "a")
	soft, err := keymanager.New(keymanager.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	keys := &countingKeys{Soft: soft}
	journal := &refusingJournal{Journal: rs.journal}
	cfg := rs.cfg["a"]
	cfg.Keys, cfg.Journal = keys, journal
	rs.cfg["a"] = cfg
	a := rs.start(t, "a")
	ownKeys := func() []string {
		var refs []string
		for _, au := range a.Authorities() {
			if au.Kind != ca.KindRoot {
				refs = append(refs, au.KeyRef)
			}
		}
		slices.Sort(refs)
		return refs
	}
	stored := func() []string {
		refs, err := soft.ListKeys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(refs)
		return refs
	}

	rs.clk.Add(31 * time.Minute) // the next intermediate and JWT key are due
	keys.created = 0
	journal.refuseNext(3)
	rotate(t, a)
	if keys.created != 2 {
		t.Fatalf("a rotation refused 3 times made %d keys; want 2 (one intermediate, one JWT key)", keys.created)
	}
	if got, want := stored(), ownKeys(); !slices.Equal(got, want) {
		t.Fatalf("stored keys %v; the journal names %v", got, want)
	}

	// Refused every time: the change is given up, and its keys destroyed.
	rs.clk.Add(25 * time.Minute) // activation is due; nothing new to make
	before := stored()
	rs.clk.Add(5 * time.Minute) // and the next keys, after activation
	journal.refuseNext(100)
	if err := a.Rotate(ctx); !errors.Is(err, ca.ErrJournalConflict) {
		t.Fatalf("rotation refused every time: %v", err)
	}
	if got := stored(); !slices.Equal(got, before) {
		t.Fatalf("stored keys after a rotation given up: %v; before it %v", got, before)
	}
}
