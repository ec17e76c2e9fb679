package datastore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// WatchEntries calls fn with every entry change after revision after, in
// revision order and in batches, together with the cluster revision the
// watch has reached, until ctx ends (ctx.Err()), fn fails (its error), the
// watch breaks (the member lost its leader, the client closed: an error to
// retry from the last revision seen) or the changes after `after` were
// compacted away (ErrCompacted).
//
// The watch asks for progress notifications, so the revision reached moves
// on while no entry changes, and a watch restarted from it stays within the
// history etcd keeps.
func (s *Etcd) WatchEntries(ctx context.Context, after uint64, fn func(changes []EntryChange, revision uint64) error) error {
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	prefix := s.entryKey("")
	watch := s.client.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(int64(after)+1),
		clientv3.WithPrevKV(), clientv3.WithProgressNotify())
	for resp := range watch {
		if resp.CompactRevision != 0 {
			return fmt.Errorf("datastore: watch entries after revision %d (compacted up to %d): %w", after, resp.CompactRevision, ErrCompacted)
		}
		if err := resp.Err(); err != nil {
			if errors.Is(err, rpctypes.ErrCompacted) {
				return fmt.Errorf("datastore: watch entries after revision %d: %w", after, ErrCompacted)
			}
			return fmt.Errorf("datastore: watch entries: %w", err)
		}
		changes := make([]EntryChange, 0, len(resp.Events))
		for _, ev := range resp.Events {
			change, err := entryChangeOf(ev, len(prefix))
			if err != nil {
				return fmt.Errorf("datastore: watch entries: %w", err)
			}
			changes = append(changes, change)
		}
		reached := after
		if len(changes) > 0 {
			reached = changes[len(changes)-1].Revision
		}
		if resp.IsProgressNotify() {
			reached = max(reached, uint64(resp.Header.Revision))
		}
		if len(changes) == 0 && reached == after {
			continue
		}
		after = reached
		if err := fn(changes, reached); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.New("datastore: watch entries: the watch ended (client closed?)")
}

// entryChangeOf decodes one watch event on the entries prefix.
func entryChangeOf(ev *clientv3.Event, prefixLen int) (EntryChange, error) {
	id := string(ev.Kv.Key[prefixLen:])
	change := EntryChange{Revision: uint64(ev.Kv.ModRevision)}
	var prev *Entry
	if ev.PrevKv != nil {
		prev = new(Entry)
		if err := json.Unmarshal(ev.PrevKv.Value, prev); err != nil {
			return EntryChange{}, fmt.Errorf("decode entry %s: %w", id, err)
		}
	}
	switch ev.Type {
	case mvccpb.DELETE:
		if prev == nil {
			// Without the deleted value its parent is unknown, and so is
			// the agent to tell: only a full read is safe.
			return EntryChange{}, fmt.Errorf("deletion of entry %s at revision %d came without its value: %w", id, ev.Kv.ModRevision, ErrCompacted)
		}
		change.Entry, change.Deleted = prev, true
	default:
		change.Entry = new(Entry)
		if err := json.Unmarshal(ev.Kv.Value, change.Entry); err != nil {
			return EntryChange{}, fmt.Errorf("decode entry %s: %w", id, err)
		}
		if !ev.IsCreate() {
			if prev == nil {
				return EntryChange{}, fmt.Errorf("update of entry %s at revision %d came without its previous value: %w", id, ev.Kv.ModRevision, ErrCompacted)
			}
			if prev.ParentID != change.Entry.ParentID {
				change.OldParentID = prev.ParentID
			}
		}
	}
	return change, nil
}

// SnapshotEntriesByParent reads every entry parented to parentID as of one
// revision of the cluster and calls fn with them in pages of at most
// pageSize, in ID order; it returns that revision. Pages after the first are
// read at the first one's revision; ErrCompacted if it is compacted away
// meanwhile.
func (s *Etcd) SnapshotEntriesByParent(ctx context.Context, parentID string, pageSize int, fn func(page []*Entry) error) (uint64, error) {
	if pageSize <= 0 {
		pageSize = 1000
	}
	prefix := s.byParentPrefix(parentID)
	start, end := prefix, clientv3.GetPrefixRangeEnd(prefix)
	var rev int64
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(int64(pageSize))}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		gctx, cancel := s.op(ctx)
		resp, err := s.client.Get(gctx, start, opts...)
		cancel()
		if errors.Is(err, rpctypes.ErrCompacted) {
			return 0, fmt.Errorf("datastore: snapshot entries by parent at revision %d: %w", rev, ErrCompacted)
		}
		if err != nil {
			return 0, fmt.Errorf("datastore: snapshot entries by parent: %w", err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		raws := make([][]byte, len(resp.Kvs))
		for i, kv := range resp.Kvs {
			raws[i] = kv.Value
		}
		page, err := decodeEntries(raws)
		if err != nil {
			return 0, fmt.Errorf("datastore: snapshot entries by parent: %w", err)
		}
		if len(page) > 0 {
			if err := fn(page); err != nil {
				return 0, err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return uint64(rev), nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}
