package datastore

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/shortleaf/shortleaf/ca"
)

// Replicas on etcd. Each server joins the cluster as a replica: it holds
// the key replicas/<id> under its own lease (so no two processes run as one
// replica, and the others see it live) and campaigns in the election at
// leader/ for the cluster duties. Its journal writes are fenced by the
// lease, and the leader's by its leadership: a write made after either was
// lost is refused by etcd itself.

// ReplicaLeaseTTL is the default lease: how long a crashed replica stays
// live (and leader), and how long a partitioned one keeps its claims.
const ReplicaLeaseTTL = 15 * time.Second

// leaveWait bounds each step of leaving the cluster, so that a replica
// stops even while etcd is out of reach.
const leaveWait = 5 * time.Second

// ErrReplicaLeaseLost means the replica's lease expired, or could not be
// renewed for most of its TTL (etcd out of reach); its writes are refused
// from then on.
var ErrReplicaLeaseLost = errors.New("datastore: this replica's etcd lease was lost")

// A replica gives its lease up when no renewal has succeeded for
// renewDeadlineFraction of the TTL, before etcd expires it: it stops
// serving (and leading) while no other replica can yet have taken its
// place, so a replica cut off from etcd never holds its agents, or acts
// as leader, past the moment another takes over. (Kubernetes' leader
// election does the same with its renew deadline.)
const renewDeadlineFraction = 2.0 / 3

// membership is this process's place in the cluster.
type membership struct {
	replicaID string
	session   *concurrency.Session
	election  *concurrency.Election
	// live compares the replica's key with the lease: still ours.
	live clientv3.Cmp
	// term is set while this replica leads.
	term atomic.Pointer[leaderTerm]
	// lost is set once the lease is lost or given up: no write from then on.
	lost atomic.Bool
}

// leaderTerm is one spell of leadership: the replica's election key and the
// revision that created it. A leader write compares the key's create
// revision with the term it was decided in, so a write decided in a term
// that has ended (lease expired, resigned, even if this replica leads again
// since) is refused by etcd itself.
type leaderTerm struct {
	key string
	rev int64
}

func (s *Etcd) liveKey(replicaID string) string      { return s.prefix + "replicas/" + replicaID }
func (s *Etcd) caReplicaKey(replicaID string) string { return s.prefix + "ca_replicas/" + replicaID }
func (s *Etcd) electionPrefix() string               { return s.prefix + "leader" }

// JoinCluster makes this process replica replicaID: it claims the replica's
// key, waiting up to wait for a previous holder (a crashed process's lease
// expires after LockTTL), and campaigns for leadership in the background.
// lost is closed when the lease is lost, or could not be renewed for two
// thirds of its TTL: the process must stop, since another may take its
// place.
func (s *Etcd) JoinCluster(ctx context.Context, replicaID string, wait time.Duration) (leave func(), lost <-chan struct{}, err error) {
	session, err := concurrency.NewSession(s.client, concurrency.WithTTL(int(s.lockTTL/time.Second)), concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		return nil, nil, fmt.Errorf("datastore: etcd session: %w", err)
	}
	key := s.liveKey(replicaID)
	deadline := time.Now().Add(wait)
	for {
		resp, err := s.txn(ctx, []clientv3.Cmp{absent(key)}, []clientv3.Op{clientv3.OpPut(key, replicaID, clientv3.WithLease(session.Lease()))})
		if err != nil {
			_ = session.Close()
			return nil, nil, wrapErr("join the cluster", err)
		}
		if resp.Succeeded {
			break
		}
		if time.Now().After(deadline) {
			_ = session.Close()
			return nil, nil, fmt.Errorf("datastore: another shortleaf server runs as replica %q under %s (waited %s for its lease); stop it, or give this server its own replica_id",
				replicaID, s.prefix, wait)
		}
		select {
		case <-ctx.Done():
			_ = session.Close()
			return nil, nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	m := &membership{replicaID: replicaID, session: session, election: concurrency.NewElection(session, s.electionPrefix()),
		live: clientv3.Compare(clientv3.LeaseValue(key), "=", session.Lease())}
	watchCtx, stopWatch := context.WithCancel(context.WithoutCancel(ctx))
	renewals, err := s.client.KeepAlive(watchCtx, session.Lease())
	if err != nil {
		stopWatch()
		_ = session.Close()
		return nil, nil, wrapErr("keep the replica lease alive", err)
	}
	lostCh := make(chan struct{})
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		if m.watchLease(watchCtx, renewals, time.Duration(float64(s.lockTTL)*renewDeadlineFraction)) {
			close(lostCh)
		}
	}()
	s.member.Store(m)
	campaignCtx, stopCampaign := context.WithCancel(context.WithoutCancel(ctx))
	campaignDone := make(chan struct{})
	go func() {
		defer close(campaignDone)
		if err := m.election.Campaign(campaignCtx, replicaID); err != nil {
			return // stopped, or the session ended
		}
		m.term.Store(&leaderTerm{key: m.election.Key(), rev: m.election.Rev()})
		select {
		case <-session.Done():
			m.term.Store(nil)
		case <-campaignCtx.Done():
		}
	}()
	leave = func() {
		stopWatch()
		<-watchDone
		stopCampaign()
		select {
		case <-campaignDone:
		case <-time.After(leaveWait):
			// A campaign stopped while it waits resigns under the client's
			// own context, which waits for etcd however long it is out of
			// reach; closing the client, after leave, ends it.
		}
		lctx, cancel := context.WithTimeout(context.Background(), leaveWait)
		defer cancel()
		if m.term.Swap(nil) != nil {
			_ = m.election.Resign(lctx)
		}
		s.member.Store(nil)
		_ = session.Close() // revokes the lease: the replica key goes with it
	}
	return leave, lostCh, nil
}

// giveUp stops this replica's writes; it reports whether the lease was
// lost (rather than left: ctx ended).
func (m *membership) giveUp(ctx context.Context) bool {
	if ctx.Err() != nil {
		return false
	}
	m.lost.Store(true)
	m.term.Store(nil)
	return true
}

// watchLease follows the renewals of the replica's lease and reports true
// when it is lost: expired, or not renewed within renewDeadline. It
// returns false when ctx ends (the replica leaves).
func (m *membership) watchLease(ctx context.Context, renewals <-chan *clientv3.LeaseKeepAliveResponse, renewDeadline time.Duration) bool {
	check := time.NewTicker(renewDeadline / 4)
	defer check.Stop()
	renewed := time.Now()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-m.session.Done():
			return m.giveUp(ctx)
		case _, ok := <-renewals:
			if !ok {
				return m.giveUp(ctx)
			}
			renewed = time.Now()
		case <-check.C:
			if time.Since(renewed) > renewDeadline {
				return m.giveUp(ctx)
			}
		}
	}
}

// LockTTL is the replica lease.
func (s *Etcd) LockTTL() time.Duration { return s.lockTTL }

// IsLeader reports whether this replica leads the cluster now.
func (s *Etcd) IsLeader() bool {
	_, leads := s.Leadership()
	return leads
}

// Leadership reports whether this replica leads the cluster now and in
// which term: the revision its leadership began at. A leader duty written
// with SaveCAJournal names that term and is refused once it has ended.
func (s *Etcd) Leadership() (term int64, leads bool) {
	m := s.member.Load()
	if m == nil {
		return 0, false
	}
	if t := m.term.Load(); t != nil {
		return t.rev, true
	}
	return 0, false
}

// LeaderID names the replica that leads now, or "" while none does.
func (s *Etcd) LeaderID(ctx context.Context) (string, error) {
	ctx, cancel := s.op(ctx)
	defer cancel()
	resp, err := s.client.Get(ctx, s.electionPrefix()+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		return "", wrapErr("leader", err)
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	return string(resp.Kvs[0].Value), nil
}

// LiveReplicas lists the replicas holding their lease now.
func (s *Etcd) LiveReplicas(ctx context.Context) ([]string, error) {
	var ids []string
	prefix := s.liveKey("")
	err := s.forEach(ctx, prefix, func(k, _ []byte) error {
		ids = append(ids, strings.TrimPrefix(string(k), prefix))
		return nil
	})
	sort.Strings(ids)
	return ids, wrapErr("live replicas", err)
}

// LoadCAJournal returns every record of the CA journal and the replicas
// that are live, read at one revision.
func (s *Etcd) LoadCAJournal(ctx context.Context) (ca.JournalState, error) {
	resp, err := s.txn(ctx, nil, []clientv3.Op{
		clientv3.OpGet(s.journalKey()),
		clientv3.OpGet(s.caReplicaKey(""), clientv3.WithPrefix()),
		clientv3.OpGet(s.liveKey(""), clientv3.WithPrefix(), clientv3.WithKeysOnly()),
	})
	if err != nil {
		return ca.JournalState{}, wrapErr("load CA journal", err)
	}
	state := ca.JournalState{Replicas: map[string]ca.JournalRecord{}, Live: map[string]bool{}}
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		state.Cluster = ca.JournalRecord{Data: kvs[0].Value, Revision: kvs[0].ModRevision}
	}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		state.Replicas[strings.TrimPrefix(string(kv.Key), s.caReplicaKey(""))] = ca.JournalRecord{Data: kv.Value, Revision: kv.ModRevision}
	}
	for _, kv := range resp.Responses[2].GetResponseRange().Kvs {
		state.Live[strings.TrimPrefix(string(kv.Key), s.liveKey(""))] = true
	}
	return state, nil
}

// SaveCAJournal applies w in one transaction that compares the revision of
// every record it names, this replica's lease and, for a leader duty, the
// leadership term it was decided in.
func (s *Etcd) SaveCAJournal(ctx context.Context, w ca.JournalWrite) (int64, error) {
	var cmps []clientv3.Cmp
	var ops []clientv3.Op
	m := s.member.Load()
	if m != nil {
		if m.lost.Load() {
			return 0, fmt.Errorf("datastore: save CA journal: %w", ErrReplicaLeaseLost)
		}
		if w.ReplicaID != m.replicaID {
			return 0, fmt.Errorf("datastore: save CA journal: this process is replica %q, not %q", m.replicaID, w.ReplicaID)
		}
		cmps = append(cmps, m.live)
	}
	if w.Leader && m != nil {
		t := m.term.Load()
		if t == nil || t.rev != w.LeaderTerm {
			return 0, ca.ErrNotLeader
		}
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(t.key), "=", t.rev))
	}
	if w.Cluster != nil {
		if len(w.Cluster.Data) == 0 {
			return 0, errors.New("datastore: save CA journal: empty cluster record")
		}
		cmps = append(cmps, unchanged(s.journalKey(), w.Cluster.Revision))
		ops = append(ops, clientv3.OpPut(s.journalKey(), string(w.Cluster.Data)))
	}
	if w.Replica != nil {
		key := s.caReplicaKey(w.ReplicaID)
		cmps = append(cmps, unchanged(key, w.Replica.Revision))
		ops = append(ops, clientv3.OpPut(key, string(w.Replica.Data)))
	}
	for id, rev := range w.Prune {
		key := s.caReplicaKey(id)
		cmps = append(cmps, unchanged(key, rev))
		ops = append(ops, clientv3.OpDelete(key))
	}
	resp, err := s.txn(ctx, cmps, ops)
	if err != nil {
		return 0, wrapErr("save CA journal", err)
	}
	if resp.Succeeded {
		return resp.Header.Revision, nil
	}
	// Which comparison failed: the lease, the leadership, or a record.
	if m != nil {
		select {
		case <-m.session.Done():
			return 0, fmt.Errorf("datastore: save CA journal: %w", ErrReplicaLeaseLost)
		default:
		}
		if term, leads := s.Leadership(); w.Leader && (!leads || term != w.LeaderTerm) {
			return 0, fmt.Errorf("datastore: save CA journal: %w", ca.ErrNotLeader)
		}
		if v, _, err := s.get(ctx, s.liveKey(m.replicaID)); err == nil && v == nil {
			return 0, fmt.Errorf("datastore: save CA journal: %w", ErrReplicaLeaseLost)
		}
	}
	return 0, fmt.Errorf("datastore: save CA journal: %w", ca.ErrJournalConflict)
}
