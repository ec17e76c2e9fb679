package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// JWTSVIDParams is what a JWT-SVID is made of.
type JWTSVIDParams struct {
	SPIFFEID spiffeid.ID
	Audience []string
	TTL      time.Duration
}

// MaxJWTAudiences bounds the audiences of one token.
const MaxJWTAudiences = 16

// SignJWTSVID signs a JWT-SVID with the active JWT key: header alg, kid and
// typ JWT; claims sub, aud, exp and iat. exp is now + TTL and never past the
// key's own expiry (the schedule keeps the key in the JWKS until then).
func (c *CA) SignJWTSVID(p JWTSVIDParams) (string, time.Time, error) {
	key := c.activeJWT.Load()
	if key == nil {
		return "", time.Time{}, ErrNoActiveJWTKey
	}
	if p.SPIFFEID.IsZero() || p.SPIFFEID.TrustDomain() != c.cfg.TrustDomain {
		return "", time.Time{}, requestErr("spiffe_id", "%q is not in trust domain %q", p.SPIFFEID, c.cfg.TrustDomain)
	}
	if len(p.Audience) == 0 {
		return "", time.Time{}, requestErr("audience", "at least one audience is required")
	}
	if len(p.Audience) > MaxJWTAudiences {
		return "", time.Time{}, requestErr("audience", "has %d values, more than %d", len(p.Audience), MaxJWTAudiences)
	}
	for _, a := range p.Audience {
		if a == "" || len(a) > 512 {
			return "", time.Time{}, requestErr("audience", "values must be 1 to 512 characters")
		}
	}
	if p.TTL <= 0 {
		return "", time.Time{}, requestErr("ttl", "must be positive")
	}
	now := c.cfg.Clock.Now()
	if NotYetValid(key, now) {
		return "", time.Time{}, ErrSignerNotYetValid
	}
	exp := now.Add(p.TTL)
	if exp.After(key.NotAfter) {
		exp = key.NotAfter
	}
	alg, err := jwsAlgorithm(key.PublicKey)
	if err != nil {
		return "", time.Time{}, err
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: jose.JSONWebKey{Key: cryptosigner.Opaque(key.Signer), KeyID: key.ID}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return "", time.Time{}, fmt.Errorf("ca: JWT signer: %w", err)
	}
	token, err := jwt.Signed(signer).Claims(jwt.Claims{
		Subject:  p.SPIFFEID.String(),
		Audience: jwt.Audience(p.Audience),
		Expiry:   jwt.NewNumericDate(exp),
		IssuedAt: jwt.NewNumericDate(now),
	}).Serialize()
	if err != nil {
		return "", time.Time{}, fmt.Errorf("ca: sign JWT-SVID: %w", err)
	}
	return token, exp.Truncate(time.Second), nil
}

func jwsAlgorithm(pub crypto.PublicKey) (jose.SignatureAlgorithm, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return jose.ES256, nil
		case elliptic.P384():
			return jose.ES384, nil
		case elliptic.P521():
			return jose.ES512, nil
		}
	case *rsa.PublicKey:
		return jose.RS256, nil
	}
	return "", fmt.Errorf("ca: no JWT-SVID algorithm for a %T key", pub)
}

// JWTBundle returns the JWT signing keys verifiers must know: every key from
// PREPARED (published before it signs) until it is removed after the last
// token it signed has expired.
func (c *CA) JWTBundle() *jwtbundle.Bundle {
	c.mu.RLock()
	defer c.mu.RUnlock()
	keys := map[string]crypto.PublicKey{}
	for _, a := range c.authorities {
		if a.Kind == KindJWT {
			keys[a.ID] = a.PublicKey
		}
	}
	return jwtbundle.FromJWTAuthorities(c.cfg.TrustDomain, keys)
}

// SPIFFEBundle is the trust domain's bundle as published to other trust
// domains: X.509 roots, JWT keys, the sequence number and a refresh hint.
func (c *CA) SPIFFEBundle(refreshHint time.Duration) *spiffebundle.Bundle {
	x509b, seq := c.Bundle()
	b := spiffebundle.New(c.cfg.TrustDomain)
	b.SetX509Authorities(x509b.X509Authorities())
	b.SetJWTAuthorities(c.JWTBundle().JWTAuthorities())
	b.SetSequenceNumber(seq)
	if refreshHint > 0 {
		b.SetRefreshHint(refreshHint)
	}
	return b
}
