package ca_test

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"net/url"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/ca/catest"
)

var webID = spiffeid.RequireFromString("spiffe://example.org/web")

func makeCSR(t testing.TB, key any, tpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestParseX509SVIDCSR(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024) //nolint:gosec // testing that short keys are refused
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	rsa2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	cases := []struct {
		name  string
		der   []byte
		field string // "" means accepted
	}{
		{"with the SPIFFE ID", makeCSR(t, p256, &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}}), ""},
		{"without SANs", makeCSR(t, p256, &x509.CertificateRequest{}), ""},
		{"P-224 key", makeCSR(t, p224, &x509.CertificateRequest{}), "csr.public_key"},
		{"RSA-1024 key", makeCSR(t, rsa1024, &x509.CertificateRequest{}), "csr.public_key"},
		{"non-SPIFFE URI", makeCSR(t, p256, &x509.CertificateRequest{URIs: []*url.URL{{Scheme: "https", Host: "x"}}}), "csr.uri_sans"},
		{"truncated", makeCSR(t, p256, &x509.CertificateRequest{})[:40], "csr"},
		{"P-384 key", makeCSR(t, p384, &x509.CertificateRequest{}), ""},
		{"Ed25519 key", makeCSR(t, edKey, &x509.CertificateRequest{}), ""},
		{"RSA-2048 key", makeCSR(t, rsa2048, &x509.CertificateRequest{}), ""},
		// These two carry a garbage signature: refusing them on the key, not
		// the signature, proves the bound is checked before any signature work.
		{"RSA-8192 key", catest.ForgedRSACSR(t, 8192, 65537), "csr.public_key"},
		{"RSA exponent 3", catest.ForgedRSACSR(t, 2048, 3), "csr.public_key"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ca.ParseX509SVIDCSR(tc.der, webID)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var re *ca.RequestError
			if !errors.As(err, &re) || re.Field != tc.field {
				t.Fatalf("error = %v, want a RequestError on %s", err, tc.field)
			}
		})
	}
}

// FuzzParseX509SVIDCSR: no input panics, and whatever is accepted asks for
// nothing but the requested ID.
func FuzzParseX509SVIDCSR(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	f.Add(makeCSR(f, key, &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}}))
	f.Add(makeCSR(f, key, &x509.CertificateRequest{DNSNames: []string{"a.example"}}))
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, der []byte) {
		csr, err := ca.ParseX509SVIDCSR(der, webID)
		if err != nil {
			var re *ca.RequestError
			if !errors.As(err, &re) {
				t.Fatalf("error is not a RequestError: %v", err)
			}
			return
		}
		if len(csr.DNSNames)+len(csr.EmailAddresses)+len(csr.IPAddresses) > 0 || len(csr.URIs) > 1 {
			t.Fatalf("accepted a CSR asking for more: %+v", csr)
		}
		if len(csr.URIs) == 1 && csr.URIs[0].String() != webID.String() {
			t.Fatalf("accepted a CSR for %s", csr.URIs[0])
		}
	})
}
