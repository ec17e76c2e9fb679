package api

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/attest/x509pop"
	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/ca/catest"
	"github.com/shortleaf/shortleaf/pkg/datastore"
	"github.com/shortleaf/shortleaf/pkg/telemetry"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
	agentv1 "github.com/shortleaf/shortleaf/proto/agent/v1"
)

// FuzzEntryFromProto: no admin entry panics the validation, and whatever is
// accepted is a well-formed entry in an allowed namespace whose selectors
// identify a caller.
func FuzzEntryFromProto(f *testing.F) {
	for _, e := range []*adminv1.Entry{
		{SpiffeId: "spiffe://example.org/web", ParentId: "spiffe://example.org/agent/join_token/0123456789abcdef", Selectors: []string{"unix:uid:1000"}},
		{SpiffeId: "spiffe://example.org/shortleaf/server", ParentId: "spiffe://example.org/agent/x", Selectors: []string{"unix:path:/bin/x"}, DnsNames: []string{"a.b"}},
	} {
		raw, _ := proto.Marshal(e)
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var in adminv1.Entry
		if proto.Unmarshal(raw, &in) != nil {
			return
		}
		e, err := entryFromProto(&in, catest.TrustDomain, 24*time.Hour)
		if err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("refusal is not InvalidArgument: %v", err)
			}
			return
		}
		id, err := spiffeid.FromString(e.SPIFFEID)
		if err != nil || ca.CheckWorkloadID("spiffe_id", id, catest.TrustDomain) != nil {
			t.Fatalf("accepted a disallowed SPIFFE ID %q", e.SPIFFEID)
		}
		parent, err := spiffeid.FromString(e.ParentID)
		if err != nil || !ca.IsAgentID(parent, catest.TrustDomain) {
			t.Fatalf("accepted a parent that is not an agent: %q", e.ParentID)
		}
		if len(e.Selectors) == 0 || attest.CheckIdentifiesCaller(e.Selectors) != nil {
			t.Fatalf("accepted selectors that identify no caller: %v", e.Selectors)
		}
	})
}

// FuzzCheckBatch: whatever batch is accepted is within every batch limit.
func FuzzCheckBatch(f *testing.F) {
	for _, req := range []*agentv1.BatchNewX509SVIDRequest{
		{Params: []*agentv1.NewX509SVIDParams{{EntryId: "a", Csr: []byte{1}}, {EntryId: "b"}}},
		{Params: []*agentv1.NewX509SVIDParams{{EntryId: "a"}, {EntryId: "a"}}},
	} {
		raw, _ := proto.Marshal(req)
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var req agentv1.BatchNewX509SVIDRequest
		if proto.Unmarshal(raw, &req) != nil {
			return
		}
		if checkBatch(req.GetParams()) != nil {
			return
		}
		seen, total := map[string]bool{}, 0
		for _, p := range req.GetParams() {
			if seen[p.GetEntryId()] {
				t.Fatal("accepted one entry twice")
			}
			seen[p.GetEntryId()] = true
			total += len(p.GetCsr())
		}
		if len(req.GetParams()) > MaxBatchSize || total > MaxBatchCSRBytes {
			t.Fatalf("accepted %d requests, %d CSR bytes", len(req.GetParams()), total)
		}
	})
}

// FuzzAttestAgent: no AttestAgent request from an unauthenticated caller
// panics the server or attests anything (no token exists), and every answer
// is a refusal with a client-error code.
func FuzzAttestAgent(f *testing.F) {
	store, err := datastore.Open(filepath.Join(f.TempDir(), "datastore.db"))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = store.Close() })
	nodeCA := catest.New(f)
	roots, _ := nodeCA.Bundle()
	pop, err := x509pop.NewServer(roots.X509Authorities(), nil)
	if err != nil {
		f.Fatal(err)
	}
	svc := NewAgentService(AgentConfig{CA: catest.New(f), Store: store, DefaultSVIDTTL: time.Minute, AgentSVIDTTL: time.Hour,
		Metrics: telemetry.NewServer(prometheus.NewRegistry()), NodeAttestors: map[string]attest.NodeServer{x509pop.Type: pop}})
	nodeKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf, err := nodeCA.SignX509SVID(ca.X509SVIDParams{PublicKey: nodeKey.Public(), SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/node"), TTL: time.Hour})
	if err != nil {
		f.Fatal(err)
	}
	popPayload, _ := json.Marshal(x509pop.Payload{CertChain: [][]byte{leaf[0].Raw, leaf[1].Raw}})
	for _, req := range []*agentv1.AttestAgentRequest{
		{Attestation: &agentv1.AttestAgentRequest_JoinToken{JoinToken: &agentv1.JoinTokenAttestation{Token: "0123456789abcdef." + "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}}, Csr: []byte{0x30, 0}},
		{Attestation: &agentv1.AttestAgentRequest_Data{Data: &agentv1.AttestationData{Type: x509pop.Type, Payload: popPayload}}, Csr: []byte{0x30, 0}},
		{},
	} {
		raw, _ := proto.Marshal(req)
		f.Add(raw)
	}
	ctx := peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 1}})
	f.Fuzz(func(t *testing.T, raw []byte) {
		var req agentv1.AttestAgentRequest
		if proto.Unmarshal(raw, &req) != nil {
			return
		}
		stream := &attestStream{ctx: ctx, in: []*agentv1.AttestAgentRequest{&req}}
		err := svc.AttestAgent(stream)
		if err == nil {
			t.Fatalf("attested without a token: %v", stream.out)
		}
		switch status.Code(err) {
		case codes.InvalidArgument, codes.PermissionDenied:
		default:
			t.Fatalf("unexpected answer: %v", err)
		}
	})
}

// FuzzFederationFromProto: no federation relationship panics its validation,
// and whatever is accepted names a foreign trust domain and an https URL.
func FuzzFederationFromProto(f *testing.F) {
	svc := NewAdminService(AdminConfig{CA: catest.New(f)})
	for _, fed := range []*adminv1.Federation{
		{TrustDomain: "other.org", BundleEndpointUrl: "https://other.org/bundle", Profile: "https_web"},
		{TrustDomain: "other.org", BundleEndpointUrl: "https://10.0.0.1:8443", Profile: "https_spiffe", EndpointSpiffeId: "spiffe://other.org/x"},
	} {
		raw, _ := proto.Marshal(fed)
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var in adminv1.Federation
		if proto.Unmarshal(raw, &in) != nil {
			return
		}
		fed, _, err := svc.federationFromProto(&in)
		if err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("refusal is not InvalidArgument: %v", err)
			}
			return
		}
		if fed.TrustDomain == catest.TrustDomain.Name() || len(fed.URL) < 9 || fed.URL[:8] != "https://" {
			t.Fatalf("accepted %+v", fed)
		}
	})
}

// attestStream is an AttestAgent stream in memory: the requests to
// receive, in order, and the responses sent.
type attestStream struct {
	grpc.ServerStream
	ctx context.Context
	in  []*agentv1.AttestAgentRequest
	out []*agentv1.AttestAgentResponse
}

func (s *attestStream) Context() context.Context { return s.ctx }

func (s *attestStream) Send(m *agentv1.AttestAgentResponse) error {
	s.out = append(s.out, m)
	return nil
}

func (s *attestStream) Recv() (*agentv1.AttestAgentRequest, error) {
	if len(s.in) == 0 {
		return nil, io.EOF
	}
	m := s.in[0]
	s.in = s.in[1:]
	return m, nil
}
