package harness

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"net/url"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/pkg/agent"
	agentv1 "github.com/shortleaf/shortleaf/proto/agent/v1"
)

// RawAgent speaks the agent API directly, built on go-spiffe's TLS helpers
// rather than on pkg/agent, so tests can send what a real agent never would.
type RawAgent struct {
	ID     spiffeid.ID
	SVID   *x509svid.SVID
	Client agentv1.AgentAPIClient
}

// Attest runs AttestAgent with token over server-authenticated TLS and
// returns the raw response or error.
func Attest(t testing.TB, srv *Server, token string, csr []byte) (*agentv1.AttestAgentResponse, error) {
	t.Helper()
	bundle, _ := srv.CA().Bundle()
	cfg := tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(ca.ServerID(TrustDomain)))
	conn := dialTLS(t, srv.AgentAddr(), cfg)
	return agent.AttestCall(context.Background(), agentv1.NewAgentAPIClient(conn), &agentv1.AttestAgentRequest{
		Attestation: &agentv1.AttestAgentRequest_JoinToken{JoinToken: &agentv1.JoinTokenAttestation{Token: token}},
		Csr:         csr,
	}, nil)
}

// AttestWith runs an AttestAgent exchange over server-authenticated TLS:
// first, then each challenge answered by answer.
func AttestWith(t testing.TB, srv *Server, first *agentv1.AttestAgentRequest, answer attest.Challenger) (*agentv1.AttestAgentResponse, error) {
	t.Helper()
	bundle, _ := srv.CA().Bundle()
	conn := dialTLS(t, srv.AgentAddr(), tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(ca.ServerID(TrustDomain))))
	return agent.AttestCall(context.Background(), agentv1.NewAgentAPIClient(conn), first, answer)
}

// AttestRaw attests a new agent with a fresh join token and returns a client
// authenticated with its agent SVID.
func AttestRaw(t testing.TB, srv *Server) *RawAgent {
	t.Helper()
	token, _ := srv.NewJoinToken(t)
	key, csr := NewCSR(t, spiffeid.ID{})
	resp, err := Attest(t, srv, token, csr)
	if err != nil {
		t.Fatalf("attest: %v", err)
	}
	svid := ParseSVID(t, key, resp.GetSvid())
	bundle, _ := srv.CA().Bundle()
	cfg := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(ca.ServerID(TrustDomain)))
	return &RawAgent{ID: svid.ID, SVID: svid, Client: agentv1.NewAgentAPIClient(dialTLS(t, srv.AgentAddr(), cfg))}
}

// ParseSVID pairs an SVID the server returned with the key its CSR was made
// with.
func ParseSVID(t testing.TB, key *ecdsa.PrivateKey, s *agentv1.X509SVID) *x509svid.SVID {
	t.Helper()
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := x509svid.ParseRaw(bytes.Join(s.GetCertChain(), nil), keyDER)
	if err != nil {
		t.Fatalf("SVID: %v", err)
	}
	return svid
}

// UnauthenticatedClient connects without a client certificate.
func UnauthenticatedClient(t testing.TB, srv *Server) agentv1.AgentAPIClient {
	bundle, _ := srv.CA().Bundle()
	cfg := tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(ca.ServerID(TrustDomain)))
	return agentv1.NewAgentAPIClient(dialTLS(t, srv.AgentAddr(), cfg))
}

func dialTLS(t testing.TB, addr string, cfg *tls.Config) *grpc.ClientConn {
	t.Helper()
	cfg.MinVersion = tls.VersionTLS13
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// NewCSR makes a P-256 key and a DER CSR with id as URI SAN (none if zero).
func NewCSR(t testing.TB, id spiffeid.ID, mutate ...func(*x509.CertificateRequest)) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.CertificateRequest{}
	if !id.IsZero() {
		tpl.URIs = []*url.URL{id.URL()}
	}
	for _, m := range mutate {
		m(tpl)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return key, der
}

// CounterValue reads a counter (or gauge) from the server's registry; 0 if
// absent.
func (s *Server) CounterValue(t testing.TB, name string, labels map[string]string) float64 {
	t.Helper()
	return counterValue(t, s.Registry, name, labels)
}

// MetricValue reads a counter or gauge with exactly labels from g (0 when
// absent), for metrics of other registries than the server's (an agent's).
func MetricValue(t testing.TB, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	return counterValue(t, g, name, labels)
}

func counterValue(t testing.TB, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	families, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if labelsMatch(m.GetLabel(), labels) {
				if g := m.GetGauge(); g != nil {
					return g.GetValue()
				}
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func labelsMatch(have []*dto.LabelPair, want map[string]string) bool {
	n := 0
	for _, l := range have {
		if v, ok := want[l.GetName()]; ok {
			if v != l.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(want)
}

// ClientWithSVID connects to srv presenting svid, whatever it chains to.
func ClientWithSVID(t testing.TB, srv *Server, svid *x509svid.SVID) agentv1.AgentAPIClient {
	t.Helper()
	bundle, _ := srv.CA().Bundle()
	cfg := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(ca.ServerID(TrustDomain)))
	return agentv1.NewAgentAPIClient(dialTLS(t, srv.AgentAddr(), cfg))
}
