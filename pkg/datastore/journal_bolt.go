package datastore

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/shortleaf/shortleaf/ca"
)

// The CA journal in bbolt: the cluster record at meta/ca_journal (where a
// single server's journal always was) with its revision beside it, and each
// replica's record in the ca_replicas bucket, its revision in the first 8
// bytes. Revisions come from one counter, as etcd's do.
var (
	bucketCAReplicas     = []byte("ca_replicas")
	keyCAJournalRevision = []byte("ca_journal_revision")
	keyCARevision        = []byte("ca_revision")
)

func readRevision(b []byte) int64 {
	if len(b) < 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(b))
}

func revisionBytes(rev int64) []byte {
	return binary.BigEndian.AppendUint64(nil, uint64(rev))
}

// loadCAJournal reads the journal in tx. A cluster record without a
// revision is a single server's journal from before replicas: revision 1.
func loadCAJournal(tx *bolt.Tx) ca.JournalState {
	state := ca.JournalState{Replicas: map[string]ca.JournalRecord{}}
	meta := tx.Bucket(bucketMeta)
	if v := meta.Get(keyCAJournal); v != nil {
		state.Cluster = ca.JournalRecord{Data: bytes.Clone(v), Revision: max(readRevision(meta.Get(keyCAJournalRevision)), 1)}
	}
	if b := tx.Bucket(bucketCAReplicas); b != nil {
		_ = b.ForEach(func(k, v []byte) error {
			if len(v) >= 8 {
				state.Replicas[string(k)] = ca.JournalRecord{Data: bytes.Clone(v[8:]), Revision: readRevision(v)}
			}
			return nil
		})
	}
	return state
}

// LoadCAJournal returns every record of the CA journal.
func (s *Bolt) LoadCAJournal(_ context.Context) (ca.JournalState, error) {
	var state ca.JournalState
	err := s.db.View(func(tx *bolt.Tx) error {
		state = loadCAJournal(tx)
		return nil
	})
	if err != nil {
		return ca.JournalState{}, fmt.Errorf("datastore: load CA journal: %w", err)
	}
	return state, nil
}

// SaveCAJournal applies w in one transaction if every record it names is
// still at the revision read. There is no leader election on one file: the
// one server always leads.
func (s *Bolt) SaveCAJournal(_ context.Context, w ca.JournalWrite) (int64, error) {
	var rev int64
	err := s.db.Update(func(tx *bolt.Tx) error {
		cur := loadCAJournal(tx)
		if w.Cluster != nil && w.Cluster.Revision != cur.Cluster.Revision {
			return ca.ErrJournalConflict
		}
		if w.Replica != nil && w.Replica.Revision != cur.Replicas[w.ReplicaID].Revision {
			return ca.ErrJournalConflict
		}
		for id, r := range w.Prune {
			if cur.Replicas[id].Revision != r {
				return ca.ErrJournalConflict
			}
		}
		meta, replicas := tx.Bucket(bucketMeta), tx.Bucket(bucketCAReplicas)
		rev = max(readRevision(meta.Get(keyCARevision)), cur.Cluster.Revision) + 1
		if err := meta.Put(keyCARevision, revisionBytes(rev)); err != nil {
			return err
		}
		if w.Cluster != nil {
			if len(w.Cluster.Data) == 0 {
				return fmt.Errorf("empty cluster record")
			}
			if err := meta.Put(keyCAJournal, w.Cluster.Data); err != nil {
				return err
			}
			if err := meta.Put(keyCAJournalRevision, revisionBytes(rev)); err != nil {
				return err
			}
		}
		if w.Replica != nil {
			if err := replicas.Put([]byte(w.ReplicaID), append(revisionBytes(rev), w.Replica.Data...)); err != nil {
				return err
			}
		}
		for id := range w.Prune {
			if err := replicas.Delete([]byte(id)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("datastore: save CA journal: %w", err)
	}
	return rev, nil
}
