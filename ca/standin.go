package ca

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// StandInJournal rewrites a journal with stand-in keys made by keys: every
// authority keeps its ID, kind, state, lifetime, parent, owner, taint and
// bundle sequence, and gets a fresh key and a certificate of the same shape
// signed by its parent's stand-in. `ca drill` runs the CA's real logic on it
// without ever loading, or being able to use, the real keys. An upstream
// root is replaced by upstream, a stand-in chain of the same lifetime.
func StandInJournal(ctx context.Context, state JournalState, td spiffeid.TrustDomain, keys KeyManager, keyType string, upstream *Upstream) (JournalState, error) {
	cluster, err := decodeCluster(state.Cluster.Data)
	if err != nil {
		return JournalState{}, err
	}
	c := &CA{cfg: Config{TrustDomain: td, Keys: keys, KeyType: keyType, Upstream: upstream}}
	made := map[string]*Authority{}
	standIns := func(recs []authorityRecord, roots bool) ([]authorityRecord, error) {
		var out []authorityRecord
		for _, r := range recs {
			if (r.Kind == KindRoot) != roots {
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
			rec, err := toRecord(a)
			if err != nil {
				return nil, err
			}
			out = append(out, rec)
		}
		return out, nil
	}
	// Roots first: each intermediate needs its parent's stand-in.
	roots, err := standIns(cluster.Authorities, true)
	if err != nil {
		return JournalState{}, err
	}
	others, err := standIns(cluster.Authorities, false) // a single server's journal
	if err != nil {
		return JournalState{}, err
	}
	cluster.Authorities = append(roots, others...)
	out := JournalState{Replicas: map[string]JournalRecord{}}
	if out.Cluster.Data, err = json.Marshal(cluster); err != nil {
		return JournalState{}, err
	}
	out.Cluster.Revision = 1
	for id, r := range state.Replicas {
		rec, err := decodeReplica(id, r.Data)
		if err != nil {
			return JournalState{}, err
		}
		if rec.Authorities, err = standIns(rec.Authorities, false); err != nil {
			return JournalState{}, err
		}
		raw, err := json.Marshal(rec)
		if err != nil {
			return JournalState{}, err
		}
		out.Replicas[id] = JournalRecord{Data: raw, Revision: 1}
	}
	return out, nil
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
