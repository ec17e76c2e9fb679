package entryfeed_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/pkg/datastore"
	"github.com/shortleaf/shortleaf/pkg/entryfeed"
)

const (
	agentA = "spiffe://td/agent/a"
	agentB = "spiffe://td/agent/b"
)

// run starts a feed on a fresh bbolt store and returns both.
func run(t *testing.T, cfg entryfeed.Config) (*entryfeed.Feed, *datastore.Bolt, context.CancelFunc) {
	t.Helper()
	store, err := datastore.Open(filepath.Join(t.TempDir(), "ds.db"))
	if err != nil {
		t.Fatal(err)
	}
	feed := entryfeed.New(store, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = feed.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; store.Close() })
	return feed, store, cancel
}

func create(t *testing.T, store *datastore.Bolt, id, parent string) *datastore.Entry {
	t.Helper()
	e, err := store.CreateEntry(context.Background(), &datastore.Entry{SPIFFEID: id, ParentID: parent,
		Selectors: []attest.Selector{{Type: "unix", Value: "uid:1"}}, X509SVIDTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func subscribe(t *testing.T, feed *entryfeed.Feed, agent string, after uint64) (*entryfeed.Subscription, []datastore.EntryChange, bool) {
	t.Helper()
	sub, backlog, _, ok, err := feed.Subscribe(context.Background(), entryfeed.NewParents(agent), after)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Close)
	return sub, backlog, ok
}

// next waits for the subscription's next changes.
func next(t *testing.T, sub *entryfeed.Subscription) ([]datastore.EntryChange, bool) {
	t.Helper()
	select {
	case <-sub.Ready():
		return sub.Next()
	case <-time.After(10 * time.Second):
		t.Fatal("no change within 10s")
		return nil, false
	}
}

func ids(changes []datastore.EntryChange) []string {
	var out []string
	for _, c := range changes {
		out = append(out, c.Entry.ID)
	}
	return out
}

func TestFeedRoutesChangesToTheAgentsTheyConcern(t *testing.T) {
	feed, store, _ := run(t, entryfeed.Config{})
	subA, _, _ := subscribe(t, feed, agentA, 0)
	subB, _, _ := subscribe(t, feed, agentB, 0)

	e := create(t, store, "spiffe://td/w1", agentA)
	if got, lost := next(t, subA); lost || len(got) != 1 || got[0].Entry.ID != e.ID {
		t.Fatalf("agent a got %v (lost %v), want the creation of %s", ids(got), lost, e.ID)
	}
	// Moving the entry concerns both agents: a drops it, b gains it.
	moved := *e
	moved.ParentID = agentB
	if _, err := store.UpdateEntry(context.Background(), &moved); err != nil {
		t.Fatal(err)
	}
	for name, sub := range map[string]*entryfeed.Subscription{"a": subA, "b": subB} {
		got, lost := next(t, sub)
		if lost || len(got) != 1 || got[0].OldParentID != agentA || got[0].Entry.ParentID != agentB {
			t.Fatalf("agent %s got %+v (lost %v), want the move", name, got, lost)
		}
	}
	// A change under b only does not wake a.
	create(t, store, "spiffe://td/w2", agentB)
	next(t, subB)
	select {
	case <-subA.Ready():
		t.Fatalf("agent a was woken by a change to b's entries: %v", ids(first(subA.Next())))
	default:
	}
	if rev, ok := subA.CaughtUp(); !ok || rev == 0 {
		t.Fatalf("agent a caught up: %d, %v", rev, ok)
	}
}

func first(c []datastore.EntryChange, _ bool) []datastore.EntryChange { return c }

func TestFeedResumesFromItsHistoryOrSaysItCannot(t *testing.T) {
	feed, store, _ := run(t, entryfeed.Config{History: 3})
	// Wait for the feed to start, then write six entries: at twice the
	// history the feed trims it to the last three.
	sub, _, _ := subscribe(t, feed, agentA, 0)
	var revs []uint64
	var entries []*datastore.Entry
	for _, w := range []string{"w0", "w1", "w2", "w3", "w4", "w5"} {
		parent := agentA
		if w == "w4" {
			parent = agentB
		}
		entries = append(entries, create(t, store, "spiffe://td/"+w, parent))
		_, rev, err := store.EntriesRevision(context.Background(), parent)
		if err != nil {
			t.Fatal(err)
		}
		revs = append(revs, rev)
	}
	for caught := false; !caught; {
		next(t, sub)
		_, caught = sub.CaughtUp()
		if rev, _ := sub.CaughtUp(); rev < revs[5] {
			caught = false
		}
	}
	// The last three changes are kept: an agent holding the third
	// revision gets a's changes after it.
	_, backlog, ok := subscribe(t, feed, agentA, revs[2])
	if !ok || len(backlog) != 2 || backlog[0].Entry.ID != entries[3].ID || backlog[1].Entry.ID != entries[5].ID {
		t.Fatalf("resume from revision %d: ok %v, backlog %v; want %s and %s", revs[2], ok, ids(backlog), entries[3].ID, entries[5].ID)
	}
	// One holding the second revision is further back than the history.
	if _, backlog, ok := subscribe(t, feed, agentA, revs[1]); ok || backlog != nil {
		t.Fatalf("resume from revision %d beyond the history: ok %v, backlog %v", revs[1], ok, ids(backlog))
	}
	// An agent with nothing always reads afresh.
	if _, _, ok := subscribe(t, feed, agentA, 0); ok {
		t.Fatal("resume from revision 0 is ok; want a full read")
	}
}

func TestFeedDropsASubscriberThatFallsBehind(t *testing.T) {
	feed, store, _ := run(t, entryfeed.Config{Queue: 2})
	slow, _, _ := subscribe(t, feed, agentA, 0)
	fast, _, _ := subscribe(t, feed, agentA, 0)
	var got []string
	for _, w := range []string{"w1", "w2", "w3"} {
		e := create(t, store, "spiffe://td/"+w, agentA)
		for len(got) == 0 || got[len(got)-1] != e.ID {
			changes, lost := next(t, fast)
			if lost {
				t.Fatal("the subscriber that keeps up was dropped")
			}
			got = append(got, ids(changes)...)
		}
	}
	changes, lost := slow.Next()
	if !lost || len(changes) != 0 {
		t.Fatalf("slow subscriber: lost %v with %v; want lost with nothing", lost, ids(changes))
	}
	if _, ok := slow.CaughtUp(); ok {
		t.Fatal("a lost subscriber reports itself caught up")
	}
}

func TestFeedRefusesSubscribersOnceStopped(t *testing.T) {
	feed, _, cancel := run(t, entryfeed.Config{})
	sub, _, _ := subscribe(t, feed, agentA, 0)
	cancel()
	if _, lost := next(t, sub); !lost {
		t.Fatal("a subscriber is not told the feed stopped")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, _, _, _, err := feed.Subscribe(context.Background(), entryfeed.NewParents(agentA), 0)
		if errors.Is(err, entryfeed.ErrStopped) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("subscribe after stop: %v, want ErrStopped", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A subscriber of several parents (an agent and its node alias) gets the
// changes of each, and an entry moved between two of them once.
func TestFeedRoutesEachParentOfASubscriber(t *testing.T) {
	feed, store, _ := run(t, entryfeed.Config{})
	const alias = "spiffe://td/node-group/corp"
	sub, _, _, _, err := feed.Subscribe(context.Background(), entryfeed.NewParents(agentA, alias), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Close)
	create(t, store, "spiffe://td/w1", agentA)
	e := create(t, store, "spiffe://td/w2", alias)
	create(t, store, "spiffe://td/w3", agentB)
	var got []string
	for len(got) < 2 {
		changes, _ := next(t, sub)
		got = append(got, ids(changes)...)
	}
	if len(got) != 2 {
		t.Fatalf("got changes of %v, want w1 and w2 only", got)
	}
	e.ParentID = agentA
	if _, err := store.UpdateEntry(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	changes, _ := next(t, sub)
	if len(changes) != 1 || changes[0].Entry.ID != e.ID || !entryfeed.Concerns(changes[0], entryfeed.NewParents(alias)) {
		t.Fatalf("a move between two held parents came as %+v, want once", changes)
	}
}
