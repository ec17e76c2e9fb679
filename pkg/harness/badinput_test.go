package harness_test

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shortleaf/shortleaf/pkg/agent"
	"github.com/shortleaf/shortleaf/pkg/api"
	"github.com/shortleaf/shortleaf/pkg/harness"
	"github.com/shortleaf/shortleaf/pkg/server"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
	agentv1 "github.com/shortleaf/shortleaf/proto/agent/v1"
)

func TestAdminRejectsBadEntriesNamingTheField(t *testing.T) {
	srv := harness.StartServer(t)
	parent := "spiffe://example.org/agent/join_token/0123456789abcdef"
	good := func() *adminv1.Entry {
		return &adminv1.Entry{SpiffeId: "spiffe://example.org/web", ParentId: parent, Selectors: []string{"unix:uid:1000"}}
	}
	cases := []struct {
		name, field string
		mutate      func(*adminv1.Entry)
	}{
		{"empty SPIFFE ID", "entry.spiffe_id", func(e *adminv1.Entry) { e.SpiffeId = "" }},
		{"not a URI", "entry.spiffe_id", func(e *adminv1.Entry) { e.SpiffeId = "web" }},
		{"wrong scheme", "entry.spiffe_id", func(e *adminv1.Entry) { e.SpiffeId = "https://example.org/web" }},
		{"uppercase trust domain", "entry.spiffe_id", func(e *adminv1.Entry) { e.SpiffeId = "spiffe://Example.org/web" }},
		{"query", "entry.spiffe_id", func(e *adminv1.Entry) { e.SpiffeId = "spiffe://example.org/web?x=1" }},
		{"port", "entry.spiffe_id", func(e *adminv1.Entry) { e.SpiffeId = "spiffe://example.org:443/web" }},
		{"trailing slash", "entry.spiffe_id", func(e *adminv1.Entry) { e.SpiffeId = "spiffe://example.org/web/" }},
		{"dot segment", "entry.spiffe_id", func(e *adminv1.Entry) { e.SpiffeId = "spiffe://example.org/a/../b" }},
		{"percent encoding", "entry.spiffe_id", func(e *adminv1.Entry) { e.SpiffeId = "spiffe://example.org/w%20b" }},
		{"no path", "entry.spiffe_id", func(e *adminv1.Entry) { e.SpiffeId = "spiffe://example.org" }},
		{"other trust domain", "entry.spiffe_id", func(e *adminv1.Entry) { e.SpiffeId = "spiffe://other.org/web" }},
		{"agent namespace", "entry.spiffe_id", func(e *adminv1.Entry) { e.SpiffeId = "spiffe://example.org/agent/join_token/x" }},
		{"the server's own ID", "entry.spiffe_id", func(e *adminv1.Entry) { e.SpiffeId = "spiffe://example.org/shortleaf/server" }},
		{"shortleaf namespace", "entry.spiffe_id", func(e *adminv1.Entry) { e.SpiffeId = "spiffe://example.org/shortleaf" }},
		{"parent in another trust domain", "entry.parent_id", func(e *adminv1.Entry) { e.ParentId = "spiffe://other.org/agent/x" }},
		{"node selector on a workload entry", "entry.selectors", func(e *adminv1.Entry) { e.Selectors = []string{"x509pop:subject:cn:node1"} }},
		{"workload selector on a node alias", "entry.selectors", func(e *adminv1.Entry) { e.ParentId = "spiffe://example.org/shortleaf/server" }},
		{"parent malformed", "entry.parent_id", func(e *adminv1.Entry) { e.ParentId = "spiffe:///agent" }},
		{"no selectors", "entry.selectors", func(e *adminv1.Entry) { e.Selectors = nil }},
		{"unknown selector type", "entry.selectors", func(e *adminv1.Entry) { e.Selectors = []string{"docker:label:x"} }},
		{"unknown selector key", "entry.selectors", func(e *adminv1.Entry) { e.Selectors = []string{"unix:shoe:9"} }},
		{"malformed selector", "entry.selectors", func(e *adminv1.Entry) { e.Selectors = []string{"unix"} }},
		{"bad uid value", "entry.selectors", func(e *adminv1.Entry) { e.Selectors = []string{"unix:uid:root"} }},
		{"path and hash without an account", "entry.selectors", func(e *adminv1.Entry) {
			e.Selectors = []string{"unix:path:/usr/bin/web", "unix:sha256:" + strings.Repeat("ab", 32)}
		}},
		{"TTL too short", "entry.x509_svid_ttl", func(e *adminv1.Entry) { e.X509SvidTtlSeconds = 59 }},
		{"TTL too long", "entry.x509_svid_ttl", func(e *adminv1.Entry) { e.X509SvidTtlSeconds = 24*3600 + 1 }},
		{"negative TTL", "entry.x509_svid_ttl", func(e *adminv1.Entry) { e.X509SvidTtlSeconds = -5 }},
		{"bad DNS name", "entry.dns_names", func(e *adminv1.Entry) { e.DnsNames = []string{"bad_name.example"} }},
		{"empty DNS name", "entry.dns_names", func(e *adminv1.Entry) { e.DnsNames = []string{""} }},
		{"hint too long", "entry.hint", func(e *adminv1.Entry) { e.Hint = strings.Repeat("h", 200) }},
		{"too large to sync", "entry.selectors", func(e *adminv1.Entry) {
			for i := range 20 { // 20 valid selectors of 4 KB: 80 KB, over the 64 KiB an entry may take
				e.Selectors = append(e.Selectors, fmt.Sprintf("unix:path:/%d%s", i, strings.Repeat("p", 4000)))
			}
		}},
	}
	ctx := context.Background()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := good()
			tc.mutate(e)
			_, err := srv.Admin.CreateEntry(ctx, &adminv1.CreateEntryRequest{Entry: e})
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tc.field) {
				t.Fatalf("got %v, want InvalidArgument naming %s", err, tc.field)
			}
		})
	}
	// Nothing was stored, and the server still serves a good request.
	list, err := srv.Admin.ListEntries(ctx, &adminv1.ListEntriesRequest{})
	if err != nil || len(list.GetEntries()) != 0 {
		t.Fatalf("after bad requests: %d entries stored, err %v", len(list.GetEntries()), err)
	}
	if _, err := srv.Admin.CreateEntry(ctx, &adminv1.CreateEntryRequest{Entry: good()}); err != nil {
		t.Fatalf("good entry after bad ones: %v", err)
	}
	// A 2048-byte SPIFFE ID is accepted.
	long := good()
	long.SpiffeId = "spiffe://example.org/" + strings.Repeat("a", 2048-len("spiffe://example.org/"))
	if _, err := srv.Admin.CreateEntry(ctx, &adminv1.CreateEntryRequest{Entry: long}); err != nil {
		t.Fatalf("2048-byte SPIFFE ID: %v", err)
	}
}

func TestAgentAPIRejectsBadCSRsNamingTheField(t *testing.T) {
	srv := harness.StartServer(t)
	a := harness.AttestRaw(t, srv)
	entry := srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/web", ParentId: a.ID.String(), Selectors: []string{"unix:uid:1"}})
	id := spiffeid.RequireFromString(entry.GetSpiffeId())
	_, good := harness.NewCSR(t, id)
	_, noURI := harness.NewCSR(t, spiffeid.ID{})
	_, badSig := harness.NewCSR(t, id)
	badSig[len(badSig)-3] ^= 0xff

	otherID := spiffeid.RequireFromString("spiffe://example.org/admin")
	cases := []struct {
		name, field string
		csr         []byte
	}{
		{"empty", "csr", nil},
		{"garbage", "csr", []byte("not a CSR at all")},
		{"oversized", "csr", append(append([]byte{}, good...), make([]byte, 9000)...)},
		{"bad signature", "csr.signature", badSig},
		{"other SPIFFE ID", "csr.uri_sans", csrWith(t, id, func(r *x509.CertificateRequest) { r.URIs = []*url.URL{otherID.URL()} })},
		{"two URI SANs", "csr.uri_sans", csrWith(t, id, func(r *x509.CertificateRequest) { r.URIs = append(r.URIs, otherID.URL()) })},
		{"extra DNS SAN", "csr.sans", csrWith(t, id, func(r *x509.CertificateRequest) { r.DNSNames = []string{"evil.example"} })},
		{"extra IP SAN", "csr.sans", csrWith(t, id, func(r *x509.CertificateRequest) { r.IPAddresses = []net.IP{net.IPv4(10, 0, 0, 1)} })},
		{"extra email SAN", "csr.sans", csrWith(t, id, func(r *x509.CertificateRequest) { r.EmailAddresses = []string{"a@example.org"} })},
		{"asks for CA", "csr.extensions", csrWith(t, id, func(r *x509.CertificateRequest) {
			v, _ := asn1.Marshal(struct{ IsCA bool }{true})
			r.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: v}}
		})},
	}
	before := srv.CounterValue(t, issuedMetric, signedOK)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := a.Client.BatchNewX509SVID(context.Background(), &agentv1.BatchNewX509SVIDRequest{
				Params: []*agentv1.NewX509SVIDParams{{EntryId: entry.GetId(), Csr: tc.csr}},
			})
			if err != nil {
				t.Fatal(err)
			}
			r := resp.GetResults()[0]
			if codes.Code(r.GetStatusCode()) != codes.InvalidArgument || !strings.HasPrefix(r.GetStatusMessage(), tc.field+":") || r.GetSvid() != nil {
				t.Fatalf("got %d %q, want InvalidArgument naming %s", r.GetStatusCode(), r.GetStatusMessage(), tc.field)
			}
		})
	}
	if after := srv.CounterValue(t, issuedMetric, signedOK); after != before {
		t.Fatalf("%v SVIDs were signed for bad CSRs", after-before)
	}
	// A CSR without a URI SAN is fine (the entry decides the ID), and the
	// server still serves.
	for _, csr := range [][]byte{good, noURI} {
		resp, err := a.Client.BatchNewX509SVID(context.Background(), &agentv1.BatchNewX509SVIDRequest{
			Params: []*agentv1.NewX509SVIDParams{{EntryId: entry.GetId(), Csr: csr}},
		})
		if err != nil || resp.GetResults()[0].GetSvid() == nil {
			t.Fatalf("good CSR after bad ones: %v %v", err, resp.GetResults())
		}
	}
	// A batch over a limit is refused whole, naming the limit, before any CSR
	// is parsed: too many requests, too many CSR bytes, one entry twice.
	batch := func(n int, csr []byte, sameEntry bool) *agentv1.BatchNewX509SVIDRequest {
		req := &agentv1.BatchNewX509SVIDRequest{}
		for i := range n {
			id := fmt.Sprintf("entry-%d", i)
			if sameEntry {
				id = entry.GetId()
			}
			req.Params = append(req.Params, &agentv1.NewX509SVIDParams{EntryId: id, Csr: csr})
		}
		return req
	}
	for name, tc := range map[string]struct {
		req  *agentv1.BatchNewX509SVIDRequest
		want string
	}{
		"too many requests":  {batch(api.MaxBatchSize+1, nil, false), "more than the limit of 500"},
		"too many CSR bytes": {batch(api.MaxBatchCSRBytes/len(good)+1, good, false), "bytes, more than the limit"},
		"one entry twice":    {batch(2, good, true), "requested twice in one batch"},
	} {
		_, err := a.Client.BatchNewX509SVID(context.Background(), tc.req)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want InvalidArgument saying %q", name, err, tc.want)
		}
	}
	if after := srv.CounterValue(t, issuedMetric, signedOK); after != before+2 {
		t.Fatalf("%v SVIDs were signed, want the 2 good ones", after-before)
	}
}

// No one can obtain an SVID for the server's own identity (agents accept
// only that ID as the server): entries refuse it above, and so do minting
// by CSR, by fresh key and as a JWT. A look-alike outside the namespace is fine.
func TestServerNamespaceCannotBeMinted(t *testing.T) {
	srv := harness.StartServer(t)
	ctx := context.Background()
	_, csr := harness.NewCSR(t, spiffeid.RequireFromString("spiffe://example.org/shortleaf/server"))
	for _, id := range []string{"spiffe://example.org/shortleaf/server", "spiffe://example.org/shortleaf/x/y"} {
		if _, err := srv.Admin.MintX509SVID(ctx, &adminv1.MintX509SVIDRequest{SpiffeId: id}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "reserved") {
			t.Errorf("x509 mint %s: %v, want InvalidArgument saying it is reserved", id, err)
		}
		if _, err := srv.Admin.MintX509SVID(ctx, &adminv1.MintX509SVIDRequest{SpiffeId: id, Csr: csr}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("x509 mint %s from a CSR: %v, want InvalidArgument", id, err)
		}
		if _, err := srv.Admin.MintJWTSVID(ctx, &adminv1.MintJWTSVIDRequest{SpiffeId: id, Audience: []string{"a"}}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "reserved") {
			t.Errorf("jwt mint %s: %v, want InvalidArgument saying it is reserved", id, err)
		}
	}
	if _, err := srv.Admin.MintX509SVID(ctx, &adminv1.MintX509SVIDRequest{SpiffeId: "spiffe://example.org/shortleafish"}); err != nil {
		t.Errorf("a look-alike path outside the namespace: %v", err)
	}
}

func TestAttestRejectsMalformedToken(t *testing.T) {
	srv := harness.StartServer(t)
	_, csr := harness.NewCSR(t, spiffeid.ID{})
	for _, tok := range []string{"", "nodot", "zz.zz", strings.Repeat("a", 5000)} {
		_, err := harness.Attest(t, srv, tok, csr)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "join_token.token") {
			t.Errorf("token %.20q: %v, want InvalidArgument naming join_token.token", tok, err)
		}
	}
}

// A valid token with a bad CSR: the CSR is refused naming the field, the
// token is spent (it was looked up and consumed before the CSR was read), and
// no half-made agent record is left behind.
func TestAttestWithABadCSRSpendsTheTokenAndLeavesNoAgent(t *testing.T) {
	srv := harness.StartServer(t)
	token, agentID := srv.NewJoinToken(t)
	_, err := harness.Attest(t, srv, token, []byte{0x30, 0x03, 0x02, 0x01, 0x00})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "csr") {
		t.Fatalf("bad CSR: %v, want InvalidArgument naming csr", err)
	}
	if _, err := srv.Admin.GetAgent(context.Background(), &adminv1.GetAgentRequest{SpiffeId: agentID}); status.Code(err) != codes.NotFound {
		t.Fatalf("agent record after a refused CSR: %v, want NotFound", err)
	}
	_, csr := harness.NewCSR(t, spiffeid.ID{})
	if _, err := harness.Attest(t, srv, token, csr); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("the token after its use with a bad CSR: %v, want PermissionDenied (spent)", err)
	}
}

func csrWith(t *testing.T, id spiffeid.ID, mutate func(*x509.CertificateRequest)) []byte {
	_, der := harness.NewCSR(t, id, mutate)
	return der
}

// A data directory another user controls is refused before anything is read
// from it or written to it, by the server and the agent alike.
func TestDataDirOthersControlIsRefused(t *testing.T) {
	open := t.TempDir()
	if err := os.Chmod(open, 0o777); err != nil { //nolint:gosec // the mistake under test
		t.Fatal(err)
	}
	_, err := server.New(context.Background(), server.Config{TrustDomain: harness.TrustDomain, DataDir: open, InsecureUnencryptedKeys: true,
		AgentAPIAddr: "127.0.0.1:0", AdminSocket: filepath.Join(harness.ShortDir(t), "admin.sock")})
	if err == nil || !strings.Contains(err.Error(), "data_dir") || !strings.Contains(err.Error(), "writable by group or others") {
		t.Fatalf("server with a world-writable data dir: %v", err)
	}
	if entries, _ := os.ReadDir(open); len(entries) != 0 {
		t.Fatalf("the server wrote %d files into a refused data dir", len(entries))
	}
	srv := harness.StartServer(t)
	_, err = agent.New(context.Background(), agent.Config{ServerAddrs: []string{srv.AgentAddr()}, TrustDomain: harness.TrustDomain, DataDir: open,
		JoinToken: "x", InsecureBootstrap: true, SocketPath: filepath.Join(harness.ShortDir(t), "agent.sock")})
	if err == nil || !strings.Contains(err.Error(), "data_dir") {
		t.Fatalf("agent with a world-writable data dir: %v", err)
	}
}
