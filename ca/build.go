package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"math/big"
	"time"

	"go.step.sm/crypto/x509util"
)

// CA certificate templates. They are rendered rarely (a new root or
// intermediate), so the template engine's cost does not matter here. Each
// carries the trust domain's SPIFFE ID (no path) as its only URI SAN.
const (
	rootTemplate = `{
	"subject": {{ toJson .Subject }},
	"issuer": {{ toJson .Subject }},
	"sans": {{ toJson .SANs }},
	"keyUsage": ["certSign", "crlSign"],
	"basicConstraints": {"isCA": true, "maxPathLen": 1}
}`
	intermediateTemplate = `{
	"subject": {{ toJson .Subject }},
	"sans": {{ toJson .SANs }},
	"keyUsage": ["certSign", "crlSign"],
	"basicConstraints": {"isCA": true, "maxPathLen": 0}
}`
)

func (c *CA) newRoot(ctx context.Context, now time.Time) (*Authority, error) {
	id := newAuthorityID()
	signer, ref, err := c.cfg.Keys.CreateKey(ctx, "root-"+id, c.cfg.KeyType)
	if err != nil {
		return nil, fmt.Errorf("ca: create root key: %w", err)
	}
	cert, err := c.buildCACert(rootTemplate, "shortleaf root "+id, signer, signer, nil, now, now.Add(c.cfg.RootTTL))
	if err != nil {
		return nil, err
	}
	return certAuthority(id, KindRoot, cert, ref, "", signer), nil
}

// upstreamRoot represents the upstream CA as the root authority: it signs the
// intermediates, and its key stays where the operator keeps it.
func (c *CA) upstreamRoot() *Authority {
	up := c.cfg.Upstream
	return certAuthority("upstream", KindRoot, up.Chain[0], upstreamKeyRef, "", up.Signer)
}

const upstreamKeyRef = "upstream"

// newIntermediate certifies key as an intermediate under parent.
func (c *CA) newIntermediate(key madeKey, parent *Authority, now time.Time) (*Authority, error) {
	id, signer, ref := key.id, key.signer, key.ref
	notAfter := now.Add(c.cfg.IntermediateTTL)
	if notAfter.After(parent.NotAfter) {
		notAfter = parent.NotAfter
	}
	cert, err := c.buildCACert(intermediateTemplate, "shortleaf intermediate "+id, signer, parent.Signer, parent.Cert, now, notAfter)
	if err != nil {
		return nil, err
	}
	a := certAuthority(id, KindIntermediate, cert, ref, parent.ID, signer)
	a.State = StatePrepared
	return a, nil
}

// newJWTKey makes key a JWT signing key living as long as an intermediate.
// Its ID is its "kid".
func (c *CA) newJWTKey(key madeKey, now time.Time) (*Authority, error) {
	signer, ref := key.signer, key.ref
	kid, err := jwtKeyID(signer.Public())
	if err != nil {
		return nil, fmt.Errorf("ca: JWT key ID: %w", err)
	}
	return &Authority{
		ID: kid, Kind: KindJWT, State: StatePrepared, PublicKey: signer.Public(),
		NotBefore: now.Add(-Backdate), NotAfter: now.Add(c.cfg.IntermediateTTL), KeyRef: ref, Signer: signer,
	}, nil
}

func certAuthority(id string, kind Kind, cert *x509.Certificate, ref, parent string, signer crypto.Signer) *Authority {
	return &Authority{
		ID: id, Kind: kind, State: StateActive, Cert: cert, PublicKey: cert.PublicKey,
		NotBefore: cert.NotBefore, NotAfter: cert.NotAfter, KeyRef: ref, ParentID: parent, Signer: signer,
	}
}

func isSelfSigned(c *x509.Certificate) bool {
	return c.CheckSignatureFrom(c) == nil
}

// buildCACert renders a CA template for subjectKey and signs it with
// issuerKey; a nil parent makes it self-signed.
func (c *CA) buildCACert(tmpl, commonName string, subjectKey, issuerKey crypto.Signer, parent *x509.Certificate, notBefore, notAfter time.Time) (*x509.Certificate, error) {
	subject := pkix.Name{Organization: []string{"shortleaf"}, CommonName: commonName}
	// x509util renders from a certificate request, whose signature it checks:
	// the new key signs one, proving the CA holds it.
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: subject}, subjectKey)
	if err != nil {
		return nil, fmt.Errorf("ca: CA certificate request: %w", err)
	}
	cr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("ca: CA certificate request: %w", err)
	}
	data := x509util.CreateTemplateData(commonName, []string{c.cfg.TrustDomain.ID().String()})
	data.SetSubject(x509util.Subject{Organization: x509util.MultiString(subject.Organization), CommonName: commonName})
	crt, err := x509util.NewCertificate(cr, x509util.WithTemplate(tmpl, data))
	if err != nil {
		return nil, fmt.Errorf("ca: render CA template: %w", err)
	}
	tpl := crt.GetCertificate()
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tpl.SerialNumber = serial
	tpl.NotBefore = notBefore.Add(-Backdate)
	tpl.NotAfter = notAfter
	if parent == nil {
		parent = tpl
	}
	cert, err := x509util.CreateCertificate(tpl, parent, subjectKey.Public(), issuerKey)
	if err != nil {
		return nil, fmt.Errorf("ca: sign CA certificate: %w", err)
	}
	return cert, nil
}

var serialLimit = new(big.Int).Lsh(big.NewInt(1), 128)

// newSerial returns a random, positive, non-zero 128-bit serial number.
func newSerial() (*big.Int, error) {
	for {
		n, err := rand.Int(rand.Reader, serialLimit)
		if err != nil {
			return nil, fmt.Errorf("ca: serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

func newAuthorityID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

// testSignature signs a random digest with s and verifies it with s's public key.
func testSignature(s crypto.Signer) error {
	msg := make([]byte, 32)
	if _, err := rand.Read(msg); err != nil {
		return err
	}
	digest := sha256.Sum256(msg)
	switch pub := s.Public().(type) {
	case *ecdsa.PublicKey:
		sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA256)
		if err != nil {
			return fmt.Errorf("ca: test signature: %w", err)
		}
		if !ecdsa.VerifyASN1(pub, digest[:], sig) {
			return fmt.Errorf("ca: test signature does not verify")
		}
	case *rsa.PublicKey:
		sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA256)
		if err != nil {
			return fmt.Errorf("ca: test signature: %w", err)
		}
		if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig); err != nil {
			return fmt.Errorf("ca: test signature does not verify: %w", err)
		}
	case ed25519.PublicKey:
		sig, err := s.Sign(rand.Reader, msg, crypto.Hash(0))
		if err != nil {
			return fmt.Errorf("ca: test signature: %w", err)
		}
		if !ed25519.Verify(pub, msg, sig) {
			return fmt.Errorf("ca: test signature does not verify")
		}
	default:
		return fmt.Errorf("ca: unsupported key type %T", pub)
	}
	return nil
}
