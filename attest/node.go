package attest

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Node attestation: an agent proves which node it runs on. The agent sends
// its attestor's evidence (NodeClient.Payload); the server's attestor
// (NodeServer.Attest) checks it and, for evidence that a copy could replay,
// challenges the agent with a fresh nonce that only the holder of the
// node's key can answer.

// NodeResult is what a node attestation proves: the agent's ID, derived
// from the node's identity (the same node attests to the same ID), and the
// node selectors that entries and node aliases can match.
type NodeResult struct {
	AgentID   spiffeid.ID
	Selectors []Selector
}

// Challenger sends challenge to the agent being attested and returns its
// answer. It fails once the challenge's deadline has passed.
type Challenger func(ctx context.Context, challenge []byte) ([]byte, error)

// NodeServer is a node attestor on the server.
type NodeServer interface {
	// Type is the attestor's name ("x509pop"), the type of its selectors.
	Type() string
	// Attest checks payload, challenging the agent as it needs to. A
	// refusal wraps ErrMalformed or ErrRefused; any other error is the
	// attestor failing (an API it needs was unreachable).
	Attest(ctx context.Context, td spiffeid.TrustDomain, payload []byte, challenge Challenger) (*NodeResult, error)
}

// NodeClient is a node attestor on the agent.
type NodeClient interface {
	Type() string
	// Payload is the evidence sent first, read afresh for each attestation.
	Payload(ctx context.Context) ([]byte, error)
	// Answer answers one of the server's challenges.
	Answer(ctx context.Context, challenge []byte) ([]byte, error)
}

var (
	// ErrMalformed means evidence that cannot be read: bad JSON, a missing
	// field, an unparsable certificate.
	ErrMalformed = errors.New("malformed attestation data")
	// ErrRefused means evidence that was read and does not prove what it
	// claims: an untrusted chain, a wrong signature, an invalid token.
	ErrRefused = errors.New("attestation refused")
)

// Malformed is an ErrMalformed naming what is wrong.
func Malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// Refused is an ErrRefused naming why.
func Refused(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, args...))
}

// NonceSize is the size of a challenge nonce: 256 random bits, never
// repeated in practice.
const NonceSize = 32

// NewNonce returns a fresh random nonce.
func NewNonce() ([]byte, error) {
	n := make([]byte, NonceSize)
	if _, err := rand.Read(n); err != nil {
		return nil, fmt.Errorf("attest: nonce: %w", err)
	}
	return n, nil
}

// Ask sends challenge, as JSON, through ask and decodes the agent's answer
// into a T; an answer that is not one is ErrMalformed naming what.
func Ask[T any](ctx context.Context, ask Challenger, challenge any, what string) (*T, error) {
	raw, err := json.Marshal(challenge)
	if err != nil {
		return nil, err
	}
	answer, err := ask(ctx, raw)
	if err != nil {
		return nil, err
	}
	var out T
	if err := json.Unmarshal(answer, &out); err != nil {
		return nil, Malformed("%s: %v", what, err)
	}
	return &out, nil
}
