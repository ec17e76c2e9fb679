package ca

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // key identifiers only
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// X509SVIDParams is what a leaf is made of. The caller has already decided the
// request is authorized; the CA only makes sure the leaf is well formed.
type X509SVIDParams struct {
	PublicKey crypto.PublicKey
	SPIFFEID  spiffeid.ID
	DNSNames  []string
	TTL       time.Duration
}

// leafTemplate holds every field that is the same for all X.509-SVIDs; each
// signature copies it and fills in the rest. The subject stays empty, so the
// SAN extension is marked critical (RFC 5280 §4.2.1.6).
var leafTemplate = x509.Certificate{
	BasicConstraintsValid: true,
	IsCA:                  false,
	ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
}

// SignX509SVID signs an X.509-SVID with the active intermediate and returns the
// chain leaf first, then the intermediate. NotBefore is backdated by Backdate;
// NotAfter is now + TTL, never past the intermediate's NotAfter.
func (c *CA) SignX509SVID(p X509SVIDParams) ([]*x509.Certificate, error) {
	cur := c.active.Load()
	if cur == nil {
		return nil, ErrNoActiveIntermediate
	}
	if p.SPIFFEID.IsZero() {
		return nil, requestErr("spiffe_id", "is empty")
	}
	if p.SPIFFEID.TrustDomain() != c.cfg.TrustDomain {
		return nil, requestErr("spiffe_id", "%q is not in trust domain %q", p.SPIFFEID, c.cfg.TrustDomain)
	}
	if p.TTL <= 0 {
		return nil, requestErr("ttl", "must be positive")
	}
	keyUsage, err := leafKeyUsage(p.PublicKey)
	if err != nil {
		return nil, err
	}
	now := c.cfg.Clock.Now()
	signer := cur.authority
	if NotYetValid(signer, now) {
		return nil, ErrSignerNotYetValid
	}
	notAfter := now.Add(p.TTL)
	if notAfter.After(signer.Cert.NotAfter) {
		notAfter = signer.Cert.NotAfter
	}
	if !notAfter.After(now) {
		return nil, ErrSignerExpired
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tpl := leafTemplate
	tpl.SerialNumber = serial
	tpl.NotBefore = now.Add(-Backdate)
	tpl.NotAfter = notAfter
	tpl.KeyUsage = keyUsage
	tpl.SubjectKeyId, err = subjectKeyID(p.PublicKey)
	if err != nil {
		return nil, err
	}
	tpl.URIs = []*url.URL{p.SPIFFEID.URL()}
	tpl.DNSNames = p.DNSNames
	der, err := x509.CreateCertificate(rand.Reader, &tpl, signer.Cert, p.PublicKey, signer.Signer)
	if err != nil {
		return nil, fmt.Errorf("ca: sign X.509-SVID: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: parse signed X.509-SVID: %w", err)
	}
	return append([]*x509.Certificate{leaf}, cur.chainTail...), nil
}

// leafKeyUsage is digitalSignature for every key, plus keyEncipherment for RSA
// keys only (RFC 5480 forbids it for EC keys).
func leafKeyUsage(pub crypto.PublicKey) (x509.KeyUsage, error) {
	if err := CheckPublicKey(pub); err != nil {
		return 0, err
	}
	if _, ok := pub.(*rsa.PublicKey); ok {
		return x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, nil
	}
	return x509.KeyUsageDigitalSignature, nil
}

// subjectKeyID is RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey
// bits. Go adds it only to CA certificates; leaves should carry it too.
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, requestErr("public_key", "cannot be encoded: %v", err)
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil, requestErr("public_key", "cannot be encoded: %v", err)
	}
	sum := sha1.Sum(spki.PublicKey.Bytes) //nolint:gosec // RFC 5280 key identifier, not a security use
	return sum[:], nil
}
