package workloadapi_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/shortleaf/shortleaf/ca/catest"
	wl "github.com/shortleaf/shortleaf/pkg/workloadapi"
)

const secretType = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// foreignCA is a federated trust domain's CA that the test controls, so it
// can try to vouch for identities outside its own trust domain.
type foreignCA struct {
	root *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newForeignCA(t *testing.T, td string) *foreignCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: td + " root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		URIs: []*url.URL{{Scheme: "spiffe", Host: td}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(der)
	return &foreignCA{root: root, key: key}
}

// leaf signs an SVID for any ID at all, as a compromised or malicious
// federated CA could.
func (f *foreignCA) leaf(t *testing.T, id string) *x509.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(id)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs: []*url.URL{u},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, f.root, key.Public(), f.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

func parsePEM(t *testing.T, b []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return out
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

// envoyAccepts checks a peer chain the way Envoy does with this validation
// context: with a plain trusted CA list, any chain to any CA in it; with the
// SPIFFE validator, only a chain to the bundle of the trust domain in the
// leaf's own SPIFFE ID.
func envoyAccepts(t *testing.T, vc *tlsv3.CertificateValidationContext, chain []*x509.Certificate) error {
	t.Helper()
	leaf := chain[0]
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	roots := x509.NewCertPool()
	switch {
	case vc.GetCustomValidatorConfig() != nil:
		custom := vc.GetCustomValidatorConfig()
		if custom.GetName() != "envoy.tls.cert_validator.spiffe" {
			t.Fatalf("custom validator %q", custom.GetName())
		}
		var cfg tlsv3.SPIFFECertValidatorConfig
		if err := custom.GetTypedConfig().UnmarshalTo(&cfg); err != nil {
			t.Fatal(err)
		}
		if err := cfg.ValidateAll(); err != nil {
			t.Fatalf("Envoy would refuse the validator config: %v", err)
		}
		if len(leaf.URIs) != 1 || leaf.URIs[0].Scheme != "spiffe" {
			return errors.New("no SPIFFE ID")
		}
		found := false
		for _, td := range cfg.GetTrustDomains() {
			if td.GetName() == leaf.URIs[0].Host {
				found = true
				for _, c := range parsePEM(t, td.GetTrustBundle().GetInlineBytes()) {
					roots.AddCert(c)
				}
			}
		}
		if !found {
			return fmt.Errorf("no bundle for trust domain %s", leaf.URIs[0].Host)
		}
	case vc.GetTrustedCa() != nil:
		for _, c := range parsePEM(t, vc.GetTrustedCa().GetInlineBytes()) {
			roots.AddCert(c)
		}
	default:
		t.Fatal("validation context has neither trusted CAs nor a validator")
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}

func sdsClient(t *testing.T, addr string) secretv3.SecretDiscoveryServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return secretv3.NewSecretDiscoveryServiceClient(conn)
}

func nodeWith(disableSPIFFEValidation bool) *corev3.Node {
	md, _ := structpb.NewStruct(map[string]any{wl.DisableSPIFFECertValidationKey: disableSPIFFEValidation})
	return &corev3.Node{Id: "envoy", Metadata: md}
}

// A federated CA signs SVIDs for IDs in our trust domain. No validation
// context the agent sends over SDS — whatever the name, and with or without
// the node-metadata switch — may accept them, while every one that covers
// a trust domain still accepts that trust domain's real SVIDs.
func TestSDSFederatedCACannotVouchForLocalIDs(t *testing.T) {
	c := catest.New(t)
	other := spiffeid.RequireTrustDomainFromString("other.org")
	foreign := newForeignCA(t, other.Name())
	envoy := identity(t, c, "spiffe://example.org/envoy", "", uid1)
	envoy.FederatesWith = []spiffeid.TrustDomain{other}
	st := state(c, envoy)
	st.Federated = map[spiffeid.TrustDomain]*wl.ForeignBundle{other: {X509DER: foreign.root.Raw}}
	src := &source{state: st, changed: make(chan struct{})}
	sds := sdsClient(t, serve(t, src, uid1))

	localSVID, err := x509.ParseCertificates(envoy.ChainDER())
	if err != nil {
		t.Fatal(err)
	}
	forgedLocal := []*x509.Certificate{foreign.leaf(t, "spiffe://example.org/payments")}
	foreignSVID := []*x509.Certificate{foreign.leaf(t, "spiffe://other.org/billing")}
	forgedThird := []*x509.Certificate{foreign.leaf(t, "spiffe://third.org/x")}

	// covers: which real SVIDs each resource must accept.
	type covers struct{ local, foreign bool }
	names := map[string]covers{
		"ROOTCA":               {local: true},
		"ALL":                  {local: true, foreign: true},
		"spiffe://example.org": {local: true},
		"example.org":          {local: true},
		"spiffe://other.org":   {foreign: true},
		"other.org":            {foreign: true},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, disable := range []bool{false, true} {
		req := &discoveryv3.DiscoveryRequest{TypeUrl: secretType, Node: nodeWith(disable)}
		for name := range names {
			req.ResourceNames = append(req.ResourceNames, name)
		}
		resp, err := sds.FetchSecrets(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		// The empty request (every secret) names bundles by trust domain ID.
		all, err := sds.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{TypeUrl: secretType, Node: nodeWith(disable)})
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]*tlsv3.Secret{}
		for _, r := range append(resp.GetResources(), all.GetResources()...) {
			var s tlsv3.Secret
			if err := r.UnmarshalTo(&s); err != nil {
				t.Fatal(err)
			}
			if s.GetValidationContext() != nil {
				got[s.GetName()] = &s
			}
		}
		if len(got) != len(names) {
			t.Fatalf("disable=%v: %d validation contexts, want %d: %v", disable, len(got), len(names), got)
		}
		for name, secret := range got {
			vc := secret.GetValidationContext()
			plain := vc.GetTrustedCa() != nil
			wantPlain := disable && names[name].local && name != "ALL"
			if plain != wantPlain {
				t.Errorf("disable=%v %s: plain trusted CA = %v, want %v", disable, name, plain, wantPlain)
			}
			if err := envoyAccepts(t, vc, forgedLocal); err == nil {
				t.Errorf("disable=%v %s: accepts spiffe://example.org/payments signed by the federated CA", disable, name)
			}
			if err := envoyAccepts(t, vc, forgedThird); err == nil {
				t.Errorf("disable=%v %s: accepts spiffe://third.org/x signed by the federated CA", disable, name)
			}
			want := names[name]
			if err := envoyAccepts(t, vc, localSVID); (err == nil) != want.local {
				t.Errorf("disable=%v %s: our own SVID accepted=%v (%v), want %v", disable, name, err == nil, err, want.local)
			}
			if err := envoyAccepts(t, vc, foreignSVID); (err == nil) != want.foreign {
				t.Errorf("disable=%v %s: other.org's SVID accepted=%v (%v), want %v", disable, name, err == nil, err, want.foreign)
			}
		}
	}
}

// The node-metadata switch sent on a stream's first request holds for the
// whole stream, as Envoy sends its node only once.
func TestSDSStreamKeepsNodeOptions(t *testing.T) {
	c := catest.New(t)
	src := &source{state: state(c, identity(t, c, "spiffe://example.org/envoy", "", uid1)), changed: make(chan struct{})}
	sds := sdsClient(t, serve(t, src, uid1))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := sds.StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	recvRootCA := func() *tlsv3.CertificateValidationContext {
		t.Helper()
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		var s tlsv3.Secret
		if err := resp.GetResources()[0].UnmarshalTo(&s); err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: secretType, ResourceNames: []string{"ROOTCA"},
			VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}); err != nil {
			t.Fatal(err)
		}
		return s.GetValidationContext()
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: secretType, ResourceNames: []string{"ROOTCA"}, Node: nodeWith(true)}); err != nil {
		t.Fatal(err)
	}
	if recvRootCA().GetTrustedCa() == nil {
		t.Fatal("first response ignores disable_spiffe_cert_validation")
	}
	// A new root in the bundle: the push keeps the caller's choice.
	c2 := catest.NewFromConfig(t, catest.Config(t))
	next := state(c, identity(t, c, "spiffe://example.org/envoy", "", uid1))
	b2, _ := c2.Bundle()
	next.BundleDER = append(next.BundleDER, b2.X509Authorities()[0].Raw...)
	src.set(next)
	if recvRootCA().GetTrustedCa() == nil {
		t.Fatal("push after a bundle change dropped disable_spiffe_cert_validation")
	}
}
