package ca

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"time"
)

// Kind is what an authority is for.
type Kind string

// Authority kinds. Intermediates and JWT keys rotate on a schedule; roots are
// rotated by an admin.
const (
	KindRoot         Kind = "root"
	KindIntermediate Kind = "intermediate"
	KindJWT          Kind = "jwt"
)

// State is where an authority is in its lifecycle: PREPARED → ACTIVE → OLD,
// then removed from the journal.
type State string

// Authority states.
const (
	// StatePrepared: created and published (in the bundle or JWKS) but not
	// signing yet.
	StatePrepared State = "prepared"
	// StateActive: the one key of its kind that signs.
	StateActive State = "active"
	// StateOld: signs nothing more; kept while what it signed is still valid.
	StateOld State = "old"
)

// Authority is one CA key: a root, an intermediate or a JWT signing key.
type Authority struct {
	ID        string
	Kind      Kind
	State     State
	Cert      *x509.Certificate // nil for JWT keys
	PublicKey crypto.PublicKey
	NotBefore time.Time
	NotAfter  time.Time
	KeyRef    string // where the KeyManager keeps the key; never the key itself
	ParentID  string // the authority that signed Cert; empty for a root
	// Tainted marks a key an admin no longer trusts: agents replace
	// everything it signed, after which it may be revoked.
	Tainted bool
	// BundleSequence is, for roots and JWT keys, the bundle sequence number
	// that first published it.
	BundleSequence uint64
	// Replica is the replica that owns an intermediate or JWT key (only it
	// signs with it); empty for roots, which the cluster shares.
	Replica string
	Signer  crypto.Signer
	// ownTaint is the taint recorded in the owner's record (before
	// replicas); Tainted also counts the cluster record's taints.
	ownTaint  bool
	sealedKey []byte
}

// KeyID identifies the key: for certificates its subject key ID (which
// leaves carry as authority key ID), for JWT keys the JWT "kid".
func (a *Authority) KeyID() string {
	if a.Cert != nil {
		return hex.EncodeToString(a.Cert.SubjectKeyId)
	}
	return a.ID
}

func (a *Authority) clone() *Authority {
	cp := *a
	return &cp
}

// authorityRecord is the persisted form of an Authority in the journal.
type authorityRecord struct {
	ID             string    `json:"id"`
	Kind           Kind      `json:"kind"`
	State          State     `json:"state"`
	CertDER        []byte    `json:"cert_der,omitempty"`
	PublicKeyDER   []byte    `json:"public_key_der,omitempty"`
	NotBefore      time.Time `json:"not_before"`
	NotAfter       time.Time `json:"not_after"`
	KeyRef         string    `json:"key_ref"`
	ParentID       string    `json:"parent_id,omitempty"`
	Tainted        bool      `json:"tainted,omitempty"`
	BundleSequence uint64    `json:"bundle_sequence,omitempty"`
	// SealedKey is a root's key encrypted under the key passphrase (PKCS#8
	// PEM), when the key manager keeps keys on one machine: every replica
	// can then sign intermediates. KeyRef is then sealedKeyRef.
	SealedKey []byte `json:"sealed_key,omitempty"`
}

// RevokedCertificate is an intermediate removed by Revoke, listed in its
// root's CRL until it expires.
type RevokedCertificate struct {
	AuthorityID string    `json:"authority_id"`
	IssuerID    string    `json:"issuer_id"`
	Serial      string    `json:"serial"` // hex
	RevokedAt   time.Time `json:"revoked_at"`
	NotAfter    time.Time `json:"not_after"`
}

// toRecord is the persisted form of a.
func toRecord(a *Authority) (authorityRecord, error) {
	r := authorityRecord{
		ID: a.ID, Kind: a.Kind, State: a.State, NotBefore: a.NotBefore, NotAfter: a.NotAfter,
		KeyRef: a.KeyRef, ParentID: a.ParentID, Tainted: a.ownTaint, BundleSequence: a.BundleSequence, SealedKey: a.sealedKey,
	}
	if a.Cert != nil {
		r.CertDER = a.Cert.Raw
		return r, nil
	}
	der, err := x509.MarshalPKIXPublicKey(a.PublicKey)
	if err != nil {
		return r, fmt.Errorf("authority %s: %w", a.ID, err)
	}
	r.PublicKeyDER = der
	return r, nil
}

// fromRecord rebuilds an authority (without its signer) from the journal. A
// record that could not have been written (an unknown kind or state, a
// lifetime that ends before it starts) is refused: the journal is damaged.
func fromRecord(r authorityRecord) (*Authority, error) {
	switch r.Kind {
	case KindRoot, KindIntermediate, KindJWT:
	default:
		return nil, fmt.Errorf("ca: journal: authority %s has unknown kind %q", r.ID, r.Kind)
	}
	switch r.State {
	case StatePrepared, StateActive, StateOld:
	default:
		return nil, fmt.Errorf("ca: journal: authority %s has unknown state %q", r.ID, r.State)
	}
	if !r.NotAfter.After(r.NotBefore) {
		return nil, fmt.Errorf("ca: journal: authority %s ends (%s) before it starts (%s)", r.ID, r.NotAfter, r.NotBefore)
	}
	a := &Authority{
		ID: r.ID, Kind: r.Kind, State: r.State, NotBefore: r.NotBefore, NotAfter: r.NotAfter,
		KeyRef: r.KeyRef, ParentID: r.ParentID, Tainted: r.Tainted, ownTaint: r.Tainted, BundleSequence: r.BundleSequence,
		sealedKey: r.SealedKey,
	}
	switch {
	case len(r.CertDER) > 0:
		cert, err := x509.ParseCertificate(r.CertDER)
		if err != nil {
			return nil, fmt.Errorf("ca: journal: authority %s: %w", r.ID, err)
		}
		a.Cert, a.PublicKey = cert, cert.PublicKey
	case len(r.PublicKeyDER) > 0:
		pub, err := x509.ParsePKIXPublicKey(r.PublicKeyDER)
		if err != nil {
			return nil, fmt.Errorf("ca: journal: authority %s: %w", r.ID, err)
		}
		a.PublicKey = pub
	default:
		return nil, fmt.Errorf("ca: journal: authority %s has neither certificate nor public key", r.ID)
	}
	return a, nil
}

// jwtKeyID derives a stable kid from a public key.
func jwtKeyID(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:12]), nil
}
