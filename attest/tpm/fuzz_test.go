package tpm

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
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
