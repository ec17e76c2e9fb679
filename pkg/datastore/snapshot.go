package datastore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Snapshot is every record of a datastore, read at one point in time, for
// copying one backend into another (`shortleaf datastore migrate`).
type Snapshot struct {
	Entries    []*Entry
	Agents     []*Agent
	JoinTokens []*JoinToken
	// CAJournal is the CA's cluster record, CAReplicas each replica's record.
	CAJournal        []byte
	CAReplicas       map[string][]byte
	Federations      []*Federation
	FederatedBundles []FederatedBundle
}

// ErrNotEmpty means an import found records already in the target.
var ErrNotEmpty = errors.New("datastore: the target datastore is not empty")

func decodeInto[T any](raw []byte, out *[]*T) error {
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	*out = append(*out, &v)
	return nil
}

// Export reads every record in one read transaction.
func (s *Bolt) Export(_ context.Context) (*Snapshot, error) {
	snap := &Snapshot{}
	err := s.db.View(func(tx *bolt.Tx) error {
		for _, b := range []struct {
			bucket []byte
			decode func([]byte) error
		}{
			{bucketEntries, func(v []byte) error { return decodeInto(v, &snap.Entries) }},
			{bucketAgents, func(v []byte) error { return decodeInto(v, &snap.Agents) }},
			{bucketTokens, func(v []byte) error { return decodeInto(v, &snap.JoinTokens) }},
			{bucketFederations, func(v []byte) error { return decodeInto(v, &snap.Federations) }},
		} {
			if err := tx.Bucket(b.bucket).ForEach(func(k, v []byte) error {
				if err := b.decode(v); err != nil {
					return fmt.Errorf("decode %s/%s: %w", b.bucket, k, err)
				}
				return nil
			}); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bucketFederatedBundles).ForEach(func(k, v []byte) error {
			snap.FederatedBundles = append(snap.FederatedBundles, FederatedBundle{TrustDomain: string(k), Raw: append([]byte(nil), v...)})
			return nil
		}); err != nil {
			return err
		}
		state := loadCAJournal(tx)
		snap.CAJournal = state.Cluster.Data
		for id, r := range state.Replicas {
			if snap.CAReplicas == nil {
				snap.CAReplicas = map[string][]byte{}
			}
			snap.CAReplicas[id] = r.Data
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("datastore: export: %w", err)
	}
	return snap, nil
}

// Import writes every record of snap into an empty store, in one
// transaction: all of it or nothing.
func (s *Bolt) Import(_ context.Context, snap *Snapshot) error {
	// The imported entries are not recorded one by one: every watch starts
	// again from a full read.
	s.feed.mu.Lock()
	defer s.feed.mu.Unlock()
	var entriesRev uint64
	err := s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketEntries, bucketAgents, bucketTokens, bucketFederations, bucketFederatedBundles} {
			if k, _ := tx.Bucket(b).Cursor().First(); k != nil {
				return ErrNotEmpty
			}
		}
		if tx.Bucket(bucketMeta).Get(keyCAJournal) != nil {
			return ErrNotEmpty
		}
		if k, _ := tx.Bucket(bucketCAReplicas).Cursor().First(); k != nil {
			return ErrNotEmpty
		}
		ident := tx.Bucket(bucketByIdentity)
		for _, e := range snap.Entries {
			if existing := ident.Get(boltIdentityKey(e)); existing != nil {
				return fmt.Errorf("entry %s: %w", e.ID, &ExistsError{ID: string(existing)})
			}
			if err := putJSON(tx.Bucket(bucketEntries), []byte(e.ID), e); err != nil {
				return err
			}
			if err := tx.Bucket(bucketByParent).Put(parentKey(e.ParentID, e.ID), nil); err != nil {
				return err
			}
			if err := ident.Put(boltIdentityKey(e), []byte(e.ID)); err != nil {
				return err
			}
			if _, err := touchParents(tx, e.ParentID); err != nil {
				return err
			}
		}
		entriesRev = u64(tx.Bucket(bucketMeta).Get(keyEntriesRevision))
		for _, a := range snap.Agents {
			if err := putJSON(tx.Bucket(bucketAgents), []byte(a.SPIFFEID), a); err != nil {
				return err
			}
		}
		for _, t := range snap.JoinTokens {
			if err := putJSON(tx.Bucket(bucketTokens), []byte(t.ID), t); err != nil {
				return err
			}
		}
		for _, f := range snap.Federations {
			if err := putJSON(tx.Bucket(bucketFederations), []byte(f.TrustDomain), f); err != nil {
				return err
			}
		}
		for _, b := range snap.FederatedBundles {
			if err := tx.Bucket(bucketFederatedBundles).Put([]byte(b.TrustDomain), b.Raw); err != nil {
				return err
			}
		}
		// Every record at revision 1: what a copy compares against starts afresh.
		for id, rec := range snap.CAReplicas {
			if err := tx.Bucket(bucketCAReplicas).Put([]byte(id), append(revisionBytes(1), rec...)); err != nil {
				return err
			}
		}
		if snap.CAJournal != nil {
			return tx.Bucket(bucketMeta).Put(keyCAJournal, snap.CAJournal)
		}
		return nil
	})
	if err == nil {
		s.feed.resetLocked(entriesRev)
	}
	return wrapErr("import", err)
}

// Export reads every record at one revision of the cluster.
func (s *Etcd) Export(ctx context.Context) (*Snapshot, error) {
	snap := &Snapshot{}
	gctx, cancel := s.op(ctx)
	resp, err := s.client.Get(gctx, s.journalKey())
	cancel()
	if err != nil {
		return nil, wrapErr("export", err)
	}
	rev := resp.Header.Revision
	if len(resp.Kvs) > 0 {
		snap.CAJournal = resp.Kvs[0].Value
	}
	bundlePrefix, replicaPrefix := s.federatedBundleKey(""), s.caReplicaKey("")
	for _, p := range []struct {
		prefix string
		decode func([]byte, []byte) error
	}{
		{s.entryKey(""), func(_, v []byte) error { return decodeInto(v, &snap.Entries) }},
		{s.agentKey(""), func(_, v []byte) error { return decodeInto(v, &snap.Agents) }},
		{s.tokenKey(""), func(_, v []byte) error { return decodeInto(v, &snap.JoinTokens) }},
		{s.federationKey(""), func(_, v []byte) error { return decodeInto(v, &snap.Federations) }},
		{bundlePrefix, func(k, v []byte) error {
			snap.FederatedBundles = append(snap.FederatedBundles, FederatedBundle{TrustDomain: string(k[len(bundlePrefix):]), Raw: v})
			return nil
		}},
		{replicaPrefix, func(k, v []byte) error {
			if snap.CAReplicas == nil {
				snap.CAReplicas = map[string][]byte{}
			}
			snap.CAReplicas[string(k[len(replicaPrefix):])] = v
			return nil
		}},
	} {
		err := s.forEach(ctx, p.prefix, func(k, v []byte) error {
			if err := p.decode(k, v); err != nil {
				return fmt.Errorf("decode %s: %w", k, err)
			}
			return nil
		}, clientv3.WithRev(rev))
		if err != nil {
			return nil, wrapErr("export", err)
		}
	}
	return snap, nil
}

// importTxnOps stays under etcd's default limit of 128 operations in one
// transaction (--max-txn-ops).
const importTxnOps = 100

// Import writes every record of snap under an empty prefix. etcd bounds the
// size of one transaction, so a large snapshot takes several; if one fails,
// everything written under the prefix is deleted again, leaving it empty as
// it was.
func (s *Etcd) Import(ctx context.Context, snap *Snapshot) (err error) {
	gctx, cancel := s.op(ctx)
	resp, err := s.client.Get(gctx, s.prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	cancel()
	if err != nil {
		return wrapErr("import", err)
	}
	if resp.Count > 0 {
		return wrapErr("import", fmt.Errorf("%w: %d keys under %s", ErrNotEmpty, resp.Count, s.prefix))
	}
	var ops []clientv3.Op
	idents := map[string]string{}
	for _, e := range snap.Entries {
		raw, ident := mustJSON(e), s.identityKey(e)
		if other, dup := idents[ident]; dup {
			return wrapErr("import", fmt.Errorf("entry %s: %w", e.ID, &ExistsError{ID: other}))
		}
		idents[ident] = e.ID
		ops = append(ops, clientv3.OpPut(s.entryKey(e.ID), raw), clientv3.OpPut(s.byParentKey(e.ParentID, e.ID), raw),
			clientv3.OpPut(ident, e.ID), clientv3.OpPut(s.parentRevisionKey(e.ParentID), ""))
	}
	for _, a := range snap.Agents {
		ops = append(ops, clientv3.OpPut(s.agentKey(a.SPIFFEID), mustJSON(a)))
	}
	for _, t := range snap.JoinTokens {
		ops = append(ops, clientv3.OpPut(s.tokenKey(t.ID), mustJSON(t)))
	}
	for _, f := range snap.Federations {
		ops = append(ops, clientv3.OpPut(s.federationKey(f.TrustDomain), mustJSON(f)))
	}
	for _, b := range snap.FederatedBundles {
		ops = append(ops, clientv3.OpPut(s.federatedBundleKey(b.TrustDomain), string(b.Raw)))
	}
	if snap.CAJournal != nil {
		ops = append(ops, clientv3.OpPut(s.journalKey(), string(snap.CAJournal)))
	}
	for id, rec := range snap.CAReplicas {
		ops = append(ops, clientv3.OpPut(s.caReplicaKey(id), string(rec)))
	}
	defer func() {
		if err != nil {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
			defer cancel()
			if _, derr := s.client.Delete(dctx, s.prefix, clientv3.WithPrefix()); derr != nil {
				err = fmt.Errorf("%w; removing the partial copy also failed, delete the keys under %s before retrying: %w", err, s.prefix, derr)
			}
		}
	}()
	// Several entries of one parent each put its revision key; one
	// transaction may name a key only once.
	for len(ops) > 0 {
		n := min(importTxnOps, len(ops))
		batch, seen := ops[:0:0], map[string]bool{}
		for _, op := range ops[:n] {
			if k := string(op.KeyBytes()); !seen[k] {
				seen[k] = true
				batch = append(batch, op)
			}
		}
		if _, err := s.txn(ctx, nil, batch); err != nil {
			return wrapErr("import", err)
		}
		ops = ops[n:]
	}
	return nil
}
