package ca

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"time"
)

// Kind is what an authority is for.
type Kind string

// Authority kinds.
const (
	KindRoot         Kind = "root"
	KindIntermediate Kind = "intermediate"
)

// State is where an authority is in its lifecycle: PREPARED → ACTIVE → OLD.
type State string

// Authority states.
const (
	StatePrepared State = "prepared"
	StateActive   State = "active"
	StateOld      State = "old"
)

// Authority is one CA key and its certificate.
type Authority struct {
	ID       string
	Kind     Kind
	State    State
	Cert     *x509.Certificate
	KeyRef   string // where the KeyManager keeps the key; never the key itself
	ParentID string // the authority that signed Cert; empty for a self-signed root
	Signer   crypto.Signer
}

// NotAfter is when the authority stops being able to sign.
func (a *Authority) NotAfter() time.Time { return a.Cert.NotAfter }

// authorityRecord is the persisted form of an Authority in the journal.
type authorityRecord struct {
	ID       string `json:"id"`
	Kind     Kind   `json:"kind"`
	State    State  `json:"state"`
	CertDER  []byte `json:"cert_der"`
	KeyRef   string `json:"key_ref"`
	ParentID string `json:"parent_id,omitempty"`
}

// journalRecord is what the CA persists: every authority and the bundle sequence.
type journalRecord struct {
	Version        int               `json:"version"`
	BundleSequence uint64            `json:"bundle_sequence"`
	Authorities    []authorityRecord `json:"authorities"`
}

const journalVersion = 1

func encodeJournal(seq uint64, auths []*Authority) ([]byte, error) {
	rec := journalRecord{Version: journalVersion, BundleSequence: seq}
	for _, a := range auths {
		rec.Authorities = append(rec.Authorities, authorityRecord{
			ID: a.ID, Kind: a.Kind, State: a.State, CertDER: a.Cert.Raw, KeyRef: a.KeyRef, ParentID: a.ParentID,
		})
	}
	return json.Marshal(rec)
}

func decodeJournal(b []byte) (*journalRecord, error) {
	var rec journalRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("ca: journal: %w", err)
	}
	if rec.Version != journalVersion {
		return nil, fmt.Errorf("ca: journal: unsupported version %d", rec.Version)
	}
	return &rec, nil
}
