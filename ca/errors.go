package ca

import (
	"errors"
	"fmt"
)

var (
	// ErrNoActiveIntermediate means the CA has no intermediate it may sign with.
	ErrNoActiveIntermediate = errors.New("ca: no active intermediate authority")
	// ErrSignerExpired means the active intermediate can no longer sign anything.
	ErrSignerExpired = errors.New("ca: active intermediate has expired")
	// ErrSignerNotYetValid means the clock stepped back before the active
	// intermediate's NotBefore; the next rotation replaces it.
	ErrSignerNotYetValid = errors.New("ca: active intermediate is not yet valid (the clock stepped back)")
)

// RequestError is a rejected signing request. Field names the part of the
// request at fault, Reason says why. It never carries key material.
type RequestError struct {
	Field  string
	Reason string
}

func (e *RequestError) Error() string {
	return fmt.Sprintf("ca: %s: %s", e.Field, e.Reason)
}

func requestErr(field, format string, args ...any) error {
	return &RequestError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

var (
	// ErrNoActiveRoot means no root may sign intermediates.
	ErrNoActiveRoot = errors.New("ca: no active root authority")
	// ErrNotFound means no authority has the given ID.
	ErrNotFound = errors.New("ca: no such authority")
)

// RefusedError is an admin operation refused as unsafe, with the reason and,
// where it applies, what still stands in the way (agent IDs, authority IDs).
type RefusedError struct {
	Op       string
	Reason   string
	Blockers []string
	// reasonNamesBlockers: Reason already names the blockers, by kind.
	reasonNamesBlockers bool
}

func (e *RefusedError) Error() string {
	msg := fmt.Sprintf("ca: %s refused: %s", e.Op, e.Reason)
	if len(e.Blockers) > 0 && !e.reasonNamesBlockers {
		msg += fmt.Sprintf(" (%d: %v)", len(e.Blockers), e.Blockers)
	}
	return msg
}

// ErrNoActiveJWTKey means the CA has no JWT key it may sign with.
var ErrNoActiveJWTKey = errors.New("ca: no active JWT signing key")
