package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/pkg/clock"
)

// serverCertificate is the server's own SVID for the agent API, re-signed by
// the CA once it is past half of its life.
type serverCertificate struct {
	ca    *ca.CA
	clock clock.Clock
	ttl   time.Duration

	mu   sync.Mutex
	cert *tls.Certificate
	leaf *x509.Certificate
}

func newServerCertificate(c *ca.CA, clk clock.Clock, ttl time.Duration) (*serverCertificate, error) {
	sc := &serverCertificate{ca: c, clock: clk, ttl: ttl}
	if _, err := sc.get(nil); err != nil {
		return nil, err
	}
	return sc, nil
}

func (sc *serverCertificate) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	now := sc.clock.Now()
	if sc.leaf != nil {
		half := sc.leaf.NotBefore.Add(sc.leaf.NotAfter.Sub(sc.leaf.NotBefore) / 2)
		if now.Before(half) {
			return sc.cert, nil
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("server: TLS key: %w", err)
	}
	chain, err := sc.ca.SignX509SVID(ca.X509SVIDParams{PublicKey: key.Public(), SPIFFEID: ca.ServerID(sc.ca.TrustDomain()), TTL: sc.ttl})
	if err != nil {
		return nil, fmt.Errorf("server: sign server SVID: %w", err)
	}
	cert := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	sc.cert, sc.leaf = cert, chain[0]
	return cert, nil
}

// verifyAgentPeer checks a client certificate, when one was sent, as an
// X.509-SVID chaining to the CA's current bundle.
func verifyAgentPeer(cs tls.ConnectionState, c *ca.CA, clk clock.Clock) error {
	if len(cs.PeerCertificates) == 0 {
		return nil
	}
	bundle, _ := c.Bundle()
	_, chains, err := x509svid.Verify(cs.PeerCertificates, bundle, x509svid.WithTime(clk.Now()))
	if err != nil {
		return fmt.Errorf("server: client certificate: %w", err)
	}
	if len(chains) == 0 {
		return errors.New("server: client certificate does not chain to the bundle")
	}
	return nil
}
