package ca_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/asn1"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/ca/catest"
	"github.com/shortleaf/shortleaf/pkg/clock"
)

var oidSAN = asn1.ObjectIdentifier{2, 5, 29, 17}

func signLeaf(t *testing.T, c *ca.CA, id string, ttl time.Duration, dns ...string) []*x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := c.SignX509SVID(ca.X509SVIDParams{PublicKey: key.Public(), SPIFFEID: spiffeid.RequireFromString(id), TTL: ttl, DNSNames: dns})
	if err != nil {
		t.Fatalf("sign %s: %v", id, err)
	}
	return chain
}

// The SPIFFE X.509-SVID rules for leaves, on a workload and an agent SVID.
func TestLeafFollowsSPIFFERules(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	clk := clock.NewFake(now)
	cfg := catest.Config(t)
	cfg.Clock = clk
	c := catest.NewFromConfig(t, cfg)
	bundle, _ := c.Bundle()

	for _, tc := range []struct {
		name, id string
		dns      []string
		ttl      time.Duration
	}{
		{"workload", "spiffe://example.org/web", []string{"web.internal", "*.web.internal"}, 5 * time.Minute},
		{"agent", "spiffe://example.org/agent/join_token/0123456789abcdef", nil, time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			chain := signLeaf(t, c, tc.id, tc.ttl, tc.dns...)
			leaf := chain[0]
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != tc.id {
				t.Errorf("URI SANs = %v, want exactly [%s]", leaf.URIs, tc.id)
			}
			if len(leaf.Subject.Names) == 0 && !extensionCritical(leaf, oidSAN) {
				t.Error("subject is empty but the SAN extension is not critical")
			}
			if !leaf.BasicConstraintsValid || leaf.IsCA {
				t.Error("leaf must carry basicConstraints cA=false")
			}
			if !extensionCritical(leaf, asn1.ObjectIdentifier{2, 5, 29, 15}) {
				t.Error("key usage must be critical")
			}
			if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
				t.Errorf("key usage = %b, want digitalSignature only for an EC key", leaf.KeyUsage)
			}
			if !hasEKU(leaf, x509.ExtKeyUsageServerAuth) || !hasEKU(leaf, x509.ExtKeyUsageClientAuth) {
				t.Errorf("EKU = %v, want serverAuth and clientAuth", leaf.ExtKeyUsage)
			}
			if !leaf.NotBefore.Equal(now.Add(-ca.Backdate)) {
				t.Errorf("NotBefore = %s, want now - 30s = %s", leaf.NotBefore, now.Add(-ca.Backdate))
			}
			if !leaf.NotAfter.Equal(now.Add(tc.ttl)) {
				t.Errorf("NotAfter = %s, want now + TTL = %s", leaf.NotAfter, now.Add(tc.ttl))
			}
			if leaf.NotAfter.After(chain[1].NotAfter) {
				t.Error("leaf outlives its signer")
			}
			if len(leaf.DNSNames) != len(tc.dns) {
				t.Errorf("DNS names = %v, want %v", leaf.DNSNames, tc.dns)
			}
			if len(chain) != 2 || !chain[1].IsCA {
				t.Fatalf("chain = %d certificates, want leaf + intermediate", len(chain))
			}
			// go-spiffe as the independent judge of the SVID and its chain.
			id, _, err := x509svid.Verify(chain, bundle, x509svid.WithTime(now))
			if err != nil || id.String() != tc.id {
				t.Fatalf("x509svid.Verify: %v, %v", id, err)
			}
		})
	}
}

func TestSerialsAreRandom128Bit(t *testing.T) {
	c := catest.New(t)
	seen := map[string]bool{}
	var maxBits int
	for range 500 {
		s := signLeaf(t, c, "spiffe://example.org/w", time.Minute)[0].SerialNumber
		if s.Sign() <= 0 || s.BitLen() > 128 {
			t.Fatalf("serial %s is not a positive 128-bit number", s.Text(16))
		}
		if seen[s.String()] {
			t.Fatalf("serial %s repeated", s.Text(16))
		}
		seen[s.String()] = true
		maxBits = max(maxBits, s.BitLen())
	}
	// 500 uniform draws below 2^128 all staying under 2^120 has odds of 2^-4000.
	if maxBits <= 120 {
		t.Fatalf("largest serial has %d bits; serials are not drawn from 128 bits", maxBits)
	}
}

func TestSVIDNeverOutlivesIntermediate(t *testing.T) {
	now := time.Now()
	clk := clock.NewFake(now)
	cfg := catest.Config(t)
	cfg.Clock = clk
	cfg.IntermediateTTL = 2 * time.Hour
	c := catest.NewFromConfig(t, cfg)
	inter, _ := c.ActiveIntermediate()
	// 1h59m later, a 5-minute SVID would outlive the intermediate.
	clk.Add(119 * time.Minute)
	leaf := signLeaf(t, c, "spiffe://example.org/w", 5*time.Minute)[0]
	if leaf.NotAfter.After(inter.NotAfter) {
		t.Fatalf("leaf NotAfter %s is past the intermediate's %s", leaf.NotAfter, inter.NotAfter)
	}
}

func TestSigningCertificatesFollowSPIFFERules(t *testing.T) {
	c := catest.New(t)
	var root, inter *x509.Certificate
	for _, a := range c.Authorities() {
		switch a.Kind {
		case ca.KindRoot:
			root = a.Cert
		case ca.KindIntermediate:
			inter = a.Cert
		}
	}
	for name, cert := range map[string]*x509.Certificate{"root": root, "intermediate": inter} {
		if !cert.BasicConstraintsValid || !cert.IsCA {
			t.Errorf("%s: must be cA=true", name)
		}
		if cert.KeyUsage&x509.KeyUsageCertSign == 0 {
			t.Errorf("%s: must have keyCertSign", name)
		}
		if len(cert.URIs) != 1 || cert.URIs[0].String() != "spiffe://example.org" {
			t.Errorf("%s: URI SANs = %v, want [spiffe://example.org]", name, cert.URIs)
		}
	}
	if inter.NotAfter.After(root.NotAfter) {
		t.Error("intermediate outlives the root")
	}
	if err := inter.CheckSignatureFrom(root); err != nil {
		t.Errorf("intermediate is not signed by the root: %v", err)
	}
	if !inter.MaxPathLenZero || inter.MaxPathLen != 0 {
		t.Error("intermediate must have pathLen 0: it signs only leaves")
	}
}

// zlint's RFC 5280 lints find no error and no warning on any certificate the
// CA makes.
func TestZlintRFC5280(t *testing.T) {
	c := catest.New(t)
	registry, err := lint.GlobalRegistry().Filter(lint.FilterOptions{IncludeSources: lint.SourceList{lint.RFC5280}})
	if err != nil {
		t.Fatal(err)
	}
	certs := map[string]*x509.Certificate{}
	for _, a := range c.Authorities() {
		if a.Cert != nil {
			certs[string(a.Kind)] = a.Cert
		}
	}
	certs["workload SVID"] = signLeaf(t, c, "spiffe://example.org/web", 5*time.Minute, "web.internal")[0]
	certs["agent SVID"] = signLeaf(t, c, "spiffe://example.org/agent/join_token/0123456789abcdef", time.Hour)[0]
	for name, cert := range certs {
		zc, err := zx509.ParseCertificate(cert.Raw)
		if err != nil {
			t.Fatalf("%s: zcrypto parse: %v", name, err)
		}
		res := zlint.LintCertificateEx(zc, registry)
		if len(res.Results) < 50 {
			t.Fatalf("%s: only %d lints ran; the RFC 5280 set did not load", name, len(res.Results))
		}
		for lintName, r := range res.Results {
			if r.Status == lint.Warn || r.Status == lint.Error || r.Status == lint.Fatal {
				t.Errorf("%s: %s: %s %s", name, lintName, r.Status, r.Details)
			}
		}
	}
}

func TestCAReloadsSameAuthoritiesFromJournal(t *testing.T) {
	cfg := catest.Config(t)
	first := catest.NewFromConfig(t, cfg)
	second := catest.NewFromConfig(t, cfg)
	a, b := first.Authorities(), second.Authorities()
	if len(a) != 3 || len(b) != len(a) { // root, intermediate, JWT key
		t.Fatalf("authorities: %d then %d", len(a), len(b))
	}
	for i := range a {
		if a[i].ID != b[i].ID || a[i].State != b[i].State || a[i].KeyRef != b[i].KeyRef || !a[i].NotAfter.Equal(b[i].NotAfter) {
			t.Errorf("authority %d differs after reload", i)
		}
	}
	// The reloaded key signs, and what it signs chains to the same bundle.
	bundle, _ := first.Bundle()
	chain := signLeaf(t, second, "spiffe://example.org/w", time.Minute)
	if _, _, err := x509svid.Verify(chain, bundle); err != nil {
		t.Fatal(err)
	}
	if err := second.CheckSigner(); err != nil {
		t.Fatalf("readiness check: %v", err)
	}
}

func TestRefusesOtherTrustDomainAndBadTTL(t *testing.T) {
	c := catest.New(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for name, p := range map[string]ca.X509SVIDParams{
		"other trust domain": {PublicKey: key.Public(), SPIFFEID: spiffeid.RequireFromString("spiffe://other.org/w"), TTL: time.Minute},
		"zero TTL":           {PublicKey: key.Public(), SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/w")},
		"no key":             {SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/w"), TTL: time.Minute},
	} {
		if _, err := c.SignX509SVID(p); err == nil {
			t.Errorf("%s: signed", name)
		}
	}
}

func extensionCritical(c *x509.Certificate, oid asn1.ObjectIdentifier) bool {
	for _, e := range c.Extensions {
		if e.Id.Equal(oid) {
			return e.Critical
		}
	}
	return false
}

func hasEKU(c *x509.Certificate, want x509.ExtKeyUsage) bool {
	for _, u := range c.ExtKeyUsage {
		if u == want {
			return true
		}
	}
	return false
}
