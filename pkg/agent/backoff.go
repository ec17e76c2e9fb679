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

// RenewAt is when the agent renews an SVID obtained at issuedAt: half of its
// remaining life, ±10%, so renewals of many SVIDs spread out.
func RenewAt(issuedAt, notAfter time.Time) time.Time {
	return issuedAt.Add(jitter(notAfter.Sub(issuedAt)/2, 0.1))
}

// BusyRenewAt is RenewAt while the server reports its signing queue busy: a
// third of the remaining life, ±10%, so the next renewals start early and
// spread out, and an SVID has two thirds of its life to be renewed in. Early
// renewals are the least urgent in the server's queue: they cost nothing
// when the server is still busy, since they wait behind every urgent one.
func BusyRenewAt(issuedAt, notAfter time.Time) time.Time {
	return issuedAt.Add(jitter(notAfter.Sub(issuedAt)/3, 0.1))
}

// TaintedRenewAt is when the agent replaces an SVID whose signer was reported
// tainted at now: a random moment within window (one sync interval), or its
// scheduled renewal if that comes first.
func TaintedRenewAt(now, scheduled time.Time, window time.Duration) time.Time {
	if at := now.Add(spread(window)); at.Before(scheduled) {
		return at
	}
	return scheduled
}
