package datastore

import (
	"slices"
	"strings"
	"time"

	"github.com/shortleaf/shortleaf/attest"
)

// Entry is a registration entry: which workloads (Selectors) under which agent
// (ParentID) get which SPIFFE ID.
type Entry struct {
	ID          string            `json:"id"`
	SPIFFEID    string            `json:"spiffe_id"`
	ParentID    string            `json:"parent_id"`
	Selectors   []attest.Selector `json:"selectors"`
	X509SVIDTTL time.Duration     `json:"x509_svid_ttl"`
	JWTSVIDTTL  time.Duration     `json:"jwt_svid_ttl,omitempty"`
	DNSNames    []string          `json:"dns_names,omitempty"`
	Hint        string            `json:"hint,omitempty"`
	// FederatesWith names foreign trust domains whose bundles the entry's
	// workloads receive.
	FederatesWith []string  `json:"federates_with,omitempty"`
	Admin         bool      `json:"admin,omitempty"`
	CreatedAt     time.Time `json:"created_at"`
	// Revision goes up on every update, so agents can tell a changed entry.
	Revision int64 `json:"revision"`
}

// identityKey is what makes two entries the same registration.
func (e *Entry) identityKey() string {
	sels := make([]string, len(e.Selectors))
	for i, s := range e.Selectors {
		sels[i] = s.String()
	}
	slices.Sort(sels)
	return e.SPIFFEID + "\x00" + e.ParentID + "\x00" + strings.Join(sels, "\x00")
}

// Agent is an attested node.
type Agent struct {
	SPIFFEID        string            `json:"spiffe_id"`
	AttestationType string            `json:"attestation_type"`
	Selectors       []attest.Selector `json:"selectors,omitempty"`
	// SerialNumber (hex) is the agent SVID the agent is known to use. A
	// renewal records its SVID as NewSerialNumber; the first call made with
	// it promotes it to SerialNumber. Until then both are accepted, so an
	// agent that crashed before saving its new SVID still works, and once
	// the new one is used a copy of the old one is refused.
	SerialNumber    string    `json:"serial_number"`
	NewSerialNumber string    `json:"new_serial_number,omitempty"`
	NotAfter        time.Time `json:"not_after"`
	CreatedAt       time.Time `json:"created_at"`
	LastSeen        time.Time `json:"last_seen"`
	// BundleSequence is the trust bundle sequence the agent last reported
	// holding; root activation waits for every live agent to hold the newest.
	BundleSequence uint64 `json:"bundle_sequence,omitempty"`
	// SignerKeyIDs are the key IDs (hex) of the intermediates that signed the
	// SVIDs the agent last reported holding.
	SignerKeyIDs []string `json:"signer_key_ids,omitempty"`
	// Banned agents are refused on every call and at attestation, until
	// unbanned: a node whose attestor can re-attest by itself (x509pop,
	// TPM, PSAT) would otherwise come straight back after an eviction.
	Banned bool `json:"banned,omitempty"`
}

// JoinToken is a single-use node attestation secret. Only the hash of the
// secret is stored.
type JoinToken struct {
	ID         string    `json:"id"`
	SecretHash []byte    `json:"secret_hash"`
	ExpiresAt  time.Time `json:"expires_at"`
}

// EntryWrite is one write of a batch (WriteEntries): exactly one of Create
// (an entry without ID), Update (an entry with its ID) or DeleteID.
type EntryWrite struct {
	Create   *Entry
	Update   *Entry
	DeleteID string
}

// EntryWriteResult is one write's outcome: the entry written (for a delete,
// the entry removed), or why it was refused (ErrNotFound, ErrAlreadyExists).
type EntryWriteResult struct {
	Entry *Entry
	Err   error
}
