package api

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// lastSeenFlushInterval is how often the sync times kept in memory are
// written, in one batch. It is what an agent's recorded last sync may lag;
// it stays far below the agent liveness window (at least a minute).
const lastSeenFlushInterval = 5 * time.Second

// lastSeen keeps the agents' latest sync times in memory until the next
// flush: a sync that changes nothing but the time costs no datastore write.
type lastSeen struct {
	mu      sync.Mutex
	pending map[string]time.Time
}

func (l *lastSeen) record(agentID string, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.pending == nil {
		l.pending = map[string]time.Time{}
	}
	if at.After(l.pending[agentID]) {
		l.pending[agentID] = at
	}
}

func (l *lastSeen) take() map[string]time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.pending
	l.pending = nil
	return out
}

// FlushLastSeen writes the sync times recorded since the last flush.
func (s *AgentService) FlushLastSeen(ctx context.Context) error {
	seen := s.seen.take()
	if len(seen) == 0 {
		return nil
	}
	if _, err := s.cfg.Store.RecordLastSeen(ctx, seen); err != nil {
		// Put them back (unless newer ones came in) for the next flush.
		for id, at := range seen {
			s.seen.record(id, at)
		}
		return err
	}
	return nil
}

// RunLastSeenFlusher flushes the sync times every lastSeenFlushInterval
// until ctx ends, then once more.
func (s *AgentService) RunLastSeenFlusher(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if err := s.FlushLastSeen(fctx); err != nil {
				s.cfg.Logger.Warn("could not record agents' last sync at shutdown", slog.Any("error", err))
			}
			return
		case <-s.cfg.Clock.After(lastSeenFlushInterval):
		}
		if err := s.FlushLastSeen(ctx); err != nil && ctx.Err() == nil {
			s.cfg.Logger.Error("recording agents' last sync failed; retrying", slog.Any("error", err))
		}
	}
}
