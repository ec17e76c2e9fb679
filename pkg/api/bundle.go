package api

import (
	"crypto/x509"
	"slices"
	"strings"

	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
	agentv1 "github.com/shortleaf/shortleaf/proto/agent/v1"
)

// bundleParts is the trust bundle in wire form, shared by the agent and the
// admin API: DER roots, JWT keys as PKIX DER sorted by kid, and the sequence.
type bundleParts struct {
	trustDomain string
	sequence    uint64
	x509        [][]byte
	jwt         []jwtKey
}

type jwtKey struct {
	kid string
	der []byte
}

func readBundle(a Authority) bundleParts {
	b, seq := a.Bundle()
	out := bundleParts{trustDomain: b.TrustDomain().Name(), sequence: seq}
	for _, c := range b.X509Authorities() {
		out.x509 = append(out.x509, c.Raw)
	}
	for kid, pub := range a.JWTBundle().JWTAuthorities() {
		if der, err := x509.MarshalPKIXPublicKey(pub); err == nil {
			out.jwt = append(out.jwt, jwtKey{kid: kid, der: der})
		}
	}
	slices.SortFunc(out.jwt, func(x, y jwtKey) int { return strings.Compare(x.kid, y.kid) })
	return out
}

func (p bundleParts) agentProto() *agentv1.Bundle {
	out := &agentv1.Bundle{TrustDomain: p.trustDomain, Sequence: p.sequence, X509Authorities: p.x509}
	for _, k := range p.jwt {
		out.JwtAuthorities = append(out.JwtAuthorities, &agentv1.JWTAuthority{KeyId: k.kid, PublicKey: k.der})
	}
	return out
}

func (p bundleParts) adminProto() *adminv1.Bundle {
	out := &adminv1.Bundle{TrustDomain: p.trustDomain, Sequence: p.sequence, X509Authorities: p.x509}
	for _, k := range p.jwt {
		out.JwtAuthorities = append(out.JwtAuthorities, &adminv1.JWTAuthority{KeyId: k.kid, PublicKey: k.der})
	}
	return out
}
