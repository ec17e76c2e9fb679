package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
)

// SignDetached signs msg with the active intermediate's key, for what the CA
// vouches for besides certificates (the audit log's checkpoints). It returns
// the signature and the chain that verifies it, intermediate first: ECDSA
// and RSA (PKCS #1 v1.5) sign SHA-256(msg), as x509.ECDSAWithSHA256 and
// x509.SHA256WithRSA check; Ed25519 signs msg itself.
func (c *CA) SignDetached(msg []byte) ([]byte, []*x509.Certificate, error) {
	cur := c.active.Load()
	if cur == nil {
		return nil, nil, ErrNoActiveIntermediate
	}
	signer := cur.authority.Signer
	var sig []byte
	var err error
	switch signer.Public().(type) {
	case *ecdsa.PublicKey, *rsa.PublicKey:
		digest := sha256.Sum256(msg)
		sig, err = signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	case ed25519.PublicKey:
		sig, err = signer.Sign(rand.Reader, msg, crypto.Hash(0))
	default:
		return nil, nil, fmt.Errorf("ca: detached signature: key type %T", signer.Public())
	}
	if err != nil {
		return nil, nil, fmt.Errorf("ca: detached signature: %w", err)
	}
	return sig, append([]*x509.Certificate(nil), cur.chainTail...), nil
}
