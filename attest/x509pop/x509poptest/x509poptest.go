// Package x509poptest is a corporate machine CA for tests of the x509pop
// attestor: a root and an intermediate that issues node certificates, in
// memory or written to files as a machine holds them.
package x509poptest

import (
	"crypto"
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

// CA is a machine CA.
type CA struct {
	Root, Intermediate *x509.Certificate
	rootKey, interKey  *ecdsa.PrivateKey
}

var serial atomic.Int64

// New makes a machine CA named name.
func New(t testing.TB, name string) *CA {
	t.Helper()
	m := &CA{}
	m.rootKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	m.interKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	m.Root = sign(t, &x509.Certificate{Subject: pkix.Name{CommonName: name + " root"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}, &m.rootKey.PublicKey, nil, m.rootKey)
	m.Intermediate = sign(t, &x509.Certificate{Subject: pkix.Name{CommonName: name + " machines"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}, &m.interKey.PublicKey, m.Root, m.rootKey)
	return m
}

// Issue issues a client certificate named cn for pub, valid from an hour
// ago for a day unless mutate (nil: none) changes it, and returns it with
// the intermediate: the chain a node presents.
func (m *CA) Issue(t testing.TB, cn string, pub crypto.PublicKey, mutate func(*x509.Certificate)) []*x509.Certificate {
	t.Helper()
	tpl := &x509.Certificate{Subject: pkix.Name{CommonName: cn}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if mutate != nil {
		mutate(tpl)
	}
	return []*x509.Certificate{sign(t, tpl, pub, m.Intermediate, m.interKey), m.Intermediate}
}

// NodeCert is a node certificate written to files, as a machine holds it.
type NodeCert struct {
	Leaf     *x509.Certificate
	Key      *ecdsa.PrivateKey
	CertPath string // the leaf, then the intermediate
	KeyPath  string // PKCS#8, mode 0600
}

// IssueNode issues a certificate for a node named cn with a fresh P-256
// key, valid from notBefore to notAfter (zero: from an hour ago for a day),
// and writes it and its key under dir.
func (m *CA) IssueNode(t testing.TB, dir, cn string, notBefore, notAfter time.Time) *NodeCert {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	chain := m.Issue(t, cn, &key.PublicKey, func(c *x509.Certificate) {
		if !notBefore.IsZero() {
			c.NotBefore, c.NotAfter = notBefore, notAfter
		}
	})
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	n := &NodeCert{Leaf: chain[0], Key: key, CertPath: filepath.Join(dir, cn+".pem"), KeyPath: filepath.Join(dir, cn+".key")}
	var certs []byte
	for _, c := range chain {
		certs = append(certs, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	if err := os.WriteFile(n.CertPath, certs, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(n.KeyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), 0o600); err != nil {
		t.Fatal(err)
	}
	return n
}

func sign(t testing.TB, tpl *x509.Certificate, pub any, parent *x509.Certificate, key *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	tpl.SerialNumber = big.NewInt(serial.Add(1))
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
