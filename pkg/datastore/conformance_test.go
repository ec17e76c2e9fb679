package datastore_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/pkg/datastore"
	"github.com/shortleaf/shortleaf/pkg/etcdtest"
)

// The conformance suite: every test runs, with the same assertions, against
// both backends: a bbolt file and an embedded etcd cluster.

// store is every method of the datastore, as both backends have them.
type store interface {
	CreateEntry(ctx context.Context, e *datastore.Entry) (*datastore.Entry, error)
	GetEntry(ctx context.Context, id string) (*datastore.Entry, error)
	UpdateEntry(ctx context.Context, e *datastore.Entry) (*datastore.Entry, error)
	DeleteEntry(ctx context.Context, id string) error
	ListEntries(ctx context.Context, pageToken string, pageSize int) ([]*datastore.Entry, string, error)
	ListEntriesByParent(ctx context.Context, parentID, pageToken string, pageSize int) ([]*datastore.Entry, string, error)
	EntriesRevision(ctx context.Context, parentID string) (current, parent uint64, err error)
	CreateJoinToken(ctx context.Context, t *datastore.JoinToken) error
	PurgeExpiredJoinTokens(ctx context.Context, now time.Time) (int, error)
	AttestJoinToken(ctx context.Context, tokenID string, secretHash []byte, now time.Time, agent *datastore.Agent) error
	AttestAgent(ctx context.Context, agent *datastore.Agent) (*datastore.Agent, error)
	GetAgent(ctx context.Context, spiffeID string) (*datastore.Agent, error)
	UpdateAgent(ctx context.Context, spiffeID string, change func(*datastore.Agent) error) (*datastore.Agent, error)
	ListAgents(ctx context.Context) ([]*datastore.Agent, error)
	RecordLastSeen(ctx context.Context, seen map[string]time.Time) (int, error)
	DeleteAgent(ctx context.Context, spiffeID string) error
	LoadCAJournal(ctx context.Context) (ca.JournalState, error)
	SaveCAJournal(ctx context.Context, w ca.JournalWrite) (int64, error)
	PutFederation(ctx context.Context, f *datastore.Federation, create bool) error
	GetFederation(ctx context.Context, td string) (*datastore.Federation, error)
	ListFederations(ctx context.Context) ([]*datastore.Federation, error)
	DeleteFederation(ctx context.Context, td string) error
	RecordFederationRefresh(ctx context.Context, read *datastore.Federation, bundle []byte, at time.Time, fetchErr string) error
	SetFederatedBundle(ctx context.Context, td string, raw []byte) error
	GetFederatedBundle(ctx context.Context, td string) ([]byte, error)
	ListFederatedBundles(ctx context.Context) ([]datastore.FederatedBundle, error)
	DeleteFederatedBundle(ctx context.Context, td string) error
	WatchEntries(ctx context.Context, after uint64, fn func(changes []datastore.EntryChange, revision uint64) error) error
	WriteEntries(ctx context.Context, writes []datastore.EntryWrite) ([]datastore.EntryWriteResult, error)
	SnapshotEntriesByParent(ctx context.Context, parentID string, pageSize int, fn func(page []*datastore.Entry) error) (uint64, error)
	Close() error
}

var (
	_ store = (*datastore.Bolt)(nil)
	_ store = (*datastore.Etcd)(nil)
)

// sharedEtcd serves every etcd test of the package, each under a prefix of
// its own.
var sharedEtcd *etcdtest.Cluster

func TestMain(m *testing.M) {
	c, err := etcdtest.StartShared(1)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	sharedEtcd = c
	code := m.Run()
	c.Stop()
	os.Exit(code)
}

// backend opens handles on one fresh, empty datastore. Every handle sees
// the same records, as replicas sharing a datastore do (for bbolt, which
// one process opens once, all handles are the one store).
type backend struct {
	// handle returns a store on the datastore; it is closed at the test's end.
	handle func(t *testing.T) store
	// reopen closes s and opens the datastore again.
	reopen func(t *testing.T, s store) store
	// forget drops the history of changes the store keeps for watches:
	// etcd compacts it, a bbolt store is reopened (its history is the
	// process's own writes). It returns the store to go on with.
	forget func(t *testing.T, s store) store
}

func eachBackend(t *testing.T, test func(t *testing.T, b backend)) {
	t.Run("bbolt", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "ds.db")
		var once sync.Once
		var shared store
		open := func(t *testing.T) store {
			s, err := datastore.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		}
		test(t, backend{
			handle: func(t *testing.T) store {
				once.Do(func() { shared = open(t) })
				return shared
			},
			reopen: func(t *testing.T, s store) store {
				s.Close()
				shared = open(t)
				return shared
			},
			forget: func(t *testing.T, s store) store {
				s.Close()
				shared = open(t)
				return shared
			},
		})
	})
	t.Run("etcd", func(t *testing.T) {
		cfg := datastore.EtcdConfig{Endpoints: sharedEtcd.Endpoints(), Prefix: "/test/" + randomHex() + "/"}
		open := func(t *testing.T) store {
			s, err := datastore.OpenEtcd(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		}
		test(t, backend{
			handle: open,
			reopen: func(t *testing.T, s store) store { s.Close(); return open(t) },
			forget: func(t *testing.T, s store) store {
				cli := sharedEtcd.Client(t)
				// One more write, so that everything written so far is
				// before the compaction revision.
				resp, err := cli.Put(context.Background(), cfg.Prefix+"test/compact", "")
				if err != nil {
					t.Fatal(err)
				}
				if _, err := cli.Compact(context.Background(), resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
					t.Fatal(err)
				}
				return s
			},
		})
	})
}

func randomHex() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func entry(id, parent string) *datastore.Entry {
	return &datastore.Entry{SPIFFEID: id, ParentID: parent, Selectors: []attest.Selector{{Type: "unix", Value: "uid:1"}}}
}

func TestEntriesCRUDAndUniqueness(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		s := b.handle(t)
		ctx := context.Background()
		e, err := s.CreateEntry(ctx, entry("spiffe://td/a", "spiffe://td/agent/x"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.CreateEntry(ctx, entry("spiffe://td/a", "spiffe://td/agent/x")); !errors.Is(err, datastore.ErrAlreadyExists) {
			t.Fatalf("duplicate: %v, want ErrAlreadyExists", err)
		}
		e.ParentID = "spiffe://td/agent/y"
		up, err := s.UpdateEntry(ctx, e)
		if err != nil || up.Revision != 2 {
			t.Fatalf("update: rev %d, %v", up.Revision, err)
		}
		// The parent index moved with the update.
		if got, _, _ := s.ListEntriesByParent(ctx, "spiffe://td/agent/x", "", 10); len(got) != 0 {
			t.Errorf("old parent still lists %d entries", len(got))
		}
		if got, _, _ := s.ListEntriesByParent(ctx, "spiffe://td/agent/y", "", 10); len(got) != 1 {
			t.Errorf("new parent lists %d entries", len(got))
		}
		// The freed identity can be registered again.
		if _, err := s.CreateEntry(ctx, entry("spiffe://td/a", "spiffe://td/agent/x")); err != nil {
			t.Fatalf("re-create after move: %v", err)
		}
		if err := s.DeleteEntry(ctx, e.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := s.GetEntry(ctx, e.ID); !errors.Is(err, datastore.ErrNotFound) {
			t.Fatalf("get deleted: %v", err)
		}
		if err := s.DeleteEntry(ctx, e.ID); !errors.Is(err, datastore.ErrNotFound) {
			t.Fatalf("delete twice: %v", err)
		}
	})
}

// A batch of writes: each succeeds or is refused on its own, later writes
// see earlier ones, the indexes follow, and a watcher gets every change.
func TestWriteEntriesBatchHasPerWriteResults(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		s := b.handle(t)
		ctx := context.Background()
		existing, err := s.CreateEntry(ctx, entry("spiffe://td/taken", "spiffe://td/agent/x"))
		if err != nil {
			t.Fatal(err)
		}
		current, _, err := s.EntriesRevision(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		writes := []datastore.EntryWrite{
			{Create: entry("spiffe://td/a", "spiffe://td/agent/x")},
			{Create: entry("spiffe://td/taken", "spiffe://td/agent/x")}, // refused: exists
			{Create: entry("spiffe://td/b", "spiffe://td/agent/y")},
			{DeleteID: "no-such-entry"}, // refused: not found
			{DeleteID: existing.ID},
			{Create: entry("spiffe://td/taken", "spiffe://td/agent/x")}, // free again after the delete
		}
		res, err := s.WriteEntries(ctx, writes)
		if err != nil {
			t.Fatal(err)
		}
		wantErr := []error{nil, datastore.ErrAlreadyExists, nil, datastore.ErrNotFound, nil, nil}
		for i, r := range res {
			if wantErr[i] == nil && (r.Err != nil || r.Entry == nil) {
				t.Fatalf("write %d: %v, want it made", i, r.Err)
			}
			if wantErr[i] != nil && !errors.Is(r.Err, wantErr[i]) {
				t.Fatalf("write %d: %v, want %v", i, r.Err, wantErr[i])
			}
		}
		if res[4].Entry.ID != existing.ID {
			t.Fatalf("a delete returns the entry removed: %+v", res[4].Entry)
		}
		b0 := res[2].Entry
		b0.Hint = "moved"
		b0.ParentID = "spiffe://td/agent/x"
		up, err := s.WriteEntries(ctx, []datastore.EntryWrite{{Update: b0}, {Update: &datastore.Entry{ID: "gone", SPIFFEID: "spiffe://td/z", ParentID: "p"}}})
		if err != nil || up[0].Err != nil || up[0].Entry.Revision != 2 || !errors.Is(up[1].Err, datastore.ErrNotFound) {
			t.Fatalf("batch update: %+v, %v", up, err)
		}
		if got, _, _ := s.ListEntriesByParent(ctx, "spiffe://td/agent/x", "", 10); len(got) != 3 {
			t.Errorf("parent x lists %d entries, want 3 (a, taken again, b moved in)", len(got))
		}
		if got, _, _ := s.ListEntriesByParent(ctx, "spiffe://td/agent/y", "", 10); len(got) != 0 {
			t.Errorf("parent y lists %d entries, want 0", len(got))
		}
		// Every change made reaches a watcher: 4 of the first batch, 1 update.
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		seen := 0
		err = s.WatchEntries(wctx, current, func(changes []datastore.EntryChange, _ uint64) error {
			seen += len(changes)
			if seen >= 5 {
				return errStopWatch
			}
			return nil
		})
		if !errors.Is(err, errStopWatch) || seen != 5 {
			t.Fatalf("watch saw %d changes (%v), want 5", seen, err)
		}
	})
}

var errStopWatch = errors.New("stop")

// An entry whose identity (SPIFFE ID, parent, selectors) is longer than
// bbolt's largest key (32 KiB; entries may be 64 KiB) is stored, found as a
// duplicate, updated and deleted like any other.
func TestEntryWithAnIdentityLongerThanAKey(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		s := b.handle(t)
		ctx := context.Background()
		big := entry("spiffe://td/big", "spiffe://td/agent/x")
		for k := range 12 {
			big.Selectors = append(big.Selectors, attest.Selector{Type: "unix", Value: fmt.Sprintf("path:/%d/%s", k, strings.Repeat("p", 3000))})
		}
		e, err := s.CreateEntry(ctx, big)
		if err != nil {
			t.Fatalf("create: %v", err)
		}
		if _, err := s.CreateEntry(ctx, big); !errors.Is(err, datastore.ErrAlreadyExists) {
			t.Fatalf("duplicate: %v, want ErrAlreadyExists", err)
		}
		e.Hint = "updated"
		if _, err := s.UpdateEntry(ctx, e); err != nil {
			t.Fatalf("update: %v", err)
		}
		if err := s.DeleteEntry(ctx, e.ID); err != nil {
			t.Fatalf("delete: %v", err)
		}
		if _, err := s.CreateEntry(ctx, big); err != nil {
			t.Fatalf("create again after the delete: %v", err)
		}
	})
}

func TestListEntriesByParentPagesExactly(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		s := b.handle(t)
		ctx := context.Background()
		const n = 1050
		for i := range n {
			if _, err := s.CreateEntry(ctx, entry(fmt.Sprintf("spiffe://td/w%d", i), "spiffe://td/agent/a")); err != nil {
				t.Fatal(err)
			}
			// Interleave another agent's entries: they must never leak in.
			if i%3 == 0 {
				if _, err := s.CreateEntry(ctx, entry(fmt.Sprintf("spiffe://td/b%d", i), "spiffe://td/agent/a2")); err != nil {
					t.Fatal(err)
				}
			}
		}
		seen := map[string]bool{}
		token := ""
		pages := 0
		for {
			page, next, err := s.ListEntriesByParent(ctx, "spiffe://td/agent/a", token, 100)
			if err != nil {
				t.Fatal(err)
			}
			pages++
			for _, e := range page {
				if e.ParentID != "spiffe://td/agent/a" || seen[e.ID] {
					t.Fatalf("page %d: entry %s of %s (seen %v)", pages, e.ID, e.ParentID, seen[e.ID])
				}
				seen[e.ID] = true
			}
			if next == "" {
				break
			}
			token = next
		}
		if len(seen) != n || pages != 11 {
			t.Fatalf("got %d entries in %d pages, want %d in 11", len(seen), pages, n)
		}
	})
}

func TestJoinTokenAttestationIsAtomicAndSingleUse(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		s := b.handle(t)
		ctx := context.Background()
		now := time.Now()
		hash := []byte("0123456789abcdef0123456789abcdef")
		if err := s.CreateJoinToken(ctx, &datastore.JoinToken{ID: "t1", SecretHash: hash, ExpiresAt: now.Add(time.Minute)}); err != nil {
			t.Fatal(err)
		}
		agent := &datastore.Agent{SPIFFEID: "spiffe://td/agent/join_token/t1"}
		if err := s.AttestJoinToken(ctx, "t1", []byte("wrong-hash-wrong-hash-wrong-hash"), now, agent); !errors.Is(err, datastore.ErrTokenInvalid) {
			t.Fatalf("wrong secret: %v", err)
		}
		if _, err := s.GetAgent(ctx, agent.SPIFFEID); !errors.Is(err, datastore.ErrNotFound) {
			t.Fatal("a failed attestation created an agent")
		}
		if err := s.AttestJoinToken(ctx, "t1", hash, now, agent); err != nil {
			t.Fatalf("first use: %v", err)
		}
		if err := s.AttestJoinToken(ctx, "t1", hash, now, agent); !errors.Is(err, datastore.ErrTokenInvalid) {
			t.Fatalf("second use: %v", err)
		}

		// Expired: refused, and deleted all the same (it survives no reopen).
		if err := s.CreateJoinToken(ctx, &datastore.JoinToken{ID: "t2", SecretHash: hash, ExpiresAt: now.Add(-time.Second)}); err != nil {
			t.Fatal(err)
		}
		a2 := &datastore.Agent{SPIFFEID: "spiffe://td/agent/join_token/t2"}
		if err := s.AttestJoinToken(ctx, "t2", hash, now, a2); !errors.Is(err, datastore.ErrTokenExpired) {
			t.Fatalf("expired: %v", err)
		}
		s2 := b.reopen(t, s)
		if err := s2.AttestJoinToken(ctx, "t2", hash, now.Add(-time.Hour), a2); !errors.Is(err, datastore.ErrTokenInvalid) {
			t.Fatalf("expired token after reopen: %v, want it gone", err)
		}
		if _, err := s2.GetAgent(ctx, agent.SPIFFEID); err != nil {
			t.Fatalf("attested agent after reopen: %v", err)
		}
	})
}

func TestEvictedAgentIsNotRecreatedByUpdate(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		s := b.handle(t)
		ctx := context.Background()
		hash := []byte("h")
		_ = s.CreateJoinToken(ctx, &datastore.JoinToken{ID: "t", SecretHash: hash, ExpiresAt: time.Now().Add(time.Minute)})
		a := &datastore.Agent{SPIFFEID: "spiffe://td/agent/join_token/t"}
		if err := s.AttestJoinToken(ctx, "t", hash, time.Now(), a); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteAgent(ctx, a.SPIFFEID); err != nil {
			t.Fatal(err)
		}
		if _, err := s.UpdateAgent(ctx, a.SPIFFEID, func(*datastore.Agent) error { return nil }); !errors.Is(err, datastore.ErrNotFound) {
			t.Fatalf("update after eviction: %v, want ErrNotFound", err)
		}
	})
}

// A node that re-attests keeps its agent record (creation time) with the new
// attestation's selectors and no SVID serial; a banned one is refused and
// its record left as it was.
func TestReattestationAndBan(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		s := b.handle(t)
		ctx := context.Background()
		id := "spiffe://td/agent/x509pop/0123"
		first := time.Unix(1000, 0).UTC()
		a, err := s.AttestAgent(ctx, &datastore.Agent{SPIFFEID: id, AttestationType: "x509pop", CreatedAt: first,
			Selectors: []attest.Selector{{Type: "x509pop", Value: "subject:cn:a"}}})
		if err != nil || !a.CreatedAt.Equal(first) {
			t.Fatalf("first attestation: %+v, %v", a, err)
		}
		if _, err := s.UpdateAgent(ctx, id, func(a *datastore.Agent) error { a.SerialNumber = "01"; return nil }); err != nil {
			t.Fatal(err)
		}
		a, err = s.AttestAgent(ctx, &datastore.Agent{SPIFFEID: id, AttestationType: "x509pop", CreatedAt: first.Add(time.Hour),
			Selectors: []attest.Selector{{Type: "x509pop", Value: "subject:cn:b"}}})
		if err != nil {
			t.Fatal(err)
		}
		if !a.CreatedAt.Equal(first) || a.SerialNumber != "" || a.Selectors[0].Value != "subject:cn:b" {
			t.Fatalf("re-attested record: %+v", a)
		}
		if _, err := s.UpdateAgent(ctx, id, func(a *datastore.Agent) error { a.Banned = true; return nil }); err != nil {
			t.Fatal(err)
		}
		if _, err := s.AttestAgent(ctx, &datastore.Agent{SPIFFEID: id, AttestationType: "x509pop"}); !errors.Is(err, datastore.ErrAgentBanned) {
			t.Fatalf("attestation of a banned agent: %v, want ErrAgentBanned", err)
		}
		got, err := s.GetAgent(ctx, id)
		if err != nil || !got.Banned || got.Selectors[0].Value != "subject:cn:b" {
			t.Fatalf("banned record after a refused attestation: %+v, %v", got, err)
		}
	})
}

// The CA journal: a cluster record and one record per replica, every write
// comparing the revisions read, so a stale write changes nothing.
func TestCAJournalComparesRevisions(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		s := b.handle(t)
		ctx := context.Background()
		empty, err := s.LoadCAJournal(ctx)
		if err != nil || empty.Cluster.Data != nil || empty.Cluster.Revision != 0 || len(empty.Replicas) != 0 {
			t.Fatalf("empty store: %+v, %v", empty, err)
		}
		rev, err := s.SaveCAJournal(ctx, ca.JournalWrite{ReplicaID: "a",
			Cluster: &ca.JournalRecord{Data: []byte(`{"c":1}`)}, Replica: &ca.JournalRecord{Data: []byte(`{"a":1}`)}})
		if err != nil || rev == 0 {
			t.Fatalf("first save: %d, %v", rev, err)
		}
		if _, err := s.SaveCAJournal(ctx, ca.JournalWrite{ReplicaID: "b", Replica: &ca.JournalRecord{Data: []byte(`{"b":1}`)}}); err != nil {
			t.Fatal(err)
		}
		got, err := s.LoadCAJournal(ctx)
		if err != nil || string(got.Cluster.Data) != `{"c":1}` || got.Cluster.Revision != rev ||
			string(got.Replicas["a"].Data) != `{"a":1}` || string(got.Replicas["b"].Data) != `{"b":1}` || got.Replicas["b"].Revision <= rev {
			t.Fatalf("journal = %+v, %v", got, err)
		}
		// Stale revisions: of the cluster record, of a replica's, of a pruned one.
		for name, w := range map[string]ca.JournalWrite{
			"cluster":         {ReplicaID: "a", Cluster: &ca.JournalRecord{Data: []byte(`{"c":2}`), Revision: rev - 1}},
			"created twice":   {ReplicaID: "b", Replica: &ca.JournalRecord{Data: []byte(`{"b":2}`)}},
			"replica":         {ReplicaID: "a", Replica: &ca.JournalRecord{Data: []byte(`{"a":2}`), Revision: rev + 100}},
			"prune":           {ReplicaID: "a", Prune: map[string]int64{"b": rev}},
			"one of two good": {ReplicaID: "a", Cluster: &ca.JournalRecord{Data: []byte(`{"c":2}`), Revision: rev}, Prune: map[string]int64{"b": 1}},
		} {
			if _, err := s.SaveCAJournal(ctx, w); !errors.Is(err, ca.ErrJournalConflict) {
				t.Errorf("%s: stale write gave %v, want ErrJournalConflict", name, err)
			}
		}
		if _, err := s.SaveCAJournal(ctx, ca.JournalWrite{ReplicaID: "a", Cluster: &ca.JournalRecord{Revision: rev}}); err == nil {
			t.Error("saved an empty cluster record")
		}
		if again, _ := s.LoadCAJournal(ctx); string(again.Cluster.Data) != `{"c":1}` || len(again.Replicas) != 2 {
			t.Fatalf("refused writes changed the journal: %+v", again)
		}
		// A current write: the cluster record and a prune, together.
		if _, err := s.SaveCAJournal(ctx, ca.JournalWrite{ReplicaID: "a", Cluster: &ca.JournalRecord{Data: []byte(`{"c":2}`), Revision: rev},
			Prune: map[string]int64{"b": got.Replicas["b"].Revision}}); err != nil {
			t.Fatal(err)
		}
		if after, _ := s.LoadCAJournal(ctx); string(after.Cluster.Data) != `{"c":2}` || len(after.Replicas) != 1 {
			t.Fatalf("after prune: %+v", after)
		}
	})
}

func TestPurgeExpiredJoinTokens(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		s := b.handle(t)
		ctx := context.Background()
		now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		hash := []byte("h")
		for id, exp := range map[string]time.Time{"old": now.Add(-time.Hour), "edge": now, "live": now.Add(time.Minute)} {
			if err := s.CreateJoinToken(ctx, &datastore.JoinToken{ID: id, SecretHash: hash, ExpiresAt: exp}); err != nil {
				t.Fatal(err)
			}
		}
		n, err := s.PurgeExpiredJoinTokens(ctx, now)
		if err != nil || n != 2 {
			t.Fatalf("purged %d, %v; want 2 (expired and expiring now)", n, err)
		}
		err = s.AttestJoinToken(ctx, "live", hash, now, &datastore.Agent{SPIFFEID: "spiffe://example.org/agent/join_token/live"})
		if err != nil {
			t.Fatalf("the live token was lost: %v", err)
		}
		if n, err := s.PurgeExpiredJoinTokens(ctx, now); err != nil || n != 0 {
			t.Fatalf("second purge: %d, %v", n, err)
		}
	})
}

// A poll in flight never undoes an update: the refresh outcome of a fetch
// made with the settings read before the update is refused whole (status
// and bundle), and the update stands.
func TestFederationRefreshDoesNotUndoAnUpdate(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		s := b.handle(t)
		ctx := context.Background()
		f := &datastore.Federation{TrustDomain: "other.org", URL: "https://a", Profile: "https_web", WebRootsPEM: []byte("old roots")}
		if err := s.PutFederation(ctx, f, true); err != nil {
			t.Fatal(err)
		}
		read, err := s.GetFederation(ctx, "other.org") // the poller reads, then fetches...
		if err != nil {
			t.Fatal(err)
		}
		updated := *read
		updated.WebRootsPEM = nil // ...while an admin removes the Web roots
		if err := s.PutFederation(ctx, &updated, false); err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		if err := s.RecordFederationRefresh(ctx, read, []byte(`{"keys":[]}`), now, ""); !errors.Is(err, datastore.ErrChanged) {
			t.Fatalf("recording a fetch made with the old settings: %v, want ErrChanged", err)
		}
		got, _ := s.GetFederation(ctx, "other.org")
		if got.WebRootsPEM != nil || !got.LastRefresh.IsZero() {
			t.Fatalf("the update was undone or the stale outcome recorded: %+v", got)
		}
		if _, err := s.GetFederatedBundle(ctx, "other.org"); !errors.Is(err, datastore.ErrNotFound) {
			t.Fatalf("a bundle fetched under the old settings was stored: %v", err)
		}
		// With the current settings the outcome is recorded.
		if err := s.RecordFederationRefresh(ctx, got, []byte(`{"keys":[]}`), now, ""); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.GetFederation(ctx, "other.org"); !got.LastRefresh.Equal(now) {
			t.Fatalf("LastRefresh = %v, want %v", got.LastRefresh, now)
		}
	})
}

// Replicas racing with one join token: exactly one attests, every other is
// told the token is used, and one agent record exists.
func TestJoinTokenRaceHasOneWinner(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		hash := []byte("h")
		if err := b.handle(t).CreateJoinToken(ctx, &datastore.JoinToken{ID: "race", SecretHash: hash, ExpiresAt: time.Now().Add(time.Minute)}); err != nil {
			t.Fatal(err)
		}
		const replicas = 8
		handles := make([]store, replicas)
		for i := range handles {
			handles[i] = b.handle(t)
		}
		errs := make([]error, replicas)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i, h := range handles {
			wg.Go(func() {
				<-start
				errs[i] = h.AttestJoinToken(ctx, "race", hash, time.Now(), &datastore.Agent{SPIFFEID: "spiffe://td/agent/join_token/race", SerialNumber: fmt.Sprint(i)})
			})
		}
		close(start)
		wg.Wait()
		winners := 0
		for i, err := range errs {
			switch {
			case err == nil:
				winners++
			case !errors.Is(err, datastore.ErrTokenInvalid):
				t.Errorf("replica %d: %v, want ErrTokenInvalid", i, err)
			}
		}
		if winners != 1 {
			t.Fatalf("%d replicas attested with one token, want exactly 1", winners)
		}
		if agents, _ := handles[0].ListAgents(ctx); len(agents) != 1 {
			t.Fatalf("%d agent records, want 1", len(agents))
		}
	})
}

// Concurrent updates of one agent from several replicas each apply their
// change to the latest record: none is lost.
func TestConcurrentAgentUpdatesLoseNothing(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		s := b.handle(t)
		hash := []byte("h")
		_ = s.CreateJoinToken(ctx, &datastore.JoinToken{ID: "t", SecretHash: hash, ExpiresAt: time.Now().Add(time.Minute)})
		id := "spiffe://td/agent/join_token/t"
		if err := s.AttestJoinToken(ctx, "t", hash, time.Now(), &datastore.Agent{SPIFFEID: id}); err != nil {
			t.Fatal(err)
		}
		const replicas, updates = 4, 25
		var wg sync.WaitGroup
		for r := range replicas {
			h := b.handle(t)
			wg.Go(func() {
				for i := range updates {
					_, err := h.UpdateAgent(ctx, id, func(a *datastore.Agent) error {
						a.BundleSequence++
						a.SignerKeyIDs = append(a.SignerKeyIDs, fmt.Sprintf("%d-%d", r, i))
						return nil
					})
					if err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		got, err := s.GetAgent(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if got.BundleSequence != replicas*updates || len(got.SignerKeyIDs) != replicas*updates {
			t.Fatalf("after %d updates: sequence %d, %d signer IDs; updates were lost", replicas*updates, got.BundleSequence, len(got.SignerKeyIDs))
		}
		// A change that fails writes nothing.
		refused := errors.New("refused")
		if _, err := s.UpdateAgent(ctx, id, func(a *datastore.Agent) error { a.BundleSequence = 0; return refused }); !errors.Is(err, refused) {
			t.Fatalf("failing change: %v", err)
		}
		if got, _ := s.GetAgent(ctx, id); got.BundleSequence != replicas*updates {
			t.Fatal("a failing change was written")
		}
	})
}

// Two replicas moving one entry to different identities at once: one
// identity wins, and the indexes agree with it (the loser's identity is
// free, the winner's taken, the entry listed under its parent only).
func TestConcurrentEntryUpdatesKeepIndexesConsistent(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		s := b.handle(t)
		e, err := s.CreateEntry(ctx, entry("spiffe://td/w", "spiffe://td/agent/p0"))
		if err != nil {
			t.Fatal(err)
		}
		const replicas = 6
		var wg sync.WaitGroup
		for r := range replicas {
			h := b.handle(t)
			wg.Go(func() {
				up := *e
				up.ParentID = fmt.Sprintf("spiffe://td/agent/p%d", r+1)
				if _, err := h.UpdateEntry(ctx, &up); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		final, err := s.GetEntry(ctx, e.ID)
		if err != nil {
			t.Fatal(err)
		}
		if final.Revision != replicas+1 {
			t.Errorf("revision %d after %d updates, want %d", final.Revision, replicas, replicas+1)
		}
		for p := range replicas + 1 {
			parent := fmt.Sprintf("spiffe://td/agent/p%d", p)
			listed, _, err := s.ListEntriesByParent(ctx, parent, "", 10)
			if err != nil {
				t.Fatal(err)
			}
			want := 0
			if parent == final.ParentID {
				want = 1
			}
			if len(listed) != want {
				t.Errorf("%s lists %d entries, want %d", parent, len(listed), want)
			}
			_, err = s.CreateEntry(ctx, entry("spiffe://td/w", parent))
			if taken := parent == final.ParentID; taken != errors.Is(err, datastore.ErrAlreadyExists) {
				t.Errorf("create under %s: %v (identity taken: %v)", parent, err, taken)
			}
		}
	})
}

// The entries revision: a change to a parent's entries raises its revision
// past every revision read before; other parents keep theirs.
func TestEntriesRevisionTracksEachParent(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		s := b.handle(t)
		a, other := "spiffe://td/agent/a", "spiffe://td/agent/b"
		if _, err := s.CreateEntry(ctx, entry("spiffe://td/x", other)); err != nil {
			t.Fatal(err)
		}
		cur0, parent0, err := s.EntriesRevision(ctx, a)
		if err != nil || parent0 != 0 || cur0 == 0 {
			t.Fatalf("before any entry of a: current %d, a %d, %v", cur0, parent0, err)
		}
		e, err := s.CreateEntry(ctx, entry("spiffe://td/y", a))
		if err != nil {
			t.Fatal(err)
		}
		cur1, parent1, _ := s.EntriesRevision(ctx, a)
		_, otherRev1, _ := s.EntriesRevision(ctx, other)
		if parent1 <= cur0 || cur1 < parent1 {
			t.Fatalf("after create: a %d, current %d (was %d)", parent1, cur1, cur0)
		}
		e.Hint = "changed"
		if _, err := s.UpdateEntry(ctx, e); err != nil {
			t.Fatal(err)
		}
		_, parent2, _ := s.EntriesRevision(ctx, a)
		if parent2 <= cur1 {
			t.Fatalf("after update: a %d, want above %d", parent2, cur1)
		}
		if err := s.DeleteEntry(ctx, e.ID); err != nil {
			t.Fatal(err)
		}
		cur3, parent3, _ := s.EntriesRevision(ctx, a)
		_, otherRev3, _ := s.EntriesRevision(ctx, other)
		if parent3 <= parent2 || cur3 < parent3 {
			t.Fatalf("after delete: a %d (was %d), current %d", parent3, parent2, cur3)
		}
		if otherRev3 != otherRev1 {
			t.Fatalf("another parent's revision moved: %d -> %d", otherRev1, otherRev3)
		}
	})
}

func TestListEntriesPagesEveryEntryOnce(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		s := b.handle(t)
		const n = 25
		for i := range n {
			if _, err := s.CreateEntry(ctx, entry(fmt.Sprintf("spiffe://td/w%d", i), fmt.Sprintf("spiffe://td/agent/%d", i%3))); err != nil {
				t.Fatal(err)
			}
		}
		seen := map[string]bool{}
		token := ""
		for {
			page, next, err := s.ListEntries(ctx, token, 7)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range page {
				if seen[e.ID] {
					t.Fatalf("%s listed twice", e.ID)
				}
				seen[e.ID] = true
			}
			if next == "" {
				break
			}
			token = next
		}
		if len(seen) != n {
			t.Fatalf("listed %d entries, want %d", len(seen), n)
		}
	})
}

func TestFederationRecords(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		s := b.handle(t)
		f := &datastore.Federation{TrustDomain: "other.org", URL: "https://a", Profile: "https_web"}
		if err := s.PutFederation(ctx, f, false); !errors.Is(err, datastore.ErrNotFound) {
			t.Fatalf("update of a missing relationship: %v", err)
		}
		if err := s.PutFederation(ctx, f, true); err != nil {
			t.Fatal(err)
		}
		if err := s.PutFederation(ctx, f, true); !errors.Is(err, datastore.ErrAlreadyExists) {
			t.Fatalf("second create: %v", err)
		}
		if err := s.SetFederatedBundle(ctx, "other.org", []byte("b1")); err != nil {
			t.Fatal(err)
		}
		if got, err := s.ListFederatedBundles(ctx); err != nil || len(got) != 1 || got[0].TrustDomain != "other.org" || string(got[0].Raw) != "b1" {
			t.Fatalf("bundles: %+v, %v", got, err)
		}
		// Refreshes recorded by several replicas at once all land.
		var wg sync.WaitGroup
		for range 4 {
			h := b.handle(t)
			wg.Go(func() {
				if err := h.RecordFederationRefresh(ctx, f, []byte("b2"), time.Now(), ""); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if got, _ := s.GetFederatedBundle(ctx, "other.org"); string(got) != "b2" {
			t.Fatalf("bundle %q after refresh", got)
		}
		if list, err := s.ListFederations(ctx); err != nil || len(list) != 1 || list[0].LastRefresh.IsZero() {
			t.Fatalf("relationships: %+v, %v", list, err)
		}
		if err := s.DeleteFederation(ctx, "other.org"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.GetFederatedBundle(ctx, "other.org"); !errors.Is(err, datastore.ErrNotFound) {
			t.Fatalf("bundle outlived its relationship: %v", err)
		}
		if err := s.DeleteFederation(ctx, "other.org"); !errors.Is(err, datastore.ErrNotFound) {
			t.Fatalf("delete twice: %v", err)
		}
		if err := s.DeleteFederatedBundle(ctx, "other.org"); !errors.Is(err, datastore.ErrNotFound) {
			t.Fatalf("delete missing bundle: %v", err)
		}
	})
}

// A datastore copied from bbolt to etcd and back holds the same records,
// which work as before in the new store: indexes, uniqueness, tokens.
func TestMigrateBetweenBackends(t *testing.T) {
	ctx := context.Background()
	src, err := datastore.Open(filepath.Join(t.TempDir(), "src.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	parent := "spiffe://td/agent/a"
	for i := range 150 { // more than one etcd transaction's worth
		if _, err := src.CreateEntry(ctx, entry(fmt.Sprintf("spiffe://td/w%d", i), parent)); err != nil {
			t.Fatal(err)
		}
	}
	hash := []byte("h")
	for _, id := range []string{"used", "unused"} {
		if err := src.CreateJoinToken(ctx, &datastore.JoinToken{ID: id, SecretHash: hash, ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := src.AttestJoinToken(ctx, "used", hash, time.Now(), &datastore.Agent{SPIFFEID: parent, SerialNumber: "01"}); err != nil {
		t.Fatal(err)
	}
	_, _ = src.SaveCAJournal(ctx, ca.JournalWrite{ReplicaID: "a", Cluster: &ca.JournalRecord{Data: []byte(`{"version":2}`)},
		Replica: &ca.JournalRecord{Data: []byte(`{"version":2,"authorities":[]}`)}})
	_ = src.PutFederation(ctx, &datastore.Federation{TrustDomain: "other.org", URL: "https://x", Profile: "https_web"}, true)
	_ = src.SetFederatedBundle(ctx, "other.org", []byte(`{"keys":[]}`))
	want, err := src.Export(ctx)
	if err != nil {
		t.Fatal(err)
	}

	dst, err := datastore.OpenEtcd(ctx, datastore.EtcdConfig{Endpoints: sharedEtcd.Endpoints(), Prefix: "/test/" + randomHex() + "/"})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if err := dst.Import(ctx, want); err != nil {
		t.Fatal(err)
	}
	if err := dst.Import(ctx, want); !errors.Is(err, datastore.ErrNotEmpty) {
		t.Fatalf("import into a filled prefix: %v, want ErrNotEmpty", err)
	}
	got, err := dst.Export(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sameSnapshot(t, "bbolt -> etcd", want, got)
	// The copy works: its parent index, identity index and tokens.
	if page, _, err := dst.ListEntriesByParent(ctx, parent, "", 1000); err != nil || len(page) != 150 {
		t.Fatalf("entries of %s in etcd: %d, %v", parent, len(page), err)
	}
	if _, err := dst.CreateEntry(ctx, entry("spiffe://td/w7", parent)); !errors.Is(err, datastore.ErrAlreadyExists) {
		t.Fatalf("duplicate of a copied entry: %v", err)
	}
	if err := dst.AttestJoinToken(ctx, "unused", hash, time.Now(), &datastore.Agent{SPIFFEID: "spiffe://td/agent/b"}); err != nil {
		t.Fatalf("copied unused token: %v", err)
	}

	back, err := datastore.Open(filepath.Join(t.TempDir(), "back.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	if err := back.Import(ctx, want); err != nil {
		t.Fatal(err)
	}
	if err := back.Import(ctx, want); !errors.Is(err, datastore.ErrNotEmpty) {
		t.Fatalf("import into a filled bbolt file: %v", err)
	}
	again, _ := back.Export(ctx)
	sameSnapshot(t, "etcd snapshot -> bbolt", want, again)
}

func sameSnapshot(t *testing.T, what string, want, got *datastore.Snapshot) {
	t.Helper()
	norm := func(s *datastore.Snapshot) string {
		slices.SortFunc(s.Entries, func(a, b *datastore.Entry) int { return strings.Compare(a.ID, b.ID) })
		raw, _ := json.Marshal(s)
		return string(raw)
	}
	if w, g := norm(want), norm(got); w != g {
		t.Fatalf("%s: the copy differs\nwant %.400s\ngot  %.400s", what, w, g)
	}
}

// Sync times recorded in a batch: raised, never lowered, evicted agents
// skipped, and a concurrent update of the same agents (a renewal on another
// replica) is not undone.
func TestRecordLastSeenInBatches(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		s := b.handle(t)
		hash := []byte("h")
		base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		const n = 150 // more than one etcd transaction's worth
		var ids []string
		for i := range n {
			tok := fmt.Sprintf("t%03d", i)
			id := "spiffe://td/agent/join_token/" + tok
			if err := s.CreateJoinToken(ctx, &datastore.JoinToken{ID: tok, SecretHash: hash, ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
				t.Fatal(err)
			}
			if err := s.AttestJoinToken(ctx, tok, hash, time.Now(), &datastore.Agent{SPIFFEID: id, LastSeen: base}); err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
		if err := s.DeleteAgent(ctx, ids[0]); err != nil { // evicted meanwhile
			t.Fatal(err)
		}
		seen := map[string]time.Time{}
		for i, id := range ids {
			seen[id] = base.Add(time.Minute)
			if i == 1 {
				seen[id] = base.Add(-time.Minute) // older than stored: ignored
			}
		}
		// A replica renews agents while another records sync times.
		var wg sync.WaitGroup
		h := b.handle(t)
		wg.Go(func() {
			for _, id := range ids[2:40] {
				if _, err := h.UpdateAgent(ctx, id, func(a *datastore.Agent) error { a.NewSerialNumber = "renewed"; return nil }); err != nil {
					t.Error(err)
				}
			}
		})
		written, err := s.RecordLastSeen(ctx, seen)
		wg.Wait()
		if err != nil || written != n-2 {
			t.Fatalf("wrote %d, %v; want %d (one evicted, one older)", written, err, n-2)
		}
		agents, _ := s.ListAgents(ctx)
		if len(agents) != n-1 {
			t.Fatalf("%d agents: an evicted one was recreated", len(agents))
		}
		for _, a := range agents {
			want := base.Add(time.Minute)
			if a.SPIFFEID == ids[1] {
				want = base
			}
			if !a.LastSeen.Equal(want) {
				t.Fatalf("%s last seen %v, want %v", a.SPIFFEID, a.LastSeen, want)
			}
		}
		for _, id := range ids[2:40] {
			if a, _ := s.GetAgent(ctx, id); a.NewSerialNumber != "renewed" {
				t.Fatalf("%s: the concurrent renewal was undone", id)
			}
		}
	})
}

// Replicas on etcd: a replica ID is held by one process at a time, one
// replica leads, a crashed leader's lease ends and another takes over, and
// from then on the crashed one's writes are refused by etcd: its leader
// duties, and its own record.
func TestEtcdReplicasFenceTheJournal(t *testing.T) {
	ctx := context.Background()
	cfg := datastore.EtcdConfig{Endpoints: sharedEtcd.Endpoints(), Prefix: "/test/" + randomHex() + "/", LockTTL: 2 * time.Second}
	open := func() *datastore.Etcd {
		s, err := datastore.OpenEtcd(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	a, b := open(), open()
	if _, _, err := a.JoinCluster(ctx, "a", time.Second); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.JoinCluster(ctx, "b", time.Second); err != nil {
		t.Fatal(err)
	}
	if _, _, err := open().JoinCluster(ctx, "a", 500*time.Millisecond); err == nil || !strings.Contains(err.Error(), `another shortleaf server runs as replica "a"`) {
		t.Fatalf("a second process as replica a: %v", err)
	}
	// Both campaign in the background: either may win, but only one.
	waitFor(t, func() bool { return a.IsLeader() || b.IsLeader() })
	leader, follower, leaderID, followerID := a, b, "a", "b"
	if b.IsLeader() {
		leader, follower, leaderID, followerID = b, a, "b", "a"
	}
	if follower.IsLeader() {
		t.Fatal("two leaders")
	}
	if id, err := follower.LeaderID(ctx); err != nil || id != leaderID {
		t.Fatalf("leader seen from %s: %q, %v", followerID, id, err)
	}
	if live, err := follower.LiveReplicas(ctx); err != nil || strings.Join(live, ",") != "a,b" {
		t.Fatalf("live replicas: %v, %v", live, err)
	}
	record := func(data string, rev int64) *ca.JournalRecord {
		return &ca.JournalRecord{Data: []byte(data), Revision: rev}
	}
	term, _ := leader.Leadership()
	if _, err := leader.SaveCAJournal(ctx, ca.JournalWrite{ReplicaID: leaderID, Leader: true, LeaderTerm: term - 1, Cluster: record(`{"by":"leader"}`, 0)}); !errors.Is(err, ca.ErrNotLeader) {
		t.Fatalf("a leader duty decided in another term: %v", err)
	}
	rev, err := leader.SaveCAJournal(ctx, ca.JournalWrite{ReplicaID: leaderID, Leader: true, LeaderTerm: term, Cluster: record(`{"by":"leader"}`, 0)})
	if err != nil {
		t.Fatalf("the leader's write: %v", err)
	}
	if _, err := follower.SaveCAJournal(ctx, ca.JournalWrite{ReplicaID: followerID, Leader: true, LeaderTerm: term, Cluster: record(`{"by":"follower"}`, rev)}); !errors.Is(err, ca.ErrNotLeader) {
		t.Fatalf("a leader duty by a replica that does not lead: %v", err)
	}
	if _, err := follower.SaveCAJournal(ctx, ca.JournalWrite{ReplicaID: leaderID, Replica: record(`{}`, 0)}); err == nil {
		t.Fatal("one replica wrote another's record")
	}

	// The leader "crashes": its lease is revoked as if it had expired.
	if _, err := sharedEtcd.Client(t).Revoke(ctx, leaseOf(t, cfg.Prefix, leaderID)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return follower.IsLeader() })
	if _, err := leader.SaveCAJournal(ctx, ca.JournalWrite{ReplicaID: leaderID, Leader: true, LeaderTerm: term, Cluster: record(`{"by":"stale leader"}`, rev)}); err == nil {
		t.Fatal("the deposed leader's write was accepted")
	}
	newTerm, _ := follower.Leadership()
	if newTerm <= term {
		t.Fatalf("the new leader's term %d does not follow the old one's, %d", newTerm, term)
	}
	if _, err := leader.SaveCAJournal(ctx, ca.JournalWrite{ReplicaID: leaderID, Replica: record(`{"by":"stale leader"}`, 0)}); !errors.Is(err, datastore.ErrReplicaLeaseLost) {
		t.Fatalf("a write by the replica whose lease ended: %v, want ErrReplicaLeaseLost", err)
	}
	if _, err := follower.SaveCAJournal(ctx, ca.JournalWrite{ReplicaID: followerID, Leader: true, LeaderTerm: newTerm, Cluster: record(`{"by":"new leader"}`, rev)}); err != nil {
		t.Fatalf("the new leader's write: %v", err)
	}
	state, err := follower.LoadCAJournal(ctx)
	if err != nil || string(state.Cluster.Data) != `{"by":"new leader"}` || len(state.Replicas) != 0 || !state.Live[followerID] || state.Live[leaderID] {
		t.Fatalf("journal after the takeover: %+v, %v", state, err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 15s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// leaseOf returns the lease of replica id under prefix.
func leaseOf(t *testing.T, prefix, id string) clientv3.LeaseID {
	t.Helper()
	resp, err := sharedEtcd.Client(t).Get(context.Background(), prefix+"replicas/"+id)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("replica keys: %v, %v", resp, err)
	}
	return clientv3.LeaseID(resp.Kvs[0].Lease)
}
