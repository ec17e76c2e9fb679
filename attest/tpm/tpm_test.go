//go:build tpmsimulator

package tpm

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	steptpm "go.step.sm/crypto/tpm"

	sl "github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/attest/tpm/tpmtest"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func TestAttestsATPMWithAManufacturerEKCertificate(t *testing.T) {
	sim := tpmtest.Open(t)
	maker := tpmtest.NewManufacturer(t, "Test TPM Maker")
	ekCert := maker.IssueEKCert(t, tpmtest.EKPublic(t, sim))
	s, err := NewServer([]*x509.Certificate{maker.Root}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &Client{Open: func() (*steptpm.TPM, error) { return sim, nil }, EKCert: ekCert}
	payload, err := c.Payload(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.Attest(context.Background(), td, payload, c.Answer)
	if err != nil {
		t.Fatal(err)
	}
	hash, _ := PubHash(ekCert.PublicKey)
	if want := "spiffe://example.org/agent/tpm/" + hash; res.AgentID.String() != want {
		t.Fatalf("agent ID %s, want %s", res.AgentID, want)
	}
	if len(res.Selectors) != 1 || res.Selectors[0].String() != "tpm:pub_hash:"+hash || res.Selectors[0].Validate() != nil {
		t.Fatalf("selectors %v", res.Selectors)
	}
}

func TestRefusesWhatDoesNotProveTheTPM(t *testing.T) {
	sim := tpmtest.Open(t)
	maker, other := tpmtest.NewManufacturer(t, "Test TPM Maker"), tpmtest.NewManufacturer(t, "Someone Else")
	ekPub := tpmtest.EKPublic(t, sim)
	s, _ := NewServer([]*x509.Certificate{maker.Root}, nil, nil)
	open := func() (*steptpm.TPM, error) { return sim, nil }
	honest := &Client{Open: open, EKCert: maker.IssueEKCert(t, ekPub)}
	payload, _ := honest.Payload(context.Background())
	// The answer to an earlier exchange, for the replay.
	var recorded []byte
	if _, err := s.Attest(context.Background(), td, payload, func(ctx context.Context, ch []byte) ([]byte, error) {
		var err error
		recorded, err = honest.Answer(ctx, ch)
		return recorded, err
	}); err != nil {
		t.Fatal(err)
	}
	withoutCert := &Client{Open: open}
	noCert, _ := withoutCert.Payload(context.Background())
	foreign := &Client{Open: open, EKCert: other.IssueEKCert(t, ekPub)}
	foreignPayload, _ := foreign.Payload(context.Background())
	// An EK certificate of another key: the credential is encrypted to a
	// key this TPM does not hold.
	otherKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	stolen := &Client{Open: open, EKCert: maker.IssueEKCert(t, &otherKey.PublicKey)}
	stolenPayload, _ := stolen.Payload(context.Background())
	var p Payload
	_ = json.Unmarshal(payload, &p)
	p.AK.Public[len(p.AK.Public)-1] ^= 1
	tampered, _ := json.Marshal(p)
	for name, tc := range map[string]struct {
		payload []byte
		answer  sl.Challenger
		want    error
		msg     string
	}{
		"replayed activation": {payload, func(context.Context, []byte) ([]byte, error) { return recorded, nil }, sl.ErrRefused, "not activated"},
		"certification of an earlier nonce": {payload, func(ctx context.Context, ch []byte) ([]byte, error) {
			fresh, err := honest.Answer(ctx, ch)
			if err != nil {
				return nil, err
			}
			var now, old Response
			_ = json.Unmarshal(fresh, &now)
			_ = json.Unmarshal(recorded, &old)
			now.Certification = old.Certification
			return json.Marshal(now)
		}, sl.ErrRefused, "another nonce"},
		"no certification": {payload, func(ctx context.Context, ch []byte) ([]byte, error) {
			fresh, err := honest.Answer(ctx, ch)
			if err != nil {
				return nil, err
			}
			var r Response
			_ = json.Unmarshal(fresh, &r)
			r.Certification = AKParameters{}
			return json.Marshal(r)
		}, sl.ErrRefused, "did not sign the nonce"},
		"guessed secret":              {payload, func(context.Context, []byte) ([]byte, error) { return json.Marshal(Response{Secret: make([]byte, 32)}) }, sl.ErrRefused, "not activated"},
		"another manufacturer":        {foreignPayload, nil, sl.ErrRefused, "does not verify"},
		"no certificate, not allowed": {noCert, nil, sl.ErrRefused, "not in the allow list"},
		"EK of another TPM":           {stolenPayload, honest.Answer, nil, ""},
		"tampered AK":                 {tampered, nil, sl.ErrRefused, "not a TPM-made attestation key"},
		"empty":                       {[]byte(`{}`), nil, sl.ErrMalformed, "neither"},
	} {
		t.Run(name, func(t *testing.T) {
			answer := tc.answer
			if answer == nil {
				answer = func(context.Context, []byte) ([]byte, error) {
					t.Fatal("challenged a TPM that should have been refused first")
					return nil, nil
				}
			}
			_, err := s.Attest(context.Background(), td, tc.payload, answer)
			if err == nil {
				t.Fatal("attested")
			}
			if tc.want != nil && (!errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg)) {
				t.Fatalf("got %v, want %v naming %q", err, tc.want, tc.msg)
			}
		})
	}
	// Allowed by its hash, the same TPM attests without a certificate.
	hash, _ := PubHash(ekPub)
	allow, _ := NewServer(nil, []string{hash}, nil)
	if _, err := allow.Attest(context.Background(), td, noCert, withoutCert.Answer); err != nil {
		t.Fatalf("EK on the allow list: %v", err)
	}
}
