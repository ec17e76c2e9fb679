package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/pkg/clock"
)

// serverCertificate is the server's own SVID for the agent API and the
// https_spiffe bundle endpoint. It is re-signed once past half of its life,
// and at once whenever the intermediate that signed it is no longer the
// active one (rotation, root activation, a taint before a revoke): a
// certificate under a key on its way out of the trust bundle would lock out
// every agent that restarts after the key is gone.
type serverCertificate struct {
	ca     *ca.CA
	clock  clock.Clock
	ttl    time.Duration
	logger *slog.Logger

	mu    sync.Mutex
	cert  *tls.Certificate
	chain []*x509.Certificate
}

func newServerCertificate(c *ca.CA, clk clock.Clock, ttl time.Duration, logger *slog.Logger) (*serverCertificate, error) {
	sc := &serverCertificate{ca: c, clock: clk, ttl: ttl, logger: logger}
	if _, err := sc.get(nil); err != nil {
		return nil, err
	}
	return sc, nil
}

// get returns the certificate to present, re-signing it first if it is past
// half of its life or its signer is no longer active.
func (sc *serverCertificate) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	now := sc.clock.Now()
	reason := sc.staleReason(now)
	if reason == "" {
		return sc.cert, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("server: TLS key: %w", err)
	}
	chain, err := sc.ca.SignX509SVID(ca.X509SVIDParams{PublicKey: key.Public(), SPIFFEID: ca.ServerID(sc.ca.TrustDomain()), TTL: sc.ttl})
	if err != nil {
		if sc.cert != nil && now.Before(sc.chain[0].NotAfter) {
			sc.logger.Error("could not re-sign the server's TLS certificate; presenting the previous one", slog.String("reason", reason), slog.Any("error", err))
			return sc.cert, nil
		}
		return nil, fmt.Errorf("server: sign server SVID: %w", err)
	}
	cert := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	if sc.cert != nil && reason != reasonHalfLife {
		sc.logger.Info("server TLS certificate re-signed", slog.String("reason", reason),
			slog.String("signer_key_id", hex.EncodeToString(chain[1].SubjectKeyId)), slog.Time("not_after", chain[0].NotAfter))
	}
	sc.cert, sc.chain = cert, chain
	return cert, nil
}

const reasonHalfLife = "past half of its life"

// staleReason says why the current certificate must be replaced, or "".
func (sc *serverCertificate) staleReason(now time.Time) string {
	if sc.cert == nil {
		return "first start"
	}
	leaf := sc.chain[0]
	if !now.Before(leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)) {
		return reasonHalfLife
	}
	if active, err := sc.ca.ActiveIntermediate(); err == nil && !active.Equal(sc.chain[1]) {
		return "its signer is no longer the active intermediate"
	}
	return ""
}

// refresh re-signs the certificate now if it is stale, so that what the
// server presents follows the CA even between handshakes.
func (sc *serverCertificate) refresh() {
	if _, err := sc.get(nil); err != nil {
		sc.logger.Error("could not sign the server's TLS certificate", slog.Any("error", err))
	}
}

// presented returns the chain presented from now on (re-signed first if
// stale): the leaf, then its signer.
func (sc *serverCertificate) presented() []*x509.Certificate {
	sc.refresh()
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return append([]*x509.Certificate(nil), sc.chain...)
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
