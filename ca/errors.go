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
