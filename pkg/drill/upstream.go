package drill

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"

	"github.com/shortleaf/shortleaf/ca"
)

// standInUpstream replaces an upstream authority by a self-signed stand-in
// with the same lifetime as its signing certificate: what limits the
// intermediates it signs.
func standInUpstream(up *ca.Upstream) (*ca.Upstream, error) {
	real := up.Chain[0]
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "stand-in for " + real.Subject.CommonName},
		NotBefore:             real.NotBefore,
		NotAfter:              real.NotAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("drill: stand-in upstream: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("drill: stand-in upstream: %w", err)
	}
	return &ca.Upstream{Chain: []*x509.Certificate{cert}, Signer: key}, nil
}
