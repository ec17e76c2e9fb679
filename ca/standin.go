package ca

import (
	"context"
	"crypto/x509"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// StandInJournal rewrites a journal with stand-in keys made by keys: every
// authority keeps its ID, kind, state, lifetime, parent, taint and bundle
// sequence, and gets a fresh key and a certificate of the same shape signed
// by its parent's stand-in. `ca drill` runs the CA's real logic on it
// without ever loading, or being able to use, the real keys. An upstream
// root is replaced by upstream, a stand-in chain of the same lifetime.
func StandInJournal(ctx context.Context, raw []byte, td spiffeid.TrustDomain, keys KeyManager, keyType string, upstream *Upstream) ([]byte, error) {
	rec, err := decodeJournal(raw)
	if err != nil {
		return nil, err
	}
	c := &CA{cfg: Config{TrustDomain: td, Keys: keys, KeyType: keyType, Upstream: upstream}}
	made := map[string]*Authority{}
	var out []*Authority
	// Roots first: each intermediate needs its parent's stand-in.
	for _, pass := range []func(Kind) bool{
		func(k Kind) bool { return k == KindRoot },
		func(k Kind) bool { return k != KindRoot },
	} {
		for _, r := range rec.Authorities {
			if !pass(r.Kind) {
				continue
			}
			orig, err := fromRecord(r)
			if err != nil {
				return nil, err
			}
			a, err := c.standIn(ctx, orig, made)
			if err != nil {
				return nil, fmt.Errorf("ca: stand-in for authority %s: %w", r.ID, err)
			}
			made[a.ID] = a
			out = append(out, a)
		}
	}
	return encodeJournal(rec.BundleSequence, out, rec.Revoked)
}

func (c *CA) standIn(ctx context.Context, orig *Authority, made map[string]*Authority) (*Authority, error) {
	var a *Authority
	switch {
	case orig.KeyRef == upstreamKeyRef:
		if c.cfg.Upstream == nil {
			return nil, fmt.Errorf("the journal has an upstream root but no stand-in upstream was given")
		}
		a = c.upstreamRoot()
	case orig.Kind == KindJWT:
		signer, ref, err := c.cfg.Keys.CreateKey(ctx, "jwt-"+orig.ID, c.cfg.KeyType)
		if err != nil {
			return nil, err
		}
		a = &Authority{Kind: KindJWT, PublicKey: signer.Public(), KeyRef: ref, Signer: signer}
	default:
		signer, ref, err := c.cfg.Keys.CreateKey(ctx, string(orig.Kind)+"-"+orig.ID, c.cfg.KeyType)
		if err != nil {
			return nil, err
		}
		tmpl, issuer := rootTemplate, signer
		var parentCert *x509.Certificate // self-signed
		if orig.Kind == KindIntermediate {
			parent := made[orig.ParentID]
			if parent == nil {
				return nil, fmt.Errorf("its parent %s is not in the journal", orig.ParentID)
			}
			tmpl, issuer, parentCert = intermediateTemplate, parent.Signer, parent.Cert
		}
		cert, err := c.buildCACert(tmpl, "shortleaf "+string(orig.Kind)+" "+orig.ID+" (stand-in)", signer, issuer, parentCert,
			orig.NotBefore.Add(Backdate), orig.NotAfter)
		if err != nil {
			return nil, err
		}
		a = certAuthority(orig.ID, orig.Kind, cert, ref, orig.ParentID, signer)
	}
	a.ID, a.State, a.Tainted, a.BundleSequence, a.ParentID = orig.ID, orig.State, orig.Tainted, orig.BundleSequence, orig.ParentID
	a.NotBefore, a.NotAfter = orig.NotBefore, orig.NotAfter
	return a, nil
}
