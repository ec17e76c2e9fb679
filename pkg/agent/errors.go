package agent

import (
	"errors"
	"sync"
)

// ErrNoIdentity means the data dir holds no valid agent SVID and no join
// token was given, so the agent cannot authenticate.
var ErrNoIdentity = errors.New("agent: join_token is required: the data dir holds no valid agent SVID")

// PermanentError is an error that no retry can cure: a refused join token,
// a trust bundle that does not verify the server, a trust domain mismatch,
// an eviction with no token to attest again. The agent stops with it, and
// its message is one line that says what to do.
type PermanentError struct {
	Msg string
	Err error
}

func (e *PermanentError) Error() string {
	if e.Err == nil {
		return e.Msg
	}
	return e.Msg + ": " + e.Err.Error()
}

func (e *PermanentError) Unwrap() error { return e.Err }

// serverCheck remembers why the last TLS handshake refused the server, so
// that a failed call can be told apart from an unreachable server (gRPC
// reports both as Unavailable).
type serverCheck struct {
	mu  sync.Mutex
	err error
}

func (c *serverCheck) set(err error) {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.err = err
	c.mu.Unlock()
}

// take returns and clears the last refusal.
func (c *serverCheck) take() error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.err
	c.err = nil
	return err
}

// errTrustDomainMismatch marks a server whose SPIFFE ID is in another trust
// domain than the agent's.
var errTrustDomainMismatch = errors.New("trust domain mismatch")
