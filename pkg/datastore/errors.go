package datastore

import "errors"

var (
	// ErrNotFound means the requested record does not exist.
	ErrNotFound = errors.New("datastore: not found")
	// ErrAlreadyExists means an equal record is already stored.
	ErrAlreadyExists = errors.New("datastore: already exists")
	// ErrTokenInvalid means a join token is unknown, already used or does not match.
	ErrTokenInvalid = errors.New("datastore: join token is unknown or already used")
	// ErrTokenExpired means a join token was presented after its expiry; it is
	// deleted all the same.
	ErrTokenExpired = errors.New("datastore: join token has expired")
	// ErrChanged means a record changed since it was read; the write based
	// on the old copy was not made.
	ErrChanged = errors.New("datastore: record changed since it was read")
	// ErrAgentBanned means an agent ID is banned: it may not attest until an
	// admin unbans it.
	ErrAgentBanned = errors.New("datastore: agent is banned")
)

// ExistsError is ErrAlreadyExists naming the record that is already stored,
// so that an operator can find it.
type ExistsError struct {
	ID string
}

func (e *ExistsError) Error() string { return "datastore: already exists as " + e.ID }

// Is makes errors.Is(err, ErrAlreadyExists) hold.
func (e *ExistsError) Is(target error) bool { return target == ErrAlreadyExists }

// ErrCompacted means a watch or a read asked for a revision older than the
// history the store still keeps: start again from a full read.
var ErrCompacted = errors.New("datastore: revision is older than the history kept (compacted)")
