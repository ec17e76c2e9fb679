// Package tpmtest stands in for a machine's TPM and its manufacturer in
// tests of the tpm attestor: the TPM 2.0 reference simulator (cgo, built
// with the tpmsimulator tag and OpenSSL's headers; scripts/install-deps.sh
// installs them), and a manufacturer CA that issues EK certificates.
package tpmtest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"testing"
	"time"

	steptpm "go.step.sm/crypto/tpm"
	"go.step.sm/crypto/tpm/simulator"
	"go.step.sm/crypto/tpm/storage"
)

// Open starts the simulator (one per process; a second Open waits for the
// first to be closed at its test's end) and returns it as a TPM whose keys
// are kept in a temporary directory.
func Open(t testing.TB) *steptpm.TPM {
	t.Helper()
	sim, err := simulator.New()
	if err != nil {
		t.Fatalf("TPM simulator (build with -tags tpmsimulator): %v", err)
	}
	if err := sim.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	tpm, err := steptpm.New(steptpm.WithSimulator(sim), steptpm.WithStore(storage.NewDirstore(t.TempDir())))
	if err != nil {
		t.Fatal(err)
	}
	return tpm
}

// EKPublic is the TPM's endorsement public key.
func EKPublic(t testing.TB, tpm *steptpm.TPM) crypto.PublicKey {
	t.Helper()
	eks, err := tpm.GetEKs(context.Background())
	if err != nil || len(eks) == 0 {
		t.Fatalf("EKs: %v", err)
	}
	return eks[0].Public()
}

// Manufacturer is a TPM manufacturer's EK CA.
type Manufacturer struct {
	Root *x509.Certificate
	key  *ecdsa.PrivateKey
	name string
}

// NewManufacturer makes a manufacturer CA named name.
func NewManufacturer(t testing.TB, name string) *Manufacturer {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name + " EK Root"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(der)
	return &Manufacturer{Root: root, key: key, name: name}
}

// oidTCGEKCertificate is the EK certificate's extended key usage.
var oidTCGEKCertificate = asn1.ObjectIdentifier{2, 23, 133, 8, 1}

// IssueEKCert issues an EK certificate for ek shaped as manufacturers do:
// an empty subject and a critical subject alternative name holding a
// directory name (manufacturer, model, version).
func (m *Manufacturer) IssueEKCert(t testing.TB, ek crypto.PublicKey) *x509.Certificate {
	t.Helper()
	dirName, err := asn1.Marshal(pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{
		{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 1}, Value: "id:54455354"},
		{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 2}, Value: m.name},
		{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 3}, Value: "id:00010002"},
	}}.ToRDNSequence())
	if err != nil {
		t.Fatal(err)
	}
	san, err := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: dirName}})
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tpl := &x509.Certificate{SerialNumber: serial, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageKeyEncipherment, UnknownExtKeyUsage: []asn1.ObjectIdentifier{oidTCGEKCertificate}, BasicConstraintsValid: true,
		ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Critical: true, Value: san}}}
	der, err := x509.CreateCertificate(rand.Reader, tpl, m.Root, ek, m.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}
