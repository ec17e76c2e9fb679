package api

import (
	"context"
	"errors"
	"io"
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/pkg/datastore"
	"github.com/shortleaf/shortleaf/pkg/entryfeed"
	"github.com/shortleaf/shortleaf/pkg/grpcstream"
	agentv1 "github.com/shortleaf/shortleaf/proto/agent/v1"
)

// Sync keeps a connected agent current: entry changes are pushed as the
// feed reports them, and each request the agent sends (when it connects,
// then every sync interval) is recorded and answered with the bundle, the
// tainted keys and the federated bundles it asks for.
func (s *AgentService) Sync(stream agentv1.AgentAPI_SyncServer) error {
	ctx := stream.Context()
	if s.cfg.Feed == nil {
		return status.Error(codes.Unimplemented, "this server does not push entries; use SyncEntries")
	}
	agentID, agent, err := s.callerAgent(ctx)
	if err != nil {
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	if err := s.recordReport(ctx, agentID, agent, first); err != nil {
		return err
	}
	s.cfg.Metrics.SyncStreams.Inc()
	defer s.cfg.Metrics.SyncStreams.Dec()

	// Requests are read on a goroutine of their own; everything is sent
	// from this one, as a gRPC stream requires.
	requests, recvErr := grpcstream.Receive(ctx, stream.Recv)

	sess := &syncSession{svc: s, stream: stream, agentID: agentID, agent: agent}
	defer sess.close()
	if err := sess.subscribe(ctx, first.GetEntriesRevision()); err != nil {
		return err
	}
	if err := sess.answer(ctx, first); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case req := <-requests:
			// Each request authenticates the agent again, so an evicted
			// agent (or one whose connection outlived its SVID) is cut off
			// within a sync interval.
			_, agent, err := s.callerAgent(ctx)
			if err != nil {
				return err
			}
			sess.agent = agent
			if err := s.recordReport(ctx, agentID, agent, req); err != nil {
				return err
			}
			if err := sess.push(ctx); err != nil {
				return err
			}
			if err := sess.answer(ctx, req); err != nil {
				return err
			}
		case <-sess.sub.Ready():
			if err := sess.push(ctx); err != nil {
				return err
			}
		}
	}
}

// syncSession is the server's side of one agent's Sync stream.
type syncSession struct {
	svc     *AgentService
	stream  agentv1.AgentAPI_SyncServer
	agentID spiffeid.ID
	// agent is the agent's record, as last read: its node selectors decide
	// the node aliases it belongs to.
	agent *datastore.Agent
	// parents are the parent IDs whose entries the agent holds (its own ID
	// and its aliases'); watched also holds the server's ID, under which
	// alias entries change.
	parents []string
	watched entryfeed.Parents
	sub     *entryfeed.Subscription
	// held is the revision up to which the agent holds every change.
	held uint64
}

func (x *syncSession) close() {
	if x.sub != nil {
		x.sub.Close()
	}
}

// subscribe catches the agent up from revision after and subscribes it to
// the changes that follow: from the feed's memory when it reaches back that
// far, with nothing to send when none of the agent's entries changed since,
// and otherwise with a full read of its entries.
func (x *syncSession) subscribe(ctx context.Context, after uint64) error {
	x.close()
	s := x.svc
	parents, err := s.parents(ctx, x.agentID, x.agent)
	if err != nil {
		return toStatus(ctx, s.cfg.Logger, "sync", err)
	}
	x.parents, x.watched = parents, s.syncParents(parents)
	sub, backlog, from, ok, err := s.cfg.Feed.Subscribe(ctx, x.watched, after)
	if errors.Is(err, entryfeed.ErrStopped) {
		return status.Error(codes.Unavailable, "the server is stopping; connect to another")
	}
	if err != nil {
		return status.FromContextError(err).Err()
	}
	x.sub = sub
	if ok {
		s.cfg.Metrics.SyncStarts.WithLabelValues("resumed").Inc()
		x.held = after
		return x.send(ctx, backlog)
	}
	if after != 0 {
		current, latest, err := s.revisions(ctx, x.watched)
		if err != nil {
			return toStatus(ctx, s.cfg.Logger, "sync", err)
		}
		// after <= current: a revision from this store's history, not from
		// a store since replaced by a restore.
		if latest <= after && after <= current {
			s.cfg.Metrics.SyncStarts.WithLabelValues("unchanged").Inc()
			x.held = max(after, from)
			return nil
		}
	}
	s.cfg.Metrics.SyncStarts.WithLabelValues("full").Inc()
	full := true
	// Each parent's entries are read at a revision of their own: the agent
	// holds every change up to the oldest of them, and changes after it
	// that a later read already held are sent again, which leaves the
	// same entries.
	var oldest uint64
	for i, parent := range x.parents {
		rev, err := s.cfg.Store.SnapshotEntriesByParent(ctx, parent, SyncPageSize, func(page []*datastore.Entry) error {
			entries := make([]*agentv1.Entry, len(page))
			for i, e := range page {
				entries[i] = s.agentEntryProto(e)
			}
			start := 0
			for _, end := range pageEnds(len(entries), func(i int) int { return proto.Size(entries[i]) }) {
				if err := x.stream.Send(&agentv1.SyncResponse{Full: full, More: true, Entries: entries[start:end]}); err != nil {
					return err
				}
				full, start = false, end
			}
			return nil
		})
		if err != nil {
			return toStatus(ctx, s.cfg.Logger, "sync", err)
		}
		if i == 0 || rev < oldest {
			oldest = rev
		}
	}
	// The feed's changes up to the snapshot's revision are in it already.
	x.held = max(oldest, from)
	return x.stream.Send(&agentv1.SyncResponse{Full: full, EntriesRevision: x.held})
}

// push sends the changes waiting on the subscription; one that fell behind
// subscribes again from the revision the agent holds.
func (x *syncSession) push(ctx context.Context) error {
	changes, lost := x.sub.Next()
	if err := x.send(ctx, changes); err != nil {
		return err
	}
	if lost {
		return x.subscribe(ctx, x.held)
	}
	return nil
}

// send sends the changes after the revision held as one change set, in
// pages: each entry once, as its last change in the set left it. A change
// to an alias entry may change the aliases the agent belongs to: then it
// reads its entries afresh.
func (x *syncSession) send(ctx context.Context, changes []datastore.EntryChange) error {
	server := ca.ServerID(x.svc.cfg.CA.TrustDomain()).String()
	holds := entryfeed.NewParents(x.parents...)
	var order []string
	final := map[string]*agentv1.Entry{} // nil: deleted
	last := x.held
	aliasChanged := false
	for _, c := range changes {
		if c.Revision <= x.held || !entryfeed.Concerns(c, x.watched) {
			continue
		}
		last = c.Revision
		if c.Entry.ParentID == server || c.OldParentID == server {
			aliasChanged = true
			if !holds[c.Entry.ParentID] && !holds[c.OldParentID] {
				continue
			}
		}
		id := c.Entry.ID
		if _, seen := final[id]; !seen {
			order = append(order, id)
		}
		if c.Deleted || !holds[c.Entry.ParentID] {
			final[id] = nil
		} else {
			final[id] = x.svc.agentEntryProto(c.Entry)
		}
	}
	if aliasChanged {
		parents, err := x.svc.parents(ctx, x.agentID, x.agent)
		if err != nil {
			return toStatus(ctx, x.svc.cfg.Logger, "sync", err)
		}
		if !slices.Equal(parents, x.parents) {
			return x.subscribe(ctx, 0)
		}
	}
	if len(order) == 0 {
		x.held = last
		return nil
	}
	x.svc.cfg.Metrics.SyncChanges.Add(float64(len(order)))
	ends := pageEnds(len(order), func(i int) int {
		if e := final[order[i]]; e != nil {
			return proto.Size(e)
		}
		return len(order[i])
	})
	start := 0
	for _, end := range ends {
		msg := &agentv1.SyncResponse{More: end < len(order)}
		for _, id := range order[start:end] {
			if e := final[id]; e != nil {
				msg.Entries = append(msg.Entries, e)
			} else {
				msg.DeletedEntryIds = append(msg.DeletedEntryIds, id)
			}
		}
		start = end
		if !msg.More {
			msg.EntriesRevision = last
		}
		if err := x.stream.Send(msg); err != nil {
			return err
		}
	}
	x.held = last
	return nil
}

// answer answers a request with the state it asks for and the revision
// the agent now holds.
func (x *syncSession) answer(ctx context.Context, req *agentv1.SyncRequest) error {
	if rev, ok := x.sub.CaughtUp(); ok {
		x.held = max(x.held, rev)
	}
	state, err := x.svc.syncState(ctx, req.GetFederatedTrustDomains())
	if err != nil {
		return err
	}
	return x.stream.Send(&agentv1.SyncResponse{EntriesRevision: x.held, State: state})
}
