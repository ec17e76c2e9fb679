package harness

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// MachineCA is a corporate machine CA for x509pop tests: a root and an
// intermediate that issues node certificates.
type MachineCA struct {
	Root, Intermediate *x509.Certificate
	rootKey, interKey  *ecdsa.PrivateKey
}

var machineSerial atomic.Int64

// NewMachineCA makes a machine CA named name.
func NewMachineCA(t testing.TB, name string) *MachineCA {
	t.Helper()
	m := &MachineCA{}
	m.rootKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	m.interKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	m.Root = signCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: name + " root"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}, &m.rootKey.PublicKey, nil, m.rootKey)
	m.Intermediate = signCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: name + " machines"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}, &m.interKey.PublicKey, m.Root, m.rootKey)
	return m
}

// NodeCert is a node certificate written to files, as a machine holds it.
type NodeCert struct {
	Leaf     *x509.Certificate
	Key      *ecdsa.PrivateKey
	CertPath string // the leaf, then the intermediate
	KeyPath  string // PKCS#8, mode 0600
}

// IssueNode issues a client certificate for a node named cn, valid from
// notBefore to notAfter (zero: from an hour ago for a day), and writes it
// and its key under dir.
func (m *MachineCA) IssueNode(t testing.TB, dir, cn string, notBefore, notAfter time.Time) *NodeCert {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if notBefore.IsZero() {
		notBefore, notAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	}
	leaf := signCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: cn}, NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, &key.PublicKey, m.Intermediate, m.interKey)
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	n := &NodeCert{Leaf: leaf, Key: key, CertPath: filepath.Join(dir, cn+".pem"), KeyPath: filepath.Join(dir, cn+".key")}
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: m.Intermediate.Raw})...)
	if err := os.WriteFile(n.CertPath, chain, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(n.KeyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), 0o600); err != nil {
		t.Fatal(err)
	}
	return n
}

func signCert(t testing.TB, tpl *x509.Certificate, pub any, parent *x509.Certificate, key *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	tpl.SerialNumber = big.NewInt(machineSerial.Add(1))
	if tpl.NotBefore.IsZero() {
		tpl.NotBefore, tpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	}
	if parent == nil {
		parent = tpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, parent, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
