package agent

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/shortleaf/shortleaf/ca"
)

// tlsConfig authenticates the server as the SVID ServerID(td), verified
// against bundle(), and presents clientCert() when it has one. Go's hostname
// verification is replaced by SPIFFE verification, not skipped: an unverifiable
// server fails the handshake.
func tlsConfig(td spiffeid.TrustDomain, bundle func() []*x509.Certificate, clientCert func() *tls.Certificate, check *serverCheck) *tls.Config {
	want := ca.ServerID(td)
	verify := func(cs tls.ConnectionState) error {
		roots := bundle()
		if len(roots) == 0 {
			return errors.New("agent: no trust bundle to verify the server with")
		}
		if len(cs.PeerCertificates) > 0 {
			if id, err := x509svid.IDFromCert(cs.PeerCertificates[0]); err == nil && id.TrustDomain() != td {
				return fmt.Errorf("agent: %w: the server is %s, this agent is configured for trust domain %s", errTrustDomainMismatch, id, td.Name())
			}
		}
		id, _, err := x509svid.Verify(cs.PeerCertificates, x509bundle.FromX509Authorities(td, roots))
		if err != nil {
			return fmt.Errorf("agent: the trust bundle does not verify the server's certificate: %w", err)
		}
		if id != want {
			return fmt.Errorf("agent: server presented %s, want %s", id, want)
		}
		return nil
	}
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, //nolint:gosec // replaced by VerifyConnection below
		// VerifyConnection runs on resumed sessions too, unlike VerifyPeerCertificate.
		VerifyConnection: func(cs tls.ConnectionState) error {
			err := verify(cs)
			check.set(err)
			return err
		},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if c := clientCert(); c != nil {
				return c, nil
			}
			return &tls.Certificate{}, nil
		},
	}
}

// insecureBootstrapTLS trusts any server certificate. Only for attesting with
// insecure_bootstrap (dev); the bundle it yields is then used for everything.
func insecureBootstrapTLS() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true} //nolint:gosec // dev-only bootstrap, warned about
}

// KeepaliveInterval is how long the connection to a server may be silent
// before the agent pings it; a ping unanswered for half as long again drops
// the connection, and the agent moves to another server. Without it, a
// server whose packets are lost (a partition, a frozen host) holds a
// connection that looks open while every request on it waits, until the
// SVIDs expire.
const KeepaliveInterval = 10 * time.Second

// dial makes a client of the servers (see servers.go); it connects lazily.
func dial(servers *serverAddrs, cfg *tls.Config) (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient(serversScheme+":///servers",
		grpc.WithResolvers(servers),
		grpc.WithDefaultServiceConfig(pickFirstShuffled),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: KeepaliveInterval, Timeout: KeepaliveInterval / 2, PermitWithoutStream: true}),
		grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		return nil, fmt.Errorf("agent: dial %s: %w", servers, err)
	}
	return conn, nil
}
