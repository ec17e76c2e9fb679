package datastore_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/shortleaf/shortleaf/pkg/datastore"
)

// watchInto runs WatchEntries from after in the background and returns the
// channel its changes arrive on and a function that ends it and returns its
// error.
func watchInto(t *testing.T, s store, after uint64) (<-chan datastore.EntryChange, func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan datastore.EntryChange, 100)
	done := make(chan error, 1)
	go func() {
		done <- s.WatchEntries(ctx, after, func(changes []datastore.EntryChange, _ uint64) error {
			for _, c := range changes {
				out <- c
			}
			return nil
		})
	}()
	var once sync.Once
	var err error
	stop := func() error {
		once.Do(func() { cancel(); err = <-done })
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return out, stop
}

func nextChange(t *testing.T, changes <-chan datastore.EntryChange) datastore.EntryChange {
	t.Helper()
	select {
	case c := <-changes:
		return c
	case <-time.After(15 * time.Second):
		t.Fatal("no entry change reported within 15s")
		return datastore.EntryChange{}
	}
}

func TestWatchEntriesReportsEveryChangeInOrder(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		s := b.handle(t)
		ctx := context.Background()
		start, _, err := s.EntriesRevision(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		live, stop := watchInto(t, s, start)

		e1, err := s.CreateEntry(ctx, entry("spiffe://td/w1", "spiffe://td/agent/a"))
		if err != nil {
			t.Fatal(err)
		}
		moved := *e1
		moved.ParentID = "spiffe://td/agent/b"
		if _, err := s.UpdateEntry(ctx, &moved); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteEntry(ctx, e1.ID); err != nil {
			t.Fatal(err)
		}
		e2, err := s.CreateEntry(ctx, entry("spiffe://td/w2", "spiffe://td/agent/a"))
		if err != nil {
			t.Fatal(err)
		}
		_, parentA, err := s.EntriesRevision(ctx, "spiffe://td/agent/a")
		if err != nil {
			t.Fatal(err)
		}

		check := func(t *testing.T, changes <-chan datastore.EntryChange) {
			t.Helper()
			got := make([]datastore.EntryChange, 4)
			for i := range got {
				got[i] = nextChange(t, changes)
			}
			if !slices.IsSortedFunc(got, func(a, b datastore.EntryChange) int { return int(a.Revision) - int(b.Revision) }) || got[0].Revision <= start {
				t.Fatalf("revisions not increasing from %d: %+v", start, got)
			}
			want := []struct {
				id, parent, oldParent string
				revision              int64
				deleted               bool
			}{
				{e1.ID, "spiffe://td/agent/a", "", 1, false},
				{e1.ID, "spiffe://td/agent/b", "spiffe://td/agent/a", 2, false},
				{e1.ID, "spiffe://td/agent/b", "", 2, true},
				{e2.ID, "spiffe://td/agent/a", "", 1, false},
			}
			for i, w := range want {
				c := got[i]
				if c.Entry.ID != w.id || c.Entry.ParentID != w.parent || c.OldParentID != w.oldParent || c.Entry.Revision != w.revision || c.Deleted != w.deleted {
					t.Errorf("change %d: got entry %s parent %s (was %q) revision %d deleted %v; want %+v",
						i, c.Entry.ID, c.Entry.ParentID, c.OldParentID, c.Entry.Revision, c.Deleted, w)
				}
			}
			// The parent's revision is the revision of its last change, so
			// an agent holding it can resume a watch from it.
			if got[3].Revision != parentA {
				t.Errorf("last change to agent a at revision %d, its entries revision says %d", got[3].Revision, parentA)
			}
		}
		check(t, live)
		if err := stop(); !errors.Is(err, context.Canceled) {
			t.Fatalf("watch ended with %v, want context.Canceled", err)
		}
		// A watch started now from the same revision replays the history.
		replay, _ := watchInto(t, s, start)
		check(t, replay)
	})
}

func TestWatchEntriesRefusesForgottenHistory(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		s := b.handle(t)
		ctx := context.Background()
		before, _, err := s.EntriesRevision(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.CreateEntry(ctx, entry("spiffe://td/w1", "spiffe://td/agent/a")); err != nil {
			t.Fatal(err)
		}
		s = b.forget(t, s)
		err = s.WatchEntries(ctx, before, func([]datastore.EntryChange, uint64) error { return errors.New("called") })
		if !errors.Is(err, datastore.ErrCompacted) {
			t.Fatalf("watch from before the history: %v, want ErrCompacted", err)
		}
		// From the current revision the watch works again.
		now, _, err := s.EntriesRevision(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		changes, _ := watchInto(t, s, now)
		e2, err := s.CreateEntry(ctx, entry("spiffe://td/w2", "spiffe://td/agent/a"))
		if err != nil {
			t.Fatal(err)
		}
		if c := nextChange(t, changes); c.Entry.ID != e2.ID {
			t.Fatalf("first change after the current revision is %s, want %s", c.Entry.ID, e2.ID)
		}
	})
}

func TestSnapshotEntriesByParentIsOneRevision(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		s := b.handle(t)
		ctx := context.Background()
		const parent = "spiffe://td/agent/a"
		var ids []string
		for _, w := range []string{"w1", "w2", "w3", "w4", "w5"} {
			e, err := s.CreateEntry(ctx, entry("spiffe://td/"+w, parent))
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, e.ID)
		}
		if _, err := s.CreateEntry(ctx, entry("spiffe://td/other", "spiffe://td/agent/b")); err != nil {
			t.Fatal(err)
		}
		slices.Sort(ids)
		var got []string
		var pages int
		var added string
		rev, err := s.SnapshotEntriesByParent(ctx, parent, 2, func(page []*datastore.Entry) error {
			pages++
			for _, e := range page {
				got = append(got, e.ID)
			}
			if pages == 1 {
				// Writes made while the snapshot is read are not in it.
				e, err := s.CreateEntry(ctx, entry("spiffe://td/w6", parent))
				if err != nil {
					return err
				}
				added = e.ID
				return s.DeleteEntry(ctx, ids[4])
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, ids) || pages != 3 {
			t.Fatalf("snapshot in %d pages: %v, want %v in 3", pages, got, ids)
		}
		// A watch from the snapshot's revision reports exactly the writes
		// it missed.
		changes, _ := watchInto(t, s, rev)
		if c := nextChange(t, changes); c.Entry.ID != added || c.Deleted {
			t.Fatalf("first change after the snapshot: %+v, want the creation of %s", c, added)
		}
		if c := nextChange(t, changes); c.Entry.ID != ids[4] || !c.Deleted {
			t.Fatalf("second change after the snapshot: %+v, want the deletion of %s", c, ids[4])
		}
	})
}
