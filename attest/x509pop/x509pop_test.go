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
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/shortleaf/shortleaf/attest"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// testCA is a machine CA: a root and an intermediate that signs node
// certificates.
type testCA struct {
	root, inter       *x509.Certificate
	rootKey, interKey crypto.Signer
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	root := issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: name + " root"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}, rootKey.Public(), nil, rootKey)
	interKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	inter := issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: name + " machines"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}, interKey.Public(), root, rootKey)
	return &testCA{root: root, inter: inter, rootKey: rootKey, interKey: interKey}
}

var serial int64

func issue(t *testing.T, tpl *x509.Certificate, pub any, parent *x509.Certificate, key crypto.Signer) *x509.Certificate {
	t.Helper()
	serial++
	tpl.SerialNumber = big.NewInt(serial)
	if tpl.NotBefore.IsZero() {
		tpl.NotBefore, tpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
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

// node issues a node certificate for key.
func (ca *testCA) node(t *testing.T, cn string, key crypto.Signer, mutate func(*x509.Certificate)) []*x509.Certificate {
	tpl := &x509.Certificate{Subject: pkix.Name{CommonName: cn}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if mutate != nil {
		mutate(tpl)
	}
	return []*x509.Certificate{issue(t, tpl, key.Public(), ca.inter, ca.interKey), ca.inter}
}

// exchange runs an attestation of client against server, the challenge
// answered by answer (the client's own when nil).
func exchange(t *testing.T, s *Server, payload []byte, answer attest.Challenger) (*attest.NodeResult, error) {
	t.Helper()
	return s.Attest(context.Background(), td, payload, answer)
}

func TestAttestsNodesWithEachKeyType(t *testing.T) {
	ca := newTestCA(t, "corp")
	s, err := NewServer([]*x509.Certificate{ca.root}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	for name, key := range map[string]crypto.Signer{"ecdsa": ecKey, "rsa": rsaKey, "ed25519": edKey} {
		t.Run(name, func(t *testing.T) {
			chain := ca.node(t, "node-"+name+".corp", key, nil)
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
			for _, sel := range []string{"x509pop:subject:cn:node-" + name + ".corp", "x509pop:ca:fingerprint:" + Fingerprint(ca.inter),
				"x509pop:ca:fingerprint:" + Fingerprint(ca.root), "x509pop:serialnumber:" + chain[0].SerialNumber.Text(16)} {
				if !got[sel] {
					t.Errorf("selector %s missing from %v", sel, res.Selectors)
				}
			}
		})
	}
}

func TestRefusesWhatDoesNotProveTheNode(t *testing.T) {
	ca, other := newTestCA(t, "corp"), newTestCA(t, "other")
	s, _ := NewServer([]*x509.Certificate{ca.root}, nil)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	thief, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good := ca.node(t, "node.corp", key, nil)
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
		"expired": {payloadOf(ca.node(t, "old.corp", key, func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)
		})), nil, attest.ErrRefused, "expired"},
		"another CA":           {payloadOf(other.node(t, "node.other", key, nil)), nil, attest.ErrRefused, "does not verify"},
		"not for clients":      {payloadOf(ca.node(t, "web.corp", key, func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} })), nil, attest.ErrRefused, "does not verify"},
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
	ca := newTestCA(t, "corp")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := NewClient(ca.node(t, "n", key, nil), other); err == nil {
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
