package catest

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"testing"
)

// ForgedRSACSR is a CSR for an RSA public key of the given size and exponent
// (a random odd modulus, no private half) with a garbage signature, as an
// attacker who wants the CA to verify expensive signatures would send it.
// Go refuses to sign such a CSR, so it is assembled by hand.
func ForgedRSACSR(t testing.TB, bits, exponent int) []byte {
	t.Helper()
	buf := make([]byte, bits/8)
	if _, err := rand.Read(buf); err != nil {
		t.Fatal(err)
	}
	buf[0] |= 0x80
	buf[len(buf)-1] |= 1
	spki, err := x509.MarshalPKIXPublicKey(&rsa.PublicKey{N: new(big.Int).SetBytes(buf), E: exponent})
	if err != nil {
		t.Fatal(err)
	}
	type certificationRequestInfo struct {
		Version    int
		Subject    asn1.RawValue
		PublicKey  asn1.RawValue
		Attributes asn1.RawValue `asn1:"tag:0"`
	}
	info, err := asn1.Marshal(certificationRequestInfo{
		Subject:    asn1.RawValue{FullBytes: []byte{0x30, 0x00}},
		PublicKey:  asn1.RawValue{FullBytes: spki},
		Attributes: asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	sha256WithRSA := pkix.AlgorithmIdentifier{Algorithm: asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}, Parameters: asn1.NullRawValue}
	der, err := asn1.Marshal(struct {
		Info      asn1.RawValue
		Algorithm pkix.AlgorithmIdentifier
		Signature asn1.BitString
	}{asn1.RawValue{FullBytes: info}, sha256WithRSA, asn1.BitString{Bytes: buf, BitLength: len(buf) * 8}})
	if err != nil {
		t.Fatal(err)
	}
	return der
}
