package x509pop

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/attest/x509pop/x509poptest"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// exchange runs an attestation of client against server, the challenge
// answered by answer (the client's own when nil).
func exchange(t *testing.T, s *Server, payload []byte, answer attest.Challenger) (*attest.NodeResult, error) {
	t.Helper()
	return s.Attest(context.Background(), td, payload, answer)
}

func TestAttestsNodesWithEachKeyType(t *testing.T) {
	ca := x509poptest.New(t, "corp")
	s, err := NewServer([]*x509.Certificate{ca.Root}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	for name, key := range map[string]crypto.Signer{"ecdsa": ecKey, "rsa": rsaKey, "ed25519": edKey} {
		t.Run(name, func(t *testing.T) {
			chain := ca.Issue(t, "node-"+name+".corp", key.Public(), nil)
			c, err := NewClient(chain, key)
			if err != nil {
				t.Fatal(err)
			}
			payload, _ := c.Payload(context.Background())
			res, err := exchange(t, s, payload, c.Answer)
			if err != nil {
				t.Fatal(err)
			}
			want := "spiffe://example.org/agent/x509pop/" + Fingerprint(chain[0])
			if res.AgentID.String() != want {
				t.Fatalf("agent ID %s, want %s", res.AgentID, want)
			}
			got := map[string]bool{}
			for _, sel := range res.Selectors {
				if err := sel.Validate(); err != nil {
					t.Errorf("selector %s does not validate: %v", sel, err)
				}
				got[sel.String()] = true
			}
			for _, sel := range []string{"x509pop:subject:cn:node-" + name + ".corp", "x509pop:ca:fingerprint:" + Fingerprint(ca.Intermediate),
				"x509pop:ca:fingerprint:" + Fingerprint(ca.Root), "x509pop:serialnumber:" + chain[0].SerialNumber.Text(16)} {
				if !got[sel] {
					t.Errorf("selector %s missing from %v", sel, res.Selectors)
				}
			}
		})
	}
}

func TestRefusesWhatDoesNotProveTheNode(t *testing.T) {
	ca, other := x509poptest.New(t, "corp"), x509poptest.New(t, "other")
	s, _ := NewServer([]*x509.Certificate{ca.Root}, nil)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	thief, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good := ca.Issue(t, "node.corp", key.Public(), nil)
	goodClient, _ := NewClient(good, key)
	payloadOf := func(chain []*x509.Certificate) []byte {
		p := Payload{}
		for _, c := range chain {
			p.CertChain = append(p.CertChain, c.Raw)
		}
		raw, _ := json.Marshal(p)
		return raw
	}
	// A signature the node made for an earlier challenge, replayed.
	var replayed []byte
	{
		p, _ := goodClient.Payload(context.Background())
		if _, err := exchange(t, s, p, func(ctx context.Context, ch []byte) ([]byte, error) {
			replayed, _ = goodClient.Answer(ctx, ch)
			return replayed, nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	thiefClient := &Client{chain: [][]byte{good[0].Raw, good[1].Raw}, signer: thief}
	for name, tc := range map[string]struct {
		payload []byte
		answer  attest.Challenger
		want    error
		msg     string
	}{
		"expired": {payloadOf(ca.Issue(t, "old.corp", key.Public(), func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)
		})), nil, attest.ErrRefused, "expired"},
		"another CA":           {payloadOf(other.Issue(t, "node.other", key.Public(), nil)), nil, attest.ErrRefused, "does not verify"},
		"not for clients":      {payloadOf(ca.Issue(t, "web.corp", key.Public(), func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} })), nil, attest.ErrRefused, "does not verify"},
		"intermediate missing": {payloadOf(good[:1]), nil, attest.ErrRefused, "does not verify"},
		"replayed signature":   {payloadOf(good), func(context.Context, []byte) ([]byte, error) { return replayed, nil }, attest.ErrRefused, "not signed by the key"},
		"wrong key":            {payloadOf(good), thiefClient.Answer, attest.ErrRefused, "not signed by the key"},
		"garbage answer":       {payloadOf(good), func(context.Context, []byte) ([]byte, error) { return []byte("{"), nil }, attest.ErrMalformed, "challenge response"},
		"empty chain":          {[]byte(`{"cert_chain":[]}`), nil, attest.ErrMalformed, "empty"},
		"not a certificate":    {[]byte(`{"cert_chain":["AAAA"]}`), nil, attest.ErrMalformed, "cert_chain[0]"},
		"too long":             {[]byte(`{"cert_chain":["` + strings.Repeat("A", MaxPayload) + `"]}`), nil, attest.ErrMalformed, "more than"},
	} {
		t.Run(name, func(t *testing.T) {
			answer := tc.answer
			if answer == nil {
				answer = func(context.Context, []byte) ([]byte, error) {
					t.Fatal("challenged a node that should have been refused first")
					return nil, nil
				}
			}
			_, err := exchange(t, s, tc.payload, answer)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got %v, want %v naming %q", err, tc.want, tc.msg)
			}
		})
	}
}

func TestClientRefusesAKeyThatIsNotTheCertificates(t *testing.T) {
	ca := x509poptest.New(t, "corp")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := NewClient(ca.Issue(t, "n", key.Public(), nil), other); err == nil {
		t.Fatal("accepted a key that is not the certificate's")
	}
}

// FuzzParsePayload: no payload panics the parser, and what it accepts is
// within the limits.
func FuzzParsePayload(f *testing.F) {
	f.Add([]byte(`{"cert_chain":["MIIB"]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		chain, err := ParsePayload(raw)
		if err != nil {
			if !errors.Is(err, attest.ErrMalformed) {
				t.Fatalf("refusal is not ErrMalformed: %v", err)
			}
			return
		}
		if len(chain) == 0 || len(chain) > MaxChain || len(raw) > MaxPayload {
			t.Fatalf("accepted %d certificates from %d bytes", len(chain), len(raw))
		}
	})
}
