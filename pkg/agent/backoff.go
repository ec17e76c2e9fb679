package agent

import (
	"math/rand/v2"
	"time"
)

// backoff grows exponentially from min to max with ±20% jitter, so many
// agents that lost the server at once do not come back in step.
type backoff struct {
	min, max time.Duration
	cur      time.Duration
}

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur *= 2
		if b.cur > b.max {
			b.cur = b.max
		}
	}
	return jitter(b.cur, 0.2)
}

func (b *backoff) reset() { b.cur = 0 }

// jitter returns d ± frac·d, uniformly.
func jitter(d time.Duration, frac float64) time.Duration {
	return time.Duration(float64(d) * (1 + frac*(2*rand.Float64()-1))) //nolint:gosec // jitter needs spread, not secrecy
}

// spread returns a uniformly random duration in [0, window).
func spread(window time.Duration) time.Duration {
	if window <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(window))) //nolint:gosec // load spreading, not secrecy
}

// renewAt is half of the remaining life from issuedAt, ±10%.
func renewAt(issuedAt, notAfter time.Time) time.Time {
	return issuedAt.Add(jitter(notAfter.Sub(issuedAt)/2, 0.1))
}
