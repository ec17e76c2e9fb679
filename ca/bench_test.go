package ca_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"net/url"
	"testing"
	"time"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/ca/catest"
)

// BenchmarkIssuance is the server's per-SVID work: parse and check the CSR,
// then sign the leaf (CSR in, chain out).
func BenchmarkIssuance(b *testing.B) {
	c := catest.New(b)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der := makeCSR(b, key, &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}})
	b.ReportAllocs()
	for b.Loop() {
		csr, err := ca.ParseX509SVIDCSR(der, webID)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.SignX509SVID(ca.X509SVIDParams{PublicKey: csr.PublicKey, SPIFFEID: webID, TTL: 5 * time.Minute}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "svids/s")
}

// BenchmarkCryptoBound is the floor no CA can go below for the same job: one
// CSR signature check and one ECDSA P-256 signature. Issuance / CryptoBound
// is the overhead ratio the README quotes.
func BenchmarkCryptoBound(b *testing.B) {
	signer, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der := makeCSR(b, key, &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}})
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		b.Fatal(err)
	}
	digest := sha256.Sum256(der)
	b.ReportAllocs()
	for b.Loop() {
		if err := csr.CheckSignature(); err != nil {
			b.Fatal(err)
		}
		if _, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "svids/s")
}
