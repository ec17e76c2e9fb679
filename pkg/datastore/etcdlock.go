package datastore

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// ServerLockTTL is the default lease of the server lock: how long a crashed
// server's claim outlives it, and how long a partitioned server keeps it.
const ServerLockTTL = 15 * time.Second

// ErrServerLockLost means the server lock's lease expired (etcd was out of
// reach for longer than its TTL); writes fenced by it are refused.
var ErrServerLockLost = errors.New("datastore: the etcd server lock was lost")

// ClaimServer takes the lock that makes this process the one server using
// the datastore's prefix, waiting up to wait for a previous holder (a
// crashed server's lease expires after LockTTL). Until it is released,
// every CA journal write is fenced by it: a write made after the lock was
// lost, or taken over, is refused by etcd itself. lost is closed when the
// lease is lost.
func (s *Etcd) ClaimServer(ctx context.Context, wait time.Duration) (release func(), lost <-chan struct{}, err error) {
	session, err := concurrency.NewSession(s.client, concurrency.WithTTL(int(s.lockTTL/time.Second)), concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		return nil, nil, fmt.Errorf("datastore: etcd session: %w", err)
	}
	mutex := concurrency.NewMutex(session, s.prefix+"locks/server")
	lctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	if err := mutex.Lock(lctx); err != nil {
		_ = session.Close()
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, nil, fmt.Errorf("datastore: another shortleaf server uses the etcd datastore under %s (waited %s for its lock); stop it, or give this server another datastore.prefix", s.prefix, wait)
		}
		return nil, nil, fmt.Errorf("datastore: etcd server lock: %w", err)
	}
	owner := mutex.IsOwner()
	s.fence.Store(&owner)
	release = func() {
		s.fence.Store(nil)
		uctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = mutex.Unlock(uctx)
		_ = session.Close()
	}
	return release, session.Done(), nil
}

// LockTTL is the server lock's lease.
func (s *Etcd) LockTTL() time.Duration { return s.lockTTL }

// fenced runs a write transaction under the server lock, if one is held:
// a refused comparison means the lock is no longer ours.
func (s *Etcd) fenced(ctx context.Context, op string, then ...clientv3.Op) error {
	var cmps []clientv3.Cmp
	if owner := s.fence.Load(); owner != nil {
		cmps = append(cmps, *owner)
	}
	resp, err := s.txn(ctx, cmps, then)
	if err == nil && !resp.Succeeded {
		err = ErrServerLockLost
	}
	return wrapErr(op, err)
}
