package ca

import (
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"math/big"
	"time"
)

// Certificate revocation lists, for relying parties that check them (for
// example OpenSSL with -crl_check_all, which wants one from every CA in the
// chain). Each root's CRL lists the intermediates revoked under it until
// they expire; each intermediate's CRL is empty, because a leaf is revoked
// by expiry: it lives minutes, and the agent replaces every SVID of a
// tainted intermediate within a sync interval. A CRL's nextUpdate is one
// intermediate lifetime after it was signed; it is re-signed when the
// revoked set changes and at half of that, so a published one never goes
// stale. Roots of an upstream authority publish no CRL here: the upstream
// CA revokes what it signed.

// crlCache holds the last CRLs signed and when they must be re-signed.
type crlCache struct {
	version  uint64 // journalVersion they were signed for
	renewAt  time.Time
	number   int64
	crls     []*x509.RevocationList
	signedAt time.Time
}

// pruneRevoked drops revocations that have expired (a CRL need not list
// them, and no replica can bring the key back into use) or whose root has
// left the bundle. A revoked JWT key has no issuer and stays listed until it
// expires, so its owner drops it even if it was down when it was revoked.
func (ch *change) pruneRevoked() {
	kept := ch.revoked[:0]
	for _, r := range ch.revoked {
		if ch.now.Before(r.NotAfter) && (r.IssuerID == "" || ch.byID(r.IssuerID) != nil) {
			kept = append(kept, r)
			continue
		}
		// An event, so that commit saves the shorter list.
		ch.events = append(ch.events, Transition{Kind: KindIntermediate, AuthorityID: r.AuthorityID, What: "revocation_expired", At: ch.now})
	}
	ch.revoked = kept
}

// CRLs returns a CRL from every root this CA holds the key of (listing the
// intermediates revoked under it) and from every unexpired intermediate
// (empty). They are signed on first use and cached.
func (c *CA) CRLs() ([]*x509.RevocationList, error) {
	now := c.cfg.Clock.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.crls.crls != nil && c.crls.version == c.journalVersion && now.Before(c.crls.renewAt) && !now.Before(c.crls.signedAt) {
		return c.crls.crls, nil
	}
	// The CRL number only ever grows: past the last one, and past the
	// clock's seconds so that a restarted server does not go back.
	number := max(c.crls.number+1, now.Unix())
	var out []*x509.RevocationList
	for _, a := range c.authorities {
		if a.Cert == nil || a.KeyRef == upstreamKeyRef || a.Signer == nil || !now.Before(a.NotAfter) {
			continue
		}
		if a.Kind != KindRoot && a.Kind != KindIntermediate {
			continue
		}
		var entries []x509.RevocationListEntry
		for _, r := range c.revoked {
			if r.IssuerID != a.ID || r.Serial == "" {
				continue
			}
			serial, ok := new(big.Int).SetString(r.Serial, 16)
			if !ok {
				return nil, fmt.Errorf("ca: revoked %s has a bad serial %q", r.AuthorityID, r.Serial)
			}
			entries = append(entries, x509.RevocationListEntry{SerialNumber: serial, RevocationTime: r.RevokedAt.UTC(),
				ReasonCode: 1}) // keyCompromise: revoke follows a taint
		}
		tpl := &x509.RevocationList{
			Number:                    big.NewInt(number),
			ThisUpdate:                now.Add(-Backdate).UTC(),
			NextUpdate:                now.Add(c.cfg.IntermediateTTL).UTC(),
			RevokedCertificateEntries: entries,
		}
		der, err := x509.CreateRevocationList(rand.Reader, tpl, a.Cert, a.Signer)
		if err != nil {
			return nil, fmt.Errorf("ca: sign the CRL of %s %s: %w", a.Kind, a.ID, err)
		}
		crl, err := x509.ParseRevocationList(der)
		if err != nil {
			return nil, fmt.Errorf("ca: CRL of %s %s: %w", a.Kind, a.ID, err)
		}
		out = append(out, crl)
	}
	c.crls = crlCache{version: c.journalVersion, renewAt: now.Add(c.cfg.IntermediateTTL / 2), number: number, crls: out, signedAt: now}
	return out, nil
}
