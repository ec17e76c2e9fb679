package datastore

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/shortleaf/shortleaf/ca"
)

var (
	bucketEntries    = []byte("entries")
	bucketByParent   = []byte("entries_by_parent")
	bucketByIdentity = []byte("entries_by_identity")
	bucketAgents     = []byte("agents")
	bucketTokens     = []byte("join_tokens")
	bucketMeta       = []byte("meta")

	keyCAJournal = []byte("ca_journal")
)

// Bolt is the bbolt datastore, the embedded default: one file, one server.
type Bolt struct {
	db   *bolt.DB
	feed boltFeed
}

// Open opens (creating if needed) the bbolt file at path, mode 0600.
func Open(path string) (*Bolt, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("datastore: open %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketEntries, bucketByParent, bucketByIdentity, bucketAgents, bucketTokens, bucketMeta, bucketFederations, bucketFederatedBundles, bucketParentRevision, bucketCAReplicas} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("datastore: create buckets: %w", err)
	}
	s := &Bolt{db: db}
	var current uint64
	_ = db.View(func(tx *bolt.Tx) error {
		current = u64(tx.Bucket(bucketMeta).Get(keyEntriesRevision))
		return nil
	})
	s.feed.init(current)
	return s, nil
}

// Close closes the file and ends every watch. It is safe to call more than
// once.
func (s *Bolt) Close() error {
	s.feed.close()
	return s.db.Close()
}

// Path is the bbolt file.
func (s *Bolt) Path() string { return s.db.Path() }

func newID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func parentKey(parentID, entryID string) []byte {
	return []byte(parentID + "\x00" + entryID)
}

func putJSON(b *bolt.Bucket, key []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(key, raw)
}

// CreateEntry stores a new entry and returns it with its ID set. An entry with
// the same SPIFFE ID, parent and selectors is ErrAlreadyExists.
func (s *Bolt) CreateEntry(_ context.Context, e *Entry) (*Entry, error) {
	var out *Entry
	err := s.writeEntry(func(tx *bolt.Tx) (change EntryChange, err error) {
		change, out, err = createEntry(tx, e)
		return change, err
	})
	if err != nil {
		return nil, fmt.Errorf("datastore: create entry: %w", err)
	}
	return out, nil
}

// createEntry checks, then writes: an entry it refuses (ErrAlreadyExists)
// has written nothing, so a batch can go on past it.
func createEntry(tx *bolt.Tx, e *Entry) (EntryChange, *Entry, error) {
	out := *e
	out.ID = newID()
	out.Revision = 1
	ident := tx.Bucket(bucketByIdentity)
	if existing := ident.Get(boltIdentityKey(&out)); existing != nil {
		return EntryChange{}, nil, &ExistsError{ID: string(existing)}
	}
	if err := putJSON(tx.Bucket(bucketEntries), []byte(out.ID), &out); err != nil {
		return EntryChange{}, nil, err
	}
	if err := tx.Bucket(bucketByParent).Put(parentKey(out.ParentID, out.ID), nil); err != nil {
		return EntryChange{}, nil, err
	}
	rev, err := touchParents(tx, out.ParentID)
	if err != nil {
		return EntryChange{}, nil, err
	}
	return EntryChange{Revision: rev, Entry: &out}, &out, ident.Put(boltIdentityKey(&out), []byte(out.ID))
}

func getEntry(tx *bolt.Tx, id string) (*Entry, error) {
	raw := tx.Bucket(bucketEntries).Get([]byte(id))
	if raw == nil {
		return nil, ErrNotFound
	}
	var e Entry
	if err := json.Unmarshal(raw, &e); err != nil {
		return nil, fmt.Errorf("decode entry %s: %w", id, err)
	}
	return &e, nil
}

// GetEntry returns the entry with the given ID.
func (s *Bolt) GetEntry(_ context.Context, id string) (*Entry, error) {
	var e *Entry
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		e, err = getEntry(tx, id)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("datastore: get entry: %w", err)
	}
	return e, nil
}

// UpdateEntry replaces the entry with e.ID, keeping its creation time and
// bumping its revision.
func (s *Bolt) UpdateEntry(_ context.Context, e *Entry) (*Entry, error) {
	var out *Entry
	err := s.writeEntry(func(tx *bolt.Tx) (change EntryChange, err error) {
		change, out, err = updateEntry(tx, e)
		return change, err
	})
	if err != nil {
		return nil, fmt.Errorf("datastore: update entry: %w", err)
	}
	return out, nil
}

// updateEntry checks (ErrNotFound, ErrAlreadyExists), then writes.
func updateEntry(tx *bolt.Tx, e *Entry) (EntryChange, *Entry, error) {
	old, err := getEntry(tx, e.ID)
	if err != nil {
		return EntryChange{}, nil, err
	}
	out := *e
	out.CreatedAt = old.CreatedAt
	out.Revision = old.Revision + 1
	ident := tx.Bucket(bucketByIdentity)
	if other := ident.Get(boltIdentityKey(&out)); other != nil && string(other) != out.ID {
		return EntryChange{}, nil, &ExistsError{ID: string(other)}
	}
	if err := ident.Delete(boltIdentityKey(old)); err != nil {
		return EntryChange{}, nil, err
	}
	if err := ident.Put(boltIdentityKey(&out), []byte(out.ID)); err != nil {
		return EntryChange{}, nil, err
	}
	byParent := tx.Bucket(bucketByParent)
	if err := byParent.Delete(parentKey(old.ParentID, old.ID)); err != nil {
		return EntryChange{}, nil, err
	}
	if err := byParent.Put(parentKey(out.ParentID, out.ID), nil); err != nil {
		return EntryChange{}, nil, err
	}
	rev, err := touchParents(tx, old.ParentID, out.ParentID)
	if err != nil {
		return EntryChange{}, nil, err
	}
	change := EntryChange{Revision: rev, Entry: &out}
	if old.ParentID != out.ParentID {
		change.OldParentID = old.ParentID
	}
	return change, &out, putJSON(tx.Bucket(bucketEntries), []byte(out.ID), &out)
}

// DeleteEntry removes an entry.
func (s *Bolt) DeleteEntry(_ context.Context, id string) error {
	err := s.writeEntry(func(tx *bolt.Tx) (EntryChange, error) {
		change, _, err := deleteEntry(tx, id)
		return change, err
	})
	if err != nil {
		return fmt.Errorf("datastore: delete entry: %w", err)
	}
	return nil
}

// deleteEntry checks (ErrNotFound), then removes the entry; it returns the
// entry removed.
func deleteEntry(tx *bolt.Tx, id string) (EntryChange, *Entry, error) {
	old, err := getEntry(tx, id)
	if err != nil {
		return EntryChange{}, nil, err
	}
	if err := tx.Bucket(bucketByIdentity).Delete(boltIdentityKey(old)); err != nil {
		return EntryChange{}, nil, err
	}
	if err := tx.Bucket(bucketByParent).Delete(parentKey(old.ParentID, old.ID)); err != nil {
		return EntryChange{}, nil, err
	}
	rev, err := touchParents(tx, old.ParentID)
	if err != nil {
		return EntryChange{}, nil, err
	}
	return EntryChange{Revision: rev, Entry: old, Deleted: true}, old, tx.Bucket(bucketEntries).Delete([]byte(id))
}

// WriteEntries applies a batch of entry writes in one transaction: one
// commit (one fsync) for all of them. Each write succeeds or fails on its
// own: one refused (ErrNotFound, ErrAlreadyExists) leaves the others to go
// through, in order, so a later write sees an earlier one. The error is for
// the store failing, and then nothing of the batch was written.
func (s *Bolt) WriteEntries(_ context.Context, writes []EntryWrite) ([]EntryWriteResult, error) {
	results := make([]EntryWriteResult, len(writes))
	var changes []EntryChange
	s.feed.mu.Lock()
	defer s.feed.mu.Unlock()
	err := s.db.Update(func(tx *bolt.Tx) error {
		for i, w := range writes {
			var change EntryChange
			var out *Entry
			var err error
			switch {
			case w.Create != nil:
				change, out, err = createEntry(tx, w.Create)
			case w.Update != nil:
				change, out, err = updateEntry(tx, w.Update)
			default:
				change, out, err = deleteEntry(tx, w.DeleteID)
			}
			switch {
			case errors.Is(err, ErrNotFound) || errors.Is(err, ErrAlreadyExists):
				results[i].Err = err
			case err != nil:
				return err
			default:
				results[i].Entry = out
				changes = append(changes, change)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("datastore: write entries: %w", err)
	}
	for _, c := range changes {
		s.feed.recordLocked(c)
	}
	return results, nil
}

// ListEntries returns up to pageSize entries in ID order after pageToken (the
// last ID of the previous page), and the token of the next page ("" at the end).
func (s *Bolt) ListEntries(_ context.Context, pageToken string, pageSize int) ([]*Entry, string, error) {
	if pageSize <= 0 {
		pageSize = 1000
	}
	var out []*Entry
	next := ""
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketEntries).Cursor()
		k, v := c.First()
		if pageToken != "" {
			k, v = c.Seek([]byte(pageToken))
			if k != nil && string(k) == pageToken {
				k, v = c.Next()
			}
		}
		for ; k != nil; k, v = c.Next() {
			if len(out) == pageSize {
				next = out[len(out)-1].ID
				return nil
			}
			var e Entry
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("decode entry %s: %w", k, err)
			}
			out = append(out, &e)
		}
		return nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("datastore: list entries: %w", err)
	}
	return out, next, nil
}

// ListEntriesByParent returns up to pageSize of the entries parented to
// parentID, after the entry ID pageToken, and the next page's token.
func (s *Bolt) ListEntriesByParent(_ context.Context, parentID, pageToken string, pageSize int) ([]*Entry, string, error) {
	if pageSize <= 0 {
		pageSize = 1000
	}
	prefix := []byte(parentID + "\x00")
	var out []*Entry
	next := ""
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketByParent).Cursor()
		seek := prefix
		if pageToken != "" {
			seek = parentKey(parentID, pageToken+"\x00")
		}
		for k, _ := c.Seek(seek); k != nil && hasPrefix(k, prefix); k, _ = c.Next() {
			if len(out) == pageSize {
				next = out[len(out)-1].ID
				return nil
			}
			e, err := getEntry(tx, string(k[len(prefix):]))
			if err != nil {
				return err
			}
			out = append(out, e)
		}
		return nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("datastore: list entries by parent: %w", err)
	}
	return out, next, nil
}

func hasPrefix(b, prefix []byte) bool {
	return len(b) >= len(prefix) && string(b[:len(prefix)]) == string(prefix)
}

// ReadCAJournal reads the CA journal from the datastore file at path
// without writing to it, for tools that run beside (not instead of) the
// server. A missing file means a CA that never started (an empty state). A
// file the running server holds cannot be opened: ask the server instead.
func ReadCAJournal(path string) (ca.JournalState, error) {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return ca.JournalState{}, nil
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return ca.JournalState{}, fmt.Errorf("datastore: open %s read-only (is the server running? then it answers on its admin socket): %w", path, err)
	}
	defer db.Close()
	var state ca.JournalState
	err = db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketMeta) != nil {
			state = loadCAJournal(tx)
		}
		return nil
	})
	if err != nil {
		return ca.JournalState{}, fmt.Errorf("datastore: read CA journal: %w", err)
	}
	return state, nil
}

// boltMaxKey is bbolt's largest key.
const boltMaxKey = bolt.MaxKeySize

// boltIdentityKey is an entry's key in the identity index: its identity
// (SPIFFE ID, parent, sorted selectors) as is, or, when that is longer than
// bbolt's largest key (an entry may be up to 64 KiB), its SHA-256 behind a
// prefix no plain identity has. Stores written before this rule hold only
// identities short enough to be kept as is, so they read the same.
func boltIdentityKey(e *Entry) []byte {
	raw := e.identityKey()
	if len(raw) <= boltMaxKey {
		return []byte(raw)
	}
	sum := sha256.Sum256([]byte(raw))
	return append([]byte("\x01sha256:"), sum[:]...)
}
