package tpm

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"errors"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// FuzzAttestPayload: no payload panics the parser or the checks made
// before the challenge, and nothing attests without answering it.
func FuzzAttestPayload(f *testing.F) {
	f.Add([]byte(`{"ek_public":"AAAA","ak":{"public":"AA==","create_data":"AA==","create_attestation":"AA==","create_signature":"AA=="}}`))
	f.Add([]byte(`{}`))
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	hash, _ := PubHash(&key.PublicKey)
	s, _ := NewServer(nil, []string{hash}, nil)
	td := spiffeid.RequireTrustDomainFromString("example.org")
	f.Fuzz(func(t *testing.T, raw []byte) {
		_, err := s.Attest(context.Background(), td, raw, func(context.Context, []byte) ([]byte, error) { return nil, errors.New("no answer") })
		if err == nil {
			t.Fatal("attested without answering the challenge")
		}
	})
}

// FuzzAKParameters: no AK structures (TPMT_PUBLIC, creation data, its
// attestation and signature) of an allowed EK panic the checks, and none
// attests without answering the challenge.
func FuzzAKParameters(f *testing.F) {
	ek, _ := rsa.GenerateKey(rand.Reader, 2048)
	hash, _ := PubHash(&ek.PublicKey)
	ekDER, _ := x509.MarshalPKIXPublicKey(&ek.PublicKey)
	s, _ := NewServer(nil, []string{hash}, nil)
	td := spiffeid.RequireTrustDomainFromString("example.org")
	f.Add([]byte{0x00, 0x01, 0x00, 0x0b}, []byte{0}, []byte{0xff, 0x54, 0x43, 0x47}, []byte{0x00, 0x14})
	f.Fuzz(func(t *testing.T, public, createData, createAttestation, createSignature []byte) {
		raw, _ := json.Marshal(Payload{EKPublic: ekDER, AK: AKParameters{Public: public, CreateData: createData,
			CreateAttestation: createAttestation, CreateSignature: createSignature}})
		_, err := s.Attest(context.Background(), td, raw, func(context.Context, []byte) ([]byte, error) { return nil, errors.New("no answer") })
		if err == nil {
			t.Fatal("attested without answering the challenge")
		}
	})
}
