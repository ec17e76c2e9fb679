package x509pop

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // SPIRE's fingerprint shape, an identifier, not a signature
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.step.sm/crypto/pemutil"

	"github.com/shortleaf/shortleaf/attest"
)

// Type is the attestor's name and the type of its selectors.
const Type = "x509pop"

// Limits on what an agent may send.
const (
	// MaxChain bounds the certificates of a presented chain.
	MaxChain = 8
	// MaxPayload bounds the payload, chain included.
	MaxPayload = 24 << 10
)

// signingContext is prefixed to the nonce before it is signed, so that a
// signature made for this exchange is one for nothing else the key signs.
const signingContext = "shortleaf x509pop challenge v1\x00"

// Payload is what the agent sends first.
type Payload struct {
	// CertChain is the node's certificate and the intermediates up to (not
	// including) a CA of the server's bundle, DER, leaf first.
	CertChain [][]byte `json:"cert_chain"`
}

// Challenge is the server's challenge.
type Challenge struct {
	Nonce []byte `json:"nonce"`
}

// Response answers a challenge.
type Response struct {
	// Signature over SHA-256(signingContext || nonce) by the leaf's key:
	// ASN.1 ECDSA, RSA-PSS, or Ed25519 over the unhashed message.
	Signature []byte `json:"signature"`
}

// Fingerprint is the hex SHA-1 of a certificate's DER, SPIRE's shape.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha1.Sum(cert.Raw) //nolint:gosec // an identifier, as above
	return hex.EncodeToString(sum[:])
}

// AgentID is the agent ID for a node certificate.
func AgentID(td spiffeid.TrustDomain, leaf *x509.Certificate) (spiffeid.ID, error) {
	return spiffeid.FromSegments(td, "agent", Type, Fingerprint(leaf))
}

// ParsePayload reads and bounds an agent's payload.
func ParsePayload(raw []byte) ([]*x509.Certificate, error) {
	if len(raw) > MaxPayload {
		return nil, attest.Malformed("x509pop payload is %d bytes, more than %d", len(raw), MaxPayload)
	}
	var p Payload
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, attest.Malformed("x509pop payload: %v", err)
	}
	switch n := len(p.CertChain); {
	case n == 0:
		return nil, attest.Malformed("x509pop payload: cert_chain is empty")
	case n > MaxChain:
		return nil, attest.Malformed("x509pop payload: cert_chain has %d certificates, more than %d", n, MaxChain)
	}
	chain := make([]*x509.Certificate, len(p.CertChain))
	for i, der := range p.CertChain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, attest.Malformed("x509pop payload: cert_chain[%d]: %v", i, err)
		}
		chain[i] = c
	}
	return chain, nil
}

// Server verifies x509pop attestations against a CA bundle.
type Server struct {
	roots *x509.CertPool
	now   func() time.Time
}

// NewServer returns the attestor trusting the CA certificates in cas.
func NewServer(cas []*x509.Certificate, now func() time.Time) (*Server, error) {
	if len(cas) == 0 {
		return nil, errors.New("x509pop: the CA bundle holds no certificate")
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	if now == nil {
		now = time.Now
	}
	return &Server{roots: pool, now: now}, nil
}

// Type implements attest.NodeServer.
func (s *Server) Type() string { return Type }

// Attest implements attest.NodeServer: the chain must verify to the bundle
// for client authentication now, and the leaf's key must sign the nonce.
func (s *Server) Attest(ctx context.Context, td spiffeid.TrustDomain, payload []byte, challenge attest.Challenger) (*attest.NodeResult, error) {
	chain, err := ParsePayload(payload)
	if err != nil {
		return nil, err
	}
	leaf := chain[0]
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	now := s.now()
	verified, err := leaf.Verify(x509.VerifyOptions{
		Roots: s.roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, attest.Refused("x509pop: certificate %s (subject %q) does not verify against the CA bundle: %v", leaf.SerialNumber.Text(16), leaf.Subject.CommonName, err)
	}
	nonce, err := attest.NewNonce()
	if err != nil {
		return nil, err
	}
	resp, err := attest.Ask[Response](ctx, challenge, Challenge{Nonce: nonce}, "x509pop challenge response")
	if err != nil {
		return nil, err
	}
	if err := verifySignature(leaf.PublicKey, nonce, resp.Signature); err != nil {
		return nil, attest.Refused("x509pop: the challenge was not signed by the key of certificate %s: %v", leaf.SerialNumber.Text(16), err)
	}
	id, err := AgentID(td, leaf)
	if err != nil {
		return nil, err
	}
	return &attest.NodeResult{AgentID: id, Selectors: selectors(leaf, verified[0])}, nil
}

// selectors are the node selectors of a verified chain (leaf first, its
// root last).
func selectors(leaf *x509.Certificate, verified []*x509.Certificate) []attest.Selector {
	var out []attest.Selector
	if cn := leaf.Subject.CommonName; cn != "" {
		out = append(out, attest.Selector{Type: Type, Value: "subject:cn:" + cn})
	}
	out = append(out, attest.Selector{Type: Type, Value: "serialnumber:" + leaf.SerialNumber.Text(16)})
	for _, c := range verified[1:] {
		out = append(out, attest.Selector{Type: Type, Value: "ca:fingerprint:" + Fingerprint(c)})
	}
	return out
}

// digest is what the agent signs for nonce.
func digest(nonce []byte) (message []byte, sum []byte) {
	message = append([]byte(signingContext), nonce...)
	h := sha256.Sum256(message)
	return message, h[:]
}

func verifySignature(pub any, nonce, sig []byte) error {
	message, sum := digest(nonce)
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(k, sum, sig) {
			return errors.New("ECDSA signature does not verify")
		}
		return nil
	case *rsa.PublicKey:
		return rsa.VerifyPSS(k, crypto.SHA256, sum, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto})
	case ed25519.PublicKey:
		if !ed25519.Verify(k, message, sig) {
			return errors.New("Ed25519 signature does not verify")
		}
		return nil
	}
	return fmt.Errorf("unsupported key type %T", pub)
}

// Client is the agent's side: a node certificate chain and its key.
type Client struct {
	chain  [][]byte
	signer crypto.Signer
}

// NewClient returns the attestor presenting chain (leaf first) and signing
// with key, which must be the leaf's.
func NewClient(chain []*x509.Certificate, key crypto.Signer) (*Client, error) {
	if len(chain) == 0 {
		return nil, errors.New("x509pop: no certificate")
	}
	if !publicKeysEqual(chain[0].PublicKey, key.Public()) {
		return nil, errors.New("x509pop: the private key is not the certificate's")
	}
	c := &Client{signer: key}
	for _, cert := range chain {
		c.chain = append(c.chain, cert.Raw)
	}
	return c, nil
}

func publicKeysEqual(a, b any) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// Type implements attest.NodeClient.
func (c *Client) Type() string { return Type }

// Payload implements attest.NodeClient.
func (c *Client) Payload(context.Context) ([]byte, error) {
	return json.Marshal(Payload{CertChain: c.chain})
}

// Answer implements attest.NodeClient: it signs the challenge's nonce.
func (c *Client) Answer(_ context.Context, challenge []byte) ([]byte, error) {
	var ch Challenge
	if err := json.Unmarshal(challenge, &ch); err != nil {
		return nil, fmt.Errorf("x509pop: read challenge: %w", err)
	}
	if len(ch.Nonce) != attest.NonceSize {
		return nil, fmt.Errorf("x509pop: challenge nonce is %d bytes, want %d", len(ch.Nonce), attest.NonceSize)
	}
	message, sum := digest(ch.Nonce)
	var sig []byte
	var err error
	switch c.signer.Public().(type) {
	case ed25519.PublicKey:
		sig, err = c.signer.Sign(rand.Reader, message, crypto.Hash(0))
	case *rsa.PublicKey:
		sig, err = c.signer.Sign(rand.Reader, sum, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256})
	default:
		sig, err = c.signer.Sign(rand.Reader, sum, crypto.SHA256)
	}
	if err != nil {
		return nil, fmt.Errorf("x509pop: sign challenge: %w", err)
	}
	return json.Marshal(Response{Signature: sig})
}

// FileClient is the agent's side reading the node's certificate chain and
// key from files at each attestation, so that a certificate renewed on
// disk is the one presented next.
type FileClient struct {
	CertPath, KeyPath string
	current           *Client
}

// Type implements attest.NodeClient.
func (f *FileClient) Type() string { return Type }

// Payload implements attest.NodeClient.
func (f *FileClient) Payload(ctx context.Context) ([]byte, error) {
	chain, err := pemutil.ReadCertificateBundle(f.CertPath)
	if err != nil {
		return nil, fmt.Errorf("x509pop: certificate: %w", err)
	}
	key, err := pemutil.Read(f.KeyPath)
	if err != nil {
		return nil, fmt.Errorf("x509pop: private key %s: %w", f.KeyPath, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("x509pop: private key %s: %T is not a signing key", f.KeyPath, key)
	}
	c, err := NewClient(chain, signer)
	if err != nil {
		return nil, fmt.Errorf("%w (%s, %s)", err, f.CertPath, f.KeyPath)
	}
	f.current = c
	return c.Payload(ctx)
}

// Answer implements attest.NodeClient with the key read by Payload.
func (f *FileClient) Answer(ctx context.Context, challenge []byte) ([]byte, error) {
	if f.current == nil {
		return nil, errors.New("x509pop: challenge before payload")
	}
	return f.current.Answer(ctx, challenge)
}
