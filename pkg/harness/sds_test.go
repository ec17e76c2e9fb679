package harness_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/shortleaf/shortleaf/pkg/harness"
	"github.com/shortleaf/shortleaf/pkg/server"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

const secretType = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

func decodeSecrets(t *testing.T, resp *discoveryv3.DiscoveryResponse) map[string]*tlsv3.Secret {
	t.Helper()
	out := map[string]*tlsv3.Secret{}
	for _, r := range resp.GetResources() {
		var s tlsv3.Secret
		if err := r.UnmarshalTo(&s); err != nil {
			t.Fatal(err)
		}
		out[s.GetName()] = &s
	}
	return out
}

// Envoy's side of SDS: subscribe to default and ROOTCA, ACK each response,
// and receive the renewed certificate when the agent rotates it.
func TestSDSStreamsSecretsLikeSPIRE(t *testing.T) {
	srv := harness.StartServer(t, func(c *server.Config) { c.DefaultSVIDTTL = 6 * time.Second })
	ag := harness.StartAgent(t, srv)
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/envoy", ParentId: ag.ID(), Selectors: []string{uidSelector()}})
	if _, err := fetchX509(t, ag.Addr(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(ag.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sds := secretv3.NewSecretDiscoveryServiceClient(conn)
	stream, err := sds.StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: secretType, ResourceNames: []string{"default", "ROOTCA"}}); err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	secrets := decodeSecrets(t, first)
	cert := secrets["default"].GetTlsCertificate()
	pair, err := tls.X509KeyPair(cert.GetCertificateChain().GetInlineBytes(), cert.GetPrivateKey().GetInlineBytes())
	if err != nil {
		t.Fatalf("default secret is not a usable certificate and key: %v", err)
	}
	leaf, _ := x509.ParseCertificate(pair.Certificate[0])
	if leaf.URIs[0].String() != "spiffe://example.org/envoy" {
		t.Fatalf("default secret is for %s", leaf.URIs[0])
	}
	// ROOTCA is Envoy's SPIFFE validator holding exactly the trust domain's bundle.
	var validator tlsv3.SPIFFECertValidatorConfig
	custom := secrets["ROOTCA"].GetValidationContext().GetCustomValidatorConfig()
	if err := custom.GetTypedConfig().UnmarshalTo(&validator); err != nil || custom.GetName() != "envoy.tls.cert_validator.spiffe" {
		t.Fatalf("ROOTCA is not a SPIFFE validator: %v %v", custom, err)
	}
	tds := validator.GetTrustDomains()
	block, _ := pem.Decode(tds[0].GetTrustBundle().GetInlineBytes())
	bundle, _ := srv.CA().Bundle()
	if len(tds) != 1 || tds[0].GetName() != "example.org" || block == nil || string(block.Bytes) != string(bundle.X509Authorities()[0].Raw) {
		t.Fatal("ROOTCA is not the trust domain's bundle")
	}
	// ACK; the next response must be a rotation, not a repeat.
	if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: secretType, ResourceNames: []string{"default", "ROOTCA"},
		VersionInfo: first.GetVersionInfo(), ResponseNonce: first.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	next, err := stream.Recv()
	if err != nil {
		t.Fatalf("no push after the renewal: %v", err)
	}
	if next.GetVersionInfo() == first.GetVersionInfo() || next.GetNonce() == first.GetNonce() {
		t.Fatal("the push repeats the acknowledged version")
	}
	renewed := decodeSecrets(t, next)["default"].GetTlsCertificate()
	pair2, err := tls.X509KeyPair(renewed.GetCertificateChain().GetInlineBytes(), renewed.GetPrivateKey().GetInlineBytes())
	if err != nil {
		t.Fatal(err)
	}
	if string(pair2.Certificate[0]) == string(pair.Certificate[0]) {
		t.Fatal("the pushed certificate is the old one")
	}

	// FetchSecrets by SPIFFE ID, ALL, and trust domain name.
	resp, err := sds.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{TypeUrl: secretType,
		ResourceNames: []string{"spiffe://example.org/envoy", "ALL", "spiffe://example.org", "unknown"}})
	if err != nil {
		t.Fatal(err)
	}
	got := decodeSecrets(t, resp)
	if got["spiffe://example.org/envoy"].GetTlsCertificate() == nil || got["ALL"].GetValidationContext() == nil ||
		got["spiffe://example.org"].GetValidationContext() == nil || got["unknown"] != nil {
		t.Fatalf("FetchSecrets returned %d secrets: %v", len(got), got)
	}
	if _, err := sds.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{TypeUrl: "type.googleapis.com/envoy.config.cluster.v3.Cluster"}); err == nil {
		t.Fatal("accepted a foreign type_url")
	}
}
