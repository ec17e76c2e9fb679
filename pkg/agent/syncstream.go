package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/shortleaf/shortleaf/proto/agent/v1"
)

// syncStream is the agent's side of an open Sync stream. Its receiver
// goroutine hands each message to the manage loop, which alone changes the
// agent's state.
type syncStream struct {
	conn   *grpc.ClientConn // the connection it runs on
	stream agentv1.AgentAPI_SyncClient
	cancel context.CancelFunc
	events chan syncEvent
	// asked is when the request not answered yet was sent; zero when none.
	asked time.Time
	// opened is when the stream was opened; answers counts its answers.
	opened  time.Time
	answers int
	// pending gathers a change set whose pages are still arriving.
	pending *changeSet
	// askAgain: the entries changed what the request in flight asks for
	// (the federated trust domains); ask again once it is answered.
	askAgain bool
}

// minHealthyStream is how long a stream must have lasted (and been
// answered) for its end to be taken as routine: replacing it at once can
// then not spin.
const minHealthyStream = time.Second

type syncEvent struct {
	msg *agentv1.SyncResponse
	err error
}

// changeSet is one set of entry changes: a full read, or changes to apply
// to the entries held.
type changeSet struct {
	full    bool
	upserts map[string]*entry
	deletes []string
}

// openSync opens a Sync stream on the current connection, starts its
// receiver and sends the first request with the entries revision held.
func (a *Agent) openSync(ctx context.Context) error {
	a.mu.Lock()
	conn, client := a.conn, a.client
	a.mu.Unlock()
	sctx, cancel := context.WithCancel(ctx)
	stream, err := client.Sync(sctx)
	if err != nil {
		cancel()
		return fmt.Errorf("agent: sync: %w", err)
	}
	s := &syncStream{conn: conn, stream: stream, cancel: cancel, events: make(chan syncEvent, 16), opened: a.cfg.Clock.Now()}
	go func() {
		for {
			msg, err := stream.Recv()
			select {
			case s.events <- syncEvent{msg: msg, err: err}:
			case <-sctx.Done():
				return
			}
			select {
			case a.syncWake <- struct{}{}:
			default:
			}
			if err != nil {
				return
			}
		}
	}()
	a.stream = s
	return a.askSync(a.entriesRevision)
}

// closeSync ends the stream, if one is open.
func (a *Agent) closeSync() {
	if a.stream != nil {
		a.stream.cancel()
		a.stream = nil
	}
}

// askSync sends a request: the report the server records, and the question
// its answer (the bundle, taints, federated bundles) replies to.
func (a *Agent) askSync(entriesRevision uint64) error {
	_, seq := a.cache.getBundle()
	signers := a.cache.signerKeyIDs()
	a.mu.Lock()
	if len(a.svidChain) > 0 && len(a.svidChain[0].AuthorityKeyId) > 0 {
		signers = append(signers, a.svidChain[0].AuthorityKeyId)
	}
	a.mu.Unlock()
	err := a.stream.stream.Send(&agentv1.SyncRequest{
		BundleSequence: seq, SignerKeyIds: signers, EntriesRevision: entriesRevision, FederatedTrustDomains: a.federatedTDs,
		AgentTimeUnixMs: a.cfg.Clock.Now().UnixMilli(),
	})
	if err != nil {
		// Send reports only that the stream is broken; Recv has the reason.
		a.closeSync()
		return fmt.Errorf("agent: sync: %w", err)
	}
	a.stream.asked = a.cfg.Clock.Now()
	return nil
}

// requestSync sends the periodic request, opening a stream when none is
// open (or the connection was replaced since, after a renewal). A request
// left unanswered for rpcTimeout means the server or the path to it is
// gone: the stream is dropped and the error returned.
func (a *Agent) requestSync(ctx context.Context) error {
	a.mu.Lock()
	conn := a.conn
	a.mu.Unlock()
	if a.stream != nil && a.stream.conn != conn {
		a.closeSync()
	}
	if a.stream == nil {
		return a.openSync(ctx)
	}
	if !a.stream.asked.IsZero() {
		if a.cfg.Clock.Now().Sub(a.stream.asked) < rpcTimeout {
			return nil // the answer to the last request is still due
		}
		a.closeSync()
		return fmt.Errorf("agent: sync: the server did not answer within %s", rpcTimeout)
	}
	return a.askSync(0)
}

// pumpSync applies every message received so far. answered reports that a
// request was answered (the server is reachable and current); askNow that
// the entries now federate with other trust domains, whose bundles the next
// request asks for.
func (a *Agent) pumpSync() (answered, askNow bool, err error) {
	for a.stream != nil {
		select {
		case ev := <-a.stream.events:
			if ev.err != nil {
				// A stream that served its time and was closed by the
				// server (its connection reached its maximum age, the
				// server is stopping) is replaced at once, not counted as
				// a failure.
				healthy := a.stream.answers > 0 && a.cfg.Clock.Now().Sub(a.stream.opened) >= minHealthyStream
				a.closeSync()
				if healthy && (status.Code(ev.err) == codes.Unavailable || errors.Is(ev.err, io.EOF)) {
					a.cfg.Logger.Debug("sync stream ended; opening another", slog.Any("reason", ev.err))
					return answered, true, nil
				}
				return answered, askNow, fmt.Errorf("agent: sync: %w", ev.err)
			}
			got, ask, err := a.applySyncMessage(ev.msg)
			if err != nil {
				a.closeSync()
				return answered, askNow, err
			}
			answered, askNow = answered || got, askNow || ask
		default:
			return answered, askNow, nil
		}
	}
	return answered, askNow, nil
}

// applySyncMessage applies one message: entry changes once their change
// set is complete, then the state it answers with.
func (a *Agent) applySyncMessage(msg *agentv1.SyncResponse) (answered, askNow bool, err error) {
	s := a.stream
	if msg.GetFull() || len(msg.GetEntries()) > 0 || len(msg.GetDeletedEntryIds()) > 0 {
		if s.pending == nil {
			s.pending = &changeSet{full: msg.GetFull(), upserts: map[string]*entry{}}
		}
		for _, pe := range msg.GetEntries() {
			e, err := entryFromProto(pe)
			if err != nil {
				a.cfg.Logger.Warn("skipping malformed entry from server", slog.String("entry_id", pe.GetId()), slog.Any("error", err))
				continue
			}
			s.pending.upserts[e.ID] = e
		}
		s.pending.deletes = append(s.pending.deletes, msg.GetDeletedEntryIds()...)
	}
	if msg.GetMore() {
		return false, false, nil
	}
	if set := s.pending; set != nil {
		s.pending = nil
		entries := set.upserts
		if !set.full {
			entries = a.cache.entriesSnapshot()
			for _, id := range set.deletes {
				delete(entries, id)
			}
			maps.Copy(entries, set.upserts)
		}
		a.cache.setEntries(entries)
		if tds := federatedTrustDomains(entries); !slices.Equal(tds, a.federatedTDs) {
			a.federatedTDs = tds
			if s.asked.IsZero() {
				askNow = true
			} else {
				s.askAgain = true
			}
		}
	}
	if rev := msg.GetEntriesRevision(); rev != 0 {
		a.entriesRevision = rev
	}
	st := msg.GetState()
	if st == nil {
		return false, askNow, nil
	}
	s.asked = time.Time{}
	s.answers++
	if s.askAgain {
		s.askAgain, askNow = false, true
	}
	if err := a.applyState(st.GetBundle(), a.parseFederated(st.GetFederatedBundles())); err != nil {
		return false, askNow, err
	}
	a.applyTaints(st.GetTaintedKeyIds())
	return true, askNow, nil
}
