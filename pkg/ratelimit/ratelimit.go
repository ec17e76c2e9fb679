package ratelimit

import (
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// DefaultMaxKeys bounds how many callers a Limiter or a Sampler tracks.
const DefaultMaxKeys = 100_000

// Config configures a Limiter.
type Config struct {
	// PerSecond is the sustained rate allowed to each key; zero or less
	// disables the limit.
	PerSecond float64
	// Burst is how many requests a key may make at once; at least 1.
	Burst int
	// MaxKeys bounds the keys tracked; default DefaultMaxKeys.
	MaxKeys int
}

// Limiter is a set of token buckets, one per key.
type Limiter struct {
	cfg     Config
	mu      sync.Mutex
	buckets map[string]*rate.Limiter
}

// New returns a Limiter; a nil *Limiter (or one with PerSecond ≤ 0) allows
// everything.
func New(cfg Config) *Limiter {
	if cfg.PerSecond <= 0 {
		return nil
	}
	cfg.Burst = max(cfg.Burst, 1)
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = DefaultMaxKeys
	}
	return &Limiter{cfg: cfg, buckets: make(map[string]*rate.Limiter)}
}

// Allow takes n tokens from key's bucket at now and reports whether they
// were there. A request larger than the burst is never allowed.
func (l *Limiter) Allow(key string, now time.Time, n int) bool {
	if l == nil {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= l.cfg.MaxKeys {
			l.evict(now)
		}
		b = rate.NewLimiter(rate.Limit(l.cfg.PerSecond), l.cfg.Burst)
		l.buckets[key] = b
	}
	return b.AllowN(now, n)
}

// evict drops the buckets that have refilled (forgetting them changes
// nothing) and, if that frees nothing, an arbitrary half: a caller spraying
// keys then loses some of its own history, never a legitimate caller's
// ability to be served.
func (l *Limiter) evict(now time.Time) {
	for k, b := range l.buckets {
		if b.TokensAt(now) >= float64(l.cfg.Burst) {
			delete(l.buckets, k)
		}
	}
	for k := range l.buckets {
		if len(l.buckets) < l.cfg.MaxKeys/2 {
			break
		}
		delete(l.buckets, k)
	}
}

// Describe says the limit in words, for refusal messages and docs.
func (l *Limiter) Describe() string {
	if l == nil {
		return "unlimited"
	}
	return rateString(l.cfg.PerSecond) + ", burst " + strconv.Itoa(l.cfg.Burst)
}

// RetryAfter is how long a key's empty bucket takes to refill n tokens: the
// hint for a caller that was refused n.
func (l *Limiter) RetryAfter(n int) time.Duration {
	if l == nil {
		return 0
	}
	return time.Duration(float64(n) / l.cfg.PerSecond * float64(time.Second))
}

func rateString(perSecond float64) string {
	if perSecond >= 1 {
		return strconv.FormatFloat(perSecond, 'f', -1, 64) + "/s"
	}
	return strconv.FormatFloat(perSecond*60, 'f', -1, 64) + "/min"
}

// Keys is how many keys the limiter tracks now.
func (l *Limiter) Keys() int {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}
