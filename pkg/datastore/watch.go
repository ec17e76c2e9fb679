package datastore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// Entry changes are what lets the server push entries to agents instead of
// resending every entry on every sync: each replica watches the datastore
// (etcd's watch; for bbolt, notifications from the process's own writes)
// and forwards to each connected agent only the changes to its entries.

// EntryChange is one write to a registration entry, as WatchEntries reports it.
type EntryChange struct {
	// Revision is the store's entries revision of the write (etcd's cluster
	// revision; bbolt's entries counter). It orders the changes.
	Revision uint64
	// Entry is the entry as written; for a deletion, the entry as it was.
	Entry *Entry
	// Deleted is set when the entry was deleted.
	Deleted bool
	// OldParentID is the entry's parent before an update that moved it to
	// another parent, whose agent must drop it; empty otherwise.
	OldParentID string
}

// boltFeedHistory is how many of the latest entry changes (at least; up to
// twice as many) a bbolt store keeps in memory for WatchEntries to replay; a watcher further behind gets
// ErrCompacted.
const boltFeedHistory = 4096

// boltFeed records the entry changes this process writes to a bbolt file,
// the only writer of that file, so the in-process record is complete.
type boltFeed struct {
	// mu is held across each entry write and its recording, so changes are
	// recorded in revision order.
	mu      sync.Mutex
	changes []EntryChange // the latest, oldest first
	// horizon is the revision after which every change is in changes.
	horizon uint64
	// wake is closed and replaced when a change is recorded or the store
	// closes.
	wake   chan struct{}
	closed bool
}

func (f *boltFeed) init(current uint64) {
	f.horizon, f.changes, f.wake = current, nil, make(chan struct{})
}

// recordLocked adds a committed change and wakes the watchers.
func (f *boltFeed) recordLocked(c EntryChange) {
	f.changes = append(f.changes, c)
	// Trim by half the history at a time, not one change per write: a
	// write then costs no shift of the whole history.
	if len(f.changes) >= 2*boltFeedHistory {
		drop := len(f.changes) - boltFeedHistory
		f.horizon = f.changes[drop-1].Revision
		f.changes = slices.Clone(f.changes[drop:])
	}
	close(f.wake)
	f.wake = make(chan struct{})
}

// resetLocked forgets the history: writes not recorded one by one (an
// import) make every watcher start again.
func (f *boltFeed) resetLocked(current uint64) {
	f.horizon, f.changes = current, nil
	close(f.wake)
	f.wake = make(chan struct{})
}

func (f *boltFeed) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.closed {
		f.closed = true
		close(f.wake)
	}
}

// writeEntry runs one entry write in a bbolt transaction and, once it has
// committed, records the change it returns.
func (s *Bolt) writeEntry(write func(tx *bolt.Tx) (EntryChange, error)) error {
	s.feed.mu.Lock()
	defer s.feed.mu.Unlock()
	var change EntryChange
	err := s.db.Update(func(tx *bolt.Tx) error {
		var err error
		change, err = write(tx)
		return err
	})
	if err == nil {
		s.feed.recordLocked(change)
	}
	return err
}

// WatchEntries calls fn with every entry change after revision after, in
// revision order and in batches, together with the revision the watch has
// reached, until ctx ends (ctx.Err()), fn fails (its error), the store is
// closed, or the changes after `after` are no longer kept (ErrCompacted).
// A bbolt store keeps the changes made since it was opened, up to the
// latest few thousand.
func (s *Bolt) WatchEntries(ctx context.Context, after uint64, fn func(changes []EntryChange, revision uint64) error) error {
	for {
		s.feed.mu.Lock()
		if s.feed.closed {
			s.feed.mu.Unlock()
			return errors.New("datastore: watch entries: the store is closed")
		}
		if after < s.feed.horizon {
			horizon := s.feed.horizon
			s.feed.mu.Unlock()
			return fmt.Errorf("datastore: watch entries after revision %d (history starts at %d): %w", after, horizon, ErrCompacted)
		}
		i := sort.Search(len(s.feed.changes), func(i int) bool { return s.feed.changes[i].Revision > after })
		batch := slices.Clone(s.feed.changes[i:])
		wake := s.feed.wake
		s.feed.mu.Unlock()
		if len(batch) > 0 {
			after = batch[len(batch)-1].Revision
			if err := fn(batch, after); err != nil {
				return err
			}
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake:
		}
	}
}

// SnapshotEntriesByParent reads every entry parented to parentID as of one
// revision of the store and calls fn with them in pages of at most pageSize,
// in ID order; it returns that revision. The entries are read in one
// transaction and decoded page by page after it, so a slow fn does not hold
// the file.
func (s *Bolt) SnapshotEntriesByParent(_ context.Context, parentID string, pageSize int, fn func(page []*Entry) error) (uint64, error) {
	if pageSize <= 0 {
		pageSize = 1000
	}
	var raws [][]byte
	var rev uint64
	prefix := []byte(parentID + "\x00")
	err := s.db.View(func(tx *bolt.Tx) error {
		rev = u64(tx.Bucket(bucketMeta).Get(keyEntriesRevision))
		entries := tx.Bucket(bucketEntries)
		c := tx.Bucket(bucketByParent).Cursor()
		for k, _ := c.Seek(prefix); k != nil && hasPrefix(k, prefix); k, _ = c.Next() {
			raw := entries.Get(k[len(prefix):])
			if raw == nil {
				return fmt.Errorf("index names entry %s, which is missing", k[len(prefix):])
			}
			raws = append(raws, slices.Clone(raw))
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("datastore: snapshot entries by parent: %w", err)
	}
	for len(raws) > 0 {
		n := min(pageSize, len(raws))
		page := make([]*Entry, n)
		for i, raw := range raws[:n] {
			page[i] = new(Entry)
			if err := json.Unmarshal(raw, page[i]); err != nil {
				return 0, fmt.Errorf("datastore: snapshot entries by parent: decode entry: %w", err)
			}
		}
		raws = raws[n:]
		if err := fn(page); err != nil {
			return 0, err
		}
	}
	return rev, nil
}
