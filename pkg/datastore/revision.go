package datastore

import (
	"context"
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Entry revisions let an agent's periodic sync skip the entry list when
// nothing it is authorized for has changed: every entry write bumps a store-
// wide counter and records it for each parent whose entries it touched.

var (
	bucketParentRevision = []byte("parent_revision")
	keyEntriesRevision   = []byte("entries_revision")
)

func u64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

func u64Bytes(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

// touchParents bumps the store-wide entries revision and records it for each
// parent, inside the caller's transaction; it returns the new revision.
func touchParents(tx *bolt.Tx, parents ...string) (uint64, error) {
	meta := tx.Bucket(bucketMeta)
	rev := u64(meta.Get(keyEntriesRevision)) + 1
	if err := meta.Put(keyEntriesRevision, u64Bytes(rev)); err != nil {
		return 0, err
	}
	b := tx.Bucket(bucketParentRevision)
	for _, p := range parents {
		if err := b.Put([]byte(p), u64Bytes(rev)); err != nil {
			return 0, err
		}
	}
	return rev, nil
}

// EntriesRevision returns the store-wide entries revision and the revision
// of the last change to parentID's entries, read in one transaction.
func (s *Bolt) EntriesRevision(_ context.Context, parentID string) (current, parent uint64, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		current = u64(tx.Bucket(bucketMeta).Get(keyEntriesRevision))
		parent = u64(tx.Bucket(bucketParentRevision).Get([]byte(parentID)))
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("datastore: entries revision: %w", err)
	}
	return current, parent, nil
}
