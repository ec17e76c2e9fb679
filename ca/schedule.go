package ca

import (
	"fmt"
	"time"
)

// Schedule decides when keys of a rotating kind (intermediates, JWT keys)
// move on. Every method is a pure function of an authority and the config,
// so tests can walk months of rotations without a clock.
//
// An active key is replaced while it can still sign something with the
// longest lifetime asked of it (MaxSignedTTL), so nothing it signs is ever cut
// short; its successor is prepared at half of its life (or earlier, if that is
// when it must take over). An old key is removed when it expires, which is
// after everything it signed has expired.
type Schedule struct {
	// TTL is the life of each key.
	TTL time.Duration
	// MaxSignedTTL is the longest lifetime of anything the key signs.
	MaxSignedTTL time.Duration
}

// Validate refuses a schedule that cannot give every SVID its full TTL.
func (s Schedule) Validate() error {
	if s.TTL <= 0 || s.MaxSignedTTL <= 0 {
		return fmt.Errorf("ca: schedule needs positive TTLs (key %s, signed %s)", s.TTL, s.MaxSignedTTL)
	}
	if s.TTL < 2*s.MaxSignedTTL {
		return fmt.Errorf("ca: an intermediate lifetime of %s cannot give %s SVIDs their full lifetime: "+
			"intermediate_ttl must be at least twice the longest SVID TTL (raise intermediate_ttl to %s or lower the SVID TTLs)",
			s.TTL, s.MaxSignedTTL, 2*s.MaxSignedTTL)
	}
	return nil
}

// ActivateAt is when the successor of active must take over: the last moment
// active can still sign a full-lifetime SVID.
func (s Schedule) ActivateAt(active *Authority) time.Time {
	return active.NotAfter.Add(-s.MaxSignedTTL)
}

// PrepareAt is when active's successor is created and published: half of
// active's life (counted from its issue, not its backdated NotBefore), or its
// activation time if that is earlier.
func (s Schedule) PrepareAt(active *Authority) time.Time {
	issued := active.NotBefore.Add(Backdate)
	half := issued.Add(active.NotAfter.Sub(issued) / 2)
	if at := s.ActivateAt(active); at.Before(half) {
		return at
	}
	return half
}

// RemoveAt is when an old key leaves the journal (and the JWKS): everything
// it signed has expired by then.
func (s Schedule) RemoveAt(old *Authority) time.Time {
	return old.NotAfter
}

// CanSignFullTTL reports whether a signs a MaxSignedTTL lifetime at now.
func (s Schedule) CanSignFullTTL(a *Authority, now time.Time) bool {
	return !now.Add(s.MaxSignedTTL).After(a.NotAfter)
}

// NotYetValid reports whether a's NotBefore is after now: the clock stepped
// back past the moment a was issued. Nothing a signs now would chain.
func NotYetValid(a *Authority, now time.Time) bool {
	return now.Before(a.NotBefore)
}
