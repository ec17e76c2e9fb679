package jointoken_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/shortleaf/shortleaf/attest/jointoken"
)

func TestGenerateParseRoundTrip(t *testing.T) {
	tok, err := jointoken.Generate()
	if err != nil {
		t.Fatal(err)
	}
	id, hash, err := jointoken.Parse(tok.String())
	if err != nil || id != tok.ID || !bytes.Equal(hash, tok.SecretHash) {
		t.Fatalf("parse(%s) = %s, %x, %v", tok.ID, id, hash, err)
	}
	if bytes.Contains(tok.SecretHash, []byte(tok.Secret)) {
		t.Fatal("the stored hash contains the secret")
	}
	other, _ := jointoken.Generate()
	if other.ID == tok.ID || other.Secret == tok.Secret {
		t.Fatal("two tokens are equal")
	}
	agent, err := jointoken.AgentID(spiffeid.RequireTrustDomainFromString("example.org"), tok.ID)
	if err != nil || agent.String() != "spiffe://example.org/agent/join_token/"+tok.ID {
		t.Fatalf("agent ID %s, %v", agent, err)
	}
}

func TestParseRejectsMalformed(t *testing.T) {
	for _, s := range []string{"", ".", "abc.def", "0123456789abcdef", "0123456789abcdef." + strings.Repeat("A", 42), "0123456789ABCDEF." + strings.Repeat("A", 43)} {
		if _, _, err := jointoken.Parse(s); err == nil {
			t.Errorf("accepted %q", s)
		}
	}
}

func FuzzParse(f *testing.F) {
	tok, _ := jointoken.Generate()
	f.Add(tok.String())
	f.Add("0123456789abcdef.")
	f.Fuzz(func(t *testing.T, s string) {
		id, hash, err := jointoken.Parse(s)
		if err != nil {
			return
		}
		if len(hash) != 32 || len(id) != 16 {
			t.Fatalf("accepted %q with id %q and a %d-byte hash", s, id, len(hash))
		}
		if _, err := jointoken.AgentID(spiffeid.RequireTrustDomainFromString("example.org"), id); err != nil {
			t.Fatalf("accepted token ID %q makes no agent ID: %v", id, err)
		}
	})
}
