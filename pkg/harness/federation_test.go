package harness_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/pkg/harness"
	"github.com/shortleaf/shortleaf/pkg/server"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

var otherTD = spiffeid.RequireTrustDomainFromString("other.org")

func withBundleEndpoint(td spiffeid.TrustDomain) func(*server.Config) {
	return func(c *server.Config) {
		c.TrustDomain = td
		c.BundleEndpoint = &server.BundleEndpointConfig{Addr: "127.0.0.1:0", Profile: "https_spiffe", RefreshHint: time.Second}
	}
}

func pemBundle(srv *harness.Server) []byte {
	b, _ := srv.CA().Bundle()
	var out []byte
	for _, c := range b.X509Authorities() {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

func federate(t *testing.T, from, to *harness.Server) {
	t.Helper()
	td := to.Config.TrustDomain
	_, err := from.Admin.CreateFederation(context.Background(), &adminv1.CreateFederationRequest{Federation: &adminv1.Federation{
		TrustDomain: td.Name(), BundleEndpointUrl: "https://" + to.BundleEndpointAddr(), Profile: "https_spiffe",
		EndpointSpiffeId: ca.ServerID(td).String(), BootstrapBundle: pemBundle(to),
	}})
	if err != nil {
		t.Fatalf("federate %s with %s: %v", from.Config.TrustDomain, td, err)
	}
}

// Two shortleaf trust domains federate both ways over https_spiffe bundle
// endpoints, and a workload of each authenticates the other over mTLS.
func TestFederatedWorkloadsDoMTLSAcrossTrustDomains(t *testing.T) {
	a := harness.StartServer(t, withBundleEndpoint(harness.TrustDomain))
	b := harness.StartServer(t, withBundleEndpoint(otherTD))
	federate(t, a, b)
	federate(t, b, a)
	agA, agB := harness.StartAgent(t, a), harness.StartAgent(t, b)
	idA := spiffeid.RequireFromString("spiffe://example.org/a")
	idB := spiffeid.RequireFromString("spiffe://other.org/b")
	a.CreateEntry(t, &adminv1.Entry{SpiffeId: idA.String(), ParentId: agA.ID(), Selectors: []string{uidSelector()}, FederatesWith: []string{"other.org"}})
	b.CreateEntry(t, &adminv1.Entry{SpiffeId: idB.String(), ParentId: agB.ID(), Selectors: []string{uidSelector()}, FederatesWith: []string{"example.org"}})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Wait until each agent serves the other trust domain's bundle.
	for _, c := range []struct {
		ag      *harness.Agent
		foreign spiffeid.TrustDomain
	}{{agA, otherTD}, {agB, harness.TrustDomain}} {
		for {
			x, err := fetchX509(t, c.ag.Addr(), 5*time.Second)
			if err == nil {
				if _, ok := x.Bundles.Get(c.foreign); ok {
					break
				}
			}
			if ctx.Err() != nil {
				t.Fatalf("agent never served the bundle of %s: %v", c.foreign, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	srcA, srcB := x509Source(ctx, t, agA), x509Source(ctx, t, agB)
	lis, err := spiffetls.ListenWithMode(ctx, "tcp", "127.0.0.1:0", spiffetls.MTLSServerWithSource(tlsconfig.AuthorizeID(idB), srcA))
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	go func() {
		conn, err := lis.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		peer, _ := spiffetls.PeerIDFromConn(conn)
		fmt.Fprintf(conn, "%s\n", peer)
	}()
	conn, err := spiffetls.DialWithMode(ctx, "tcp", lis.Addr().String(), spiffetls.MTLSClientWithSource(tlsconfig.AuthorizeID(idA), srcB))
	if err != nil {
		t.Fatalf("cross-domain mTLS: %v", err)
	}
	defer conn.Close()
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != idB.String() {
		t.Fatalf("server saw %q, %v", line, err)
	}
	// The refreshes show in the metrics (the ShortleafFederationStale alert).
	harness.Eventually(t, 15*time.Second, func() bool {
		td := map[string]string{"trust_domain": "other.org"}
		last := harness.MetricValue(t, a.Registry, "shortleaf_federation_last_refresh_timestamp_seconds", td)
		return last > 0 && time.Since(time.Unix(int64(last), 0)) < time.Minute &&
			harness.MetricValue(t, a.Registry, "shortleaf_federation_refresh_failing", td) == 0
	})
	// Never merged: each trust domain's bundle holds only its own roots.
	x, _ := fetchX509(t, agA.Addr(), 5*time.Second)
	own, _ := x.Bundles.Get(harness.TrustDomain)
	foreign, _ := x.Bundles.Get(otherTD)
	bundleA, _ := a.CA().Bundle()
	bundleB, _ := b.CA().Bundle()
	if !own.Equal(bundleA) || !foreign.Equal(bundleB) {
		t.Fatal("bundles were mixed across trust domains")
	}
}

// The endpoint serves what go-spiffe's federation client (as a SPIRE server
// uses) expects, and shortleaf consumes what go-spiffe's federation handler
// (the bundle endpoint format SPIRE serves) publishes.
func TestBundleEndpointInteropWithGoSPIFFEFederation(t *testing.T) {
	srv := harness.StartServer(t, withBundleEndpoint(harness.TrustDomain))
	bundle, _ := srv.CA().Bundle()
	got, err := federation.FetchBundle(context.Background(), harness.TrustDomain, "https://"+srv.BundleEndpointAddr(),
		federation.WithSPIFFEAuth(bundle, ca.ServerID(harness.TrustDomain)))
	if err != nil {
		t.Fatalf("go-spiffe cannot fetch our bundle: %v", err)
	}
	want := srv.CA().SPIFFEBundle(time.Second)
	if !got.Equal(want) {
		t.Fatal("fetched bundle differs from the CA's")
	}
	if seq, ok := got.SequenceNumber(); !ok || seq == 0 {
		t.Error("no spiffe_sequence")
	}
	if hint, ok := got.RefreshHint(); !ok || hint != time.Second {
		t.Errorf("refresh hint %v", hint)
	}
	if len(got.JWTAuthorities()) == 0 || len(got.X509Authorities()) == 0 {
		t.Error("bundle lacks X.509 or JWT authorities")
	}
}

// Bad foreign bundles are rejected with the reason, and the last good one
// stays.
func TestBadForeignBundlesAreRejected(t *testing.T) {
	a := harness.StartServer(t)
	b := harness.StartServer(t, withBundleEndpoint(otherTD))
	ctx := context.Background()
	good := pemBundle(b)
	if _, err := a.Admin.SetFederatedBundle(ctx, &adminv1.SetFederatedBundleRequest{TrustDomain: "other.org", Bundle: good}); err != nil {
		t.Fatal(err)
	}
	third := harness.StartServer(t, func(c *server.Config) { c.TrustDomain = spiffeid.RequireTrustDomainFromString("third.org") })
	for name, raw := range map[string][]byte{
		"malformed":              []byte("{not json"),
		"oversized":              append([]byte(`{"keys":[],"x":"`), append([]byte(strings.Repeat("a", 2<<20)), []byte(`"}`)...)...),
		"another trust domain's": pemBundle(third),
		"no keys":                []byte(`{"keys":[]}`),
	} {
		_, err := a.Admin.SetFederatedBundle(ctx, &adminv1.SetFederatedBundleRequest{TrustDomain: "other.org", Bundle: raw})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "bundle") {
			t.Errorf("%s bundle: %v, want InvalidArgument naming the bundle", name, err)
		}
	}
	if _, err := a.Admin.SetFederatedBundle(ctx, &adminv1.SetFederatedBundleRequest{TrustDomain: "example.org", Bundle: good}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("setting the own trust domain's bundle: %v", err)
	}
	// An endpoint presenting the wrong SPIFFE ID: the fetch fails, the
	// last good bundle stays.
	_, err := a.Admin.CreateFederation(ctx, &adminv1.CreateFederationRequest{Federation: &adminv1.Federation{
		TrustDomain: "other.org", BundleEndpointUrl: "https://" + b.BundleEndpointAddr(), Profile: "https_spiffe",
		EndpointSpiffeId: "spiffe://other.org/not-the-server", BootstrapBundle: good,
	}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.Admin.RefreshFederation(ctx, &adminv1.RefreshFederationRequest{TrustDomain: "other.org"})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "last good bundle kept") {
		t.Fatalf("refresh with a wrong endpoint ID: %v", err)
	}
	list, err := a.Admin.ListBundles(ctx, &adminv1.ListBundlesRequest{})
	if err != nil || len(list.GetBundles()) != 2 {
		t.Fatalf("bundles after a failed refresh: %v %v", list, err)
	}
	kept, err := spiffebundle.Parse(otherTD, list.GetBundles()[1].GetBundle())
	bundleB, _ := b.CA().Bundle()
	if err != nil || !kept.X509Bundle().Equal(bundleB) {
		t.Fatal("the last good bundle was not kept")
	}
	f, _ := a.Admin.GetFederation(ctx, &adminv1.GetFederationRequest{TrustDomain: "other.org"})
	if f.GetLastError() == "" {
		t.Error("the failed refresh is not recorded")
	}
	// The failure shows in the metrics the ShortleafFederationStale alert reads.
	harness.Eventually(t, 15*time.Second, func() bool {
		return harness.MetricValue(t, a.Registry, "shortleaf_federation_refresh_failing", map[string]string{"trust_domain": "other.org"}) == 1
	})
	// Validation of the relationship itself.
	for name, fed := range map[string]*adminv1.Federation{
		"http URL":                 {TrustDomain: "x.org", BundleEndpointUrl: "http://x", Profile: "https_web"},
		"unknown profile":          {TrustDomain: "x.org", BundleEndpointUrl: "https://x", Profile: "ftp"},
		"spiffe without ID":        {TrustDomain: "x.org", BundleEndpointUrl: "https://x", Profile: "https_spiffe", BootstrapBundle: good},
		"spiffe without bootstrap": {TrustDomain: "x.org", BundleEndpointUrl: "https://x", Profile: "https_spiffe", EndpointSpiffeId: "spiffe://x.org/s"},
		"own trust domain":         {TrustDomain: "example.org", BundleEndpointUrl: "https://x", Profile: "https_web"},
	} {
		if _, err := a.Admin.CreateFederation(ctx, &adminv1.CreateFederationRequest{Federation: fed}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
}

// shortleaf consumes a bundle endpoint built on go-spiffe's federation
// handler, over https_web with a Web PKI certificate.
func TestFederationConsumesGoSPIFFEHandlerOverHTTPSWeb(t *testing.T) {
	foreign := harness.StartServer(t, func(c *server.Config) { c.TrustDomain = otherTD })
	served := foreign.CA().SPIFFEBundle(time.Minute)
	handler, err := federation.NewHandler(otherTD, served)
	if err != nil {
		t.Fatal(err)
	}
	web := httptest.NewTLSServer(handler)
	defer web.Close()
	webRoot := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: web.Certificate().Raw})

	srv := harness.StartServer(t)
	ctx := context.Background()
	if _, err := srv.Admin.CreateFederation(ctx, &adminv1.CreateFederationRequest{Federation: &adminv1.Federation{
		TrustDomain: "other.org", BundleEndpointUrl: web.URL, Profile: "https_web", WebRoots: webRoot,
	}}); err != nil {
		t.Fatal(err)
	}
	f, err := srv.Admin.RefreshFederation(ctx, &adminv1.RefreshFederationRequest{TrustDomain: "other.org"})
	if err != nil {
		t.Fatalf("refresh from the go-spiffe handler: %v", err)
	}
	if seq, _ := served.SequenceNumber(); f.GetBundleSequence() != seq {
		t.Fatalf("stored sequence %d, served %d", f.GetBundleSequence(), seq)
	}
	list, _ := srv.Admin.ListBundles(ctx, &adminv1.ListBundlesRequest{})
	got, err := spiffebundle.Parse(otherTD, list.GetBundles()[1].GetBundle())
	if err != nil || !got.Equal(served) {
		t.Fatalf("stored bundle differs from the served one: %v", err)
	}
}

// The bundle endpoint's https_web profile: served with a configured Web PKI
// certificate, fetched by another shortleaf server trusting that Web root.
func TestBundleEndpointHTTPSWeb(t *testing.T) {
	dir := t.TempDir()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tpl := &x509.Certificate{SerialNumber: big.NewInt(42), Subject: pkix.Name{CommonName: "bundles.other.org"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IsCA: true, BasicConstraintsValid: true}
	der, _ := x509.CreateCertificate(rand.Reader, tpl, tpl, key.Public(), key)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	certFile, keyFile := filepath.Join(dir, "web.pem"), filepath.Join(dir, "web.key")
	_ = os.WriteFile(certFile, certPEM, 0o600)
	_ = os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)

	other := harness.StartServer(t, func(c *server.Config) {
		c.TrustDomain = otherTD
		c.BundleEndpoint = &server.BundleEndpointConfig{Addr: "127.0.0.1:0", Profile: "https_web", CertFile: certFile, KeyFile: keyFile}
	})
	srv := harness.StartServer(t)
	ctx := context.Background()
	if _, err := srv.Admin.CreateFederation(ctx, &adminv1.CreateFederationRequest{Federation: &adminv1.Federation{
		TrustDomain: "other.org", BundleEndpointUrl: "https://" + other.BundleEndpointAddr(), Profile: "https_web", WebRoots: certPEM,
	}}); err != nil {
		t.Fatal(err)
	}
	f, err := srv.Admin.RefreshFederation(ctx, &adminv1.RefreshFederationRequest{TrustDomain: "other.org"})
	if err != nil {
		t.Fatalf("https_web fetch: %v", err)
	}
	_, seq := other.CA().Bundle()
	if f.GetBundleSequence() != seq {
		t.Fatalf("fetched sequence %d, want %d", f.GetBundleSequence(), seq)
	}
	// Without the Web root the endpoint is not trusted.
	if _, err := srv.Admin.UpdateFederation(ctx, &adminv1.UpdateFederationRequest{Federation: &adminv1.Federation{
		TrustDomain: "other.org", BundleEndpointUrl: "https://" + other.BundleEndpointAddr(), Profile: "https_web",
	}}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Admin.RefreshFederation(ctx, &adminv1.RefreshFederationRequest{TrustDomain: "other.org"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("untrusted https_web endpoint: %v", err)
	}
}

// A new root is published to federated trust domains for three refresh
// hints before it may sign.
func TestRootActivationWaitsForFederatedConsumers(t *testing.T) {
	srv := harness.StartServer(t, withBundleEndpoint(harness.TrustDomain)) // refresh hint 1s
	ctx := context.Background()
	if _, err := srv.Admin.PrepareRoot(ctx, &adminv1.PrepareRootRequest{}); err != nil {
		t.Fatal(err)
	}
	_, err := srv.Admin.ActivateRoot(ctx, &adminv1.ActivateRootRequest{})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "refresh hints") {
		t.Fatalf("activation right after prepare: %v", err)
	}
	// After three refresh hints the schedule activates it.
	start := time.Now()
	waitRoot(t, srv, "activation after three refresh hints", 10*time.Second, nil, func(r *adminv1.RootRotation) bool { return r.GetPreparedRootId() == "" })
	if waited := time.Since(start); waited < 2*time.Second {
		t.Fatalf("the root took over %s after prepare, before three 1s refresh hints", waited)
	}
}
