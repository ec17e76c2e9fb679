package api

import (
	"sync"
	"time"
)

// signedUntil remembers, per entry, the NotAfter (Unix seconds) of the last
// X.509-SVID this server signed for it, so the signing queue can order a CSR
// by what its agent was given rather than by what it claims to hold. An
// entry whose SVID has expired is forgotten at the next sweep; the map holds
// at most one number per entry with a live SVID.
type signedUntil struct {
	mu        sync.Mutex
	notAfter  map[string]int64
	nextSweep int // sweep when the map reaches this size
}

const minSignedSweep = 1024

func (s *signedUntil) get(entryID string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.notAfter[entryID]
}

func (s *signedUntil) put(entryID string, notAfter, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.notAfter == nil {
		s.notAfter, s.nextSweep = map[string]int64{}, minSignedSweep
	}
	s.notAfter[entryID] = notAfter.Unix()
	if len(s.notAfter) < s.nextSweep {
		return
	}
	// Amortized: a sweep happens only after the map doubled since the last.
	cutoff := now.Unix()
	for id, n := range s.notAfter {
		if n <= cutoff {
			delete(s.notAfter, id)
		}
	}
	s.nextSweep = max(2*len(s.notAfter), minSignedSweep)
}
