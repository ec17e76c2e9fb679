package ratelimit

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Sampler logs (or lets its caller record) at most one line per key per
// interval; the next line after a quiet spell says how many were suppressed.
type Sampler struct {
	log      *slog.Logger
	interval time.Duration
	maxKeys  int

	mu   sync.Mutex
	keys map[string]*sample
}

type sample struct {
	logged     time.Time
	suppressed int
}

// NewSampler returns a Sampler writing to log.
func NewSampler(log *slog.Logger, interval time.Duration) *Sampler {
	return &Sampler{log: log, interval: interval, maxKeys: DefaultMaxKeys, keys: make(map[string]*sample)}
}

// Warn logs msg at warning level for key unless key already had a line in
// the last interval, in which case it is only counted.
func (s *Sampler) Warn(ctx context.Context, now time.Time, key, msg string, attrs ...any) {
	suppressed, ok := s.Take(now, key)
	if !ok {
		return
	}
	if suppressed > 0 {
		attrs = append(attrs, slog.Int("suppressed_since_last", suppressed))
	}
	s.log.WarnContext(ctx, msg, attrs...)
}

// Take reports whether key may have its sample now (none in the last
// interval) and, if so, how many were suppressed since the last one.
func (s *Sampler) Take(now time.Time, key string) (suppressed int, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sm, ok := s.keys[key]
	if ok && now.Sub(sm.logged) < s.interval {
		sm.suppressed++
		return 0, false
	}
	if !ok {
		if len(s.keys) >= s.maxKeys {
			s.forget(now)
		}
		sm = &sample{}
		s.keys[key] = sm
	}
	suppressed = sm.suppressed
	sm.logged, sm.suppressed = now, 0
	return suppressed, true
}

// forget drops keys quiet for an interval, then an arbitrary half if needed.
func (s *Sampler) forget(now time.Time) {
	for k, sm := range s.keys {
		if now.Sub(sm.logged) >= s.interval {
			delete(s.keys, k)
		}
	}
	for k := range s.keys {
		if len(s.keys) < s.maxKeys/2 {
			break
		}
		delete(s.keys, k)
	}
}
