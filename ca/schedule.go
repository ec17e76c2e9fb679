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

// RootSchedule decides when a self-signed root is succeeded. Like Schedule,
// its methods are pure functions of the root and the config.
//
// The successor root is prepared (created and published in the bundle)
// PrepareBefore the active root's expiry. It takes over as soon as the
// propagation gate passes (every live agent and federated consumer holds it),
// which must happen before Deadline: the last moment the old root can still
// sign a full-lifetime intermediate. If the gate is still blocked at ForceAt,
// the last moment the old root's intermediates can sign full-lifetime SVIDs,
// the successor takes over without it: the lagging consumers would lose
// trust a little later anyway, when the old root expires, and everyone else
// keeps working.
type RootSchedule struct {
	// TTL is the life of each root.
	TTL time.Duration
	// PrepareBefore is how long before the active root's expiry its successor is prepared.
	PrepareBefore time.Duration
	// IntermediateTTL and MaxSVIDTTL are those of the intermediate Schedule.
	IntermediateTTL, MaxSVIDTTL time.Duration
	// GateLead is the least time the propagation gate needs after a prepare:
	// agents must sync and federated consumers fetch the bundle.
	GateLead time.Duration
}

// DefaultRootPrepareBefore is the successor's lead when none is configured: a
// third of the root's life (four months of a one-year root).
func DefaultRootPrepareBefore(rootTTL time.Duration) time.Duration { return rootTTL / 3 }

// Validate refuses a root schedule in which the successor could not take
// over in time, or roots would follow each other without rest. Field names
// are the server config's, so the error tells the operator what to change.
func (s RootSchedule) Validate() error {
	need := s.IntermediateTTL + s.MaxSVIDTTL + s.GateLead
	if s.PrepareBefore < need {
		return &ScheduleError{Field: "root_prepare_before", Reason: fmt.Sprintf("%s leaves the propagation gate no time: the next root must be "+
			"published at least intermediate_ttl (%s) + max_x509_svid_ttl (%s) + the gate's lead (%s: agent_liveness and "+
			"3 bundle refresh hints) before the root expires; raise root_prepare_before (or root_ttl, whose third is its default) to at least %s",
			s.PrepareBefore, s.IntermediateTTL, s.MaxSVIDTTL, s.GateLead, need)}
	}
	if s.TTL < 2*s.PrepareBefore {
		return &ScheduleError{Field: "root_ttl", Reason: fmt.Sprintf("%s is shorter than twice root_prepare_before (%s): each root must be the only one "+
			"for at least half of its life; raise root_ttl to at least %s or lower root_prepare_before",
			s.TTL, s.PrepareBefore, 2*s.PrepareBefore)}
	}
	return nil
}

// ScheduleError is a schedule that cannot keep the CA's promises. Field is
// the server config key to change.
type ScheduleError struct {
	Field, Reason string
}

func (e *ScheduleError) Error() string { return "ca: " + e.Field + ": " + e.Reason }

// PrepareAt is when root's successor is created and published.
func (s RootSchedule) PrepareAt(root *Authority) time.Time {
	return root.NotAfter.Add(-s.PrepareBefore)
}

// Deadline is the last moment root can sign an intermediate for its full
// life with a max SVID TTL to spare; the successor should be active by then.
// After it, intermediates are cut short and rotate more often.
func (s RootSchedule) Deadline(root *Authority) time.Time {
	return root.NotAfter.Add(-s.IntermediateTTL - s.MaxSVIDTTL)
}

// ForceAt is when the successor takes over even though the gate is blocked:
// from then on the old root's intermediates could no longer give every SVID
// its full lifetime.
func (s RootSchedule) ForceAt(root *Authority) time.Time {
	return root.NotAfter.Add(-2 * s.MaxSVIDTTL)
}
