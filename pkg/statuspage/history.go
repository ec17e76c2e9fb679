package statuspage

import (
	"sync"
	"time"
)

// historyMinutes is how far back the issuance history goes.
const historyMinutes = 60

// History keeps the last hour of issuance, a minute per bucket, from the
// server's cumulative counters sampled now and then (Observe).
type History struct {
	mu      sync.Mutex
	minutes [historyMinutes]minuteCounts
	last    map[string]float64
}

// minuteCounts are the requests of one minute by result.
type minuteCounts struct {
	start  time.Time
	counts map[string]float64
}

// Observe takes the cumulative counts by result at now; what they grew by
// since the last call goes to now's minute. The first call only sets the
// baseline.
func (h *History) Observe(now time.Time, totals map[string]float64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.last == nil {
		h.last = totals
		return
	}
	start := now.Truncate(time.Minute)
	b := &h.minutes[start.Unix()/60%historyMinutes]
	if !b.start.Equal(start) {
		*b = minuteCounts{start: start, counts: map[string]float64{}}
	}
	for result, v := range totals {
		if d := v - h.last[result]; d > 0 {
			b.counts[result] += d
		}
	}
	h.last = totals
}

// Minute is one minute of the history.
type Minute struct {
	Start  time.Time
	Counts map[string]float64
}

// Last returns the minutes of the hour up to now, oldest first; minutes
// without a sample have no counts.
func (h *History) Last(now time.Time) []Minute {
	h.mu.Lock()
	defer h.mu.Unlock()
	end := now.Truncate(time.Minute)
	out := make([]Minute, 0, historyMinutes)
	for i := historyMinutes - 1; i >= 0; i-- {
		start := end.Add(-time.Duration(i) * time.Minute)
		m := Minute{Start: start, Counts: map[string]float64{}}
		if b := h.minutes[start.Unix()/60%historyMinutes]; b.start.Equal(start) {
			for k, v := range b.counts {
				m.Counts[k] = v
			}
		}
		out = append(out, m)
	}
	return out
}
