package config

import (
	"crypto"

	"go.step.sm/crypto/pemutil"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/pkg/safefile"
)

// LoadUpstream reads an upstream CA: its certificate chain (signing
// certificate first, PEM) and its key (PEM, unencrypted or encrypted under
// the CA key passphrase).
func LoadUpstream(certFile, keyFile string, passphrase []byte) (*ca.Upstream, error) {
	if certFile == "" || keyFile == "" {
		return nil, fieldErr("upstream_authority", "cert_file and key_file are both required")
	}
	chain, err := ReadPEMCertificates(certFile)
	if err != nil {
		return nil, fieldErr("upstream_authority.cert_file", "%v", err)
	}
	if !chain[0].IsCA {
		return nil, fieldErr("upstream_authority.cert_file", "the first certificate is not a CA certificate")
	}
	var opts []pemutil.Options
	if len(passphrase) > 0 {
		opts = append(opts, pemutil.WithPassword(passphrase))
	}
	if err := safefile.CheckPrivateFile(keyFile); err != nil {
		return nil, fieldErr("upstream_authority.key_file", "%v", err)
	}
	key, err := pemutil.Read(keyFile, opts...)
	if err != nil {
		return nil, fieldErr("upstream_authority.key_file", "cannot read the key (wrong passphrase?): %v", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fieldErr("upstream_authority.key_file", "holds a %T, not a signing key", key)
	}
	if err := ca.CheckPublicKey(signer.Public()); err != nil {
		return nil, fieldErr("upstream_authority.key_file", "%v", err)
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if pub, ok := signer.Public().(equaler); !ok || !pub.Equal(chain[0].PublicKey) {
		return nil, fieldErr("upstream_authority.key_file", "the key does not match the first certificate of cert_file")
	}
	return &ca.Upstream{Chain: chain, Signer: signer}, nil
}
