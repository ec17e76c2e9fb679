package ca_test

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"github.com/shortleaf/shortleaf/ca"
)

// go-spiffe's validator reads the wall clock, so these CAs start from it.

func TestJWTSVIDFollowsTheRules(t *testing.T) {
	c, clk, _ := lifecycleAt(t, time.Now())
	id := spiffeid.RequireFromString("spiffe://example.org/web")
	token, exp, err := c.SignJWTSVID(ca.JWTSVIDParams{SPIFFEID: id, Audience: []string{"db", "cache"}, TTL: 5 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if !exp.Equal(clk.Now().Add(5 * time.Minute).Truncate(time.Second)) {
		t.Errorf("exp = %s, want now + TTL", exp)
	}
	// Header: only alg, kid and typ.
	rawHeader, _ := base64.RawURLEncoding.DecodeString(strings.Split(token, ".")[0])
	var header map[string]any
	if err := json.Unmarshal(rawHeader, &header); err != nil {
		t.Fatal(err)
	}
	if len(header) != 3 || header["alg"] != "ES256" || header["typ"] != "JWT" || header["kid"] == "" {
		t.Fatalf("header = %v", header)
	}
	svid, err := jwtsvid.ParseAndValidate(token, c.JWTBundle(), []string{"db"})
	if err != nil || svid.ID != id || len(svid.Audience) != 2 {
		t.Fatalf("validate: %v %v", svid, err)
	}
	if _, err := jwtsvid.ParseAndValidate(token, c.JWTBundle(), []string{"other"}); err == nil {
		t.Error("a wrong audience validated")
	}
	for name, p := range map[string]ca.JWTSVIDParams{
		"no audience":        {SPIFFEID: id, TTL: time.Minute},
		"other trust domain": {SPIFFEID: spiffeid.RequireFromString("spiffe://other.org/x"), Audience: []string{"a"}, TTL: time.Minute},
		"empty audience":     {SPIFFEID: id, Audience: []string{""}, TTL: time.Minute},
	} {
		if _, _, err := c.SignJWTSVID(p); err == nil {
			t.Errorf("%s: signed", name)
		}
	}
}

func TestJWTKeyPublishedBeforeUseAndKeptUntilTokensExpire(t *testing.T) {
	// Start so that the final check falls on the wall clock's now.
	c, clk, _ := lifecycleAt(t, time.Now().Add(-(30*time.Minute + 24*time.Minute + 4*time.Minute + 30*time.Second)))
	id := spiffeid.RequireFromString("spiffe://example.org/web")
	clk.Add(30 * time.Minute) // successor prepared: in the JWKS, not signing
	if err := c.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(c.JWTBundle().JWTAuthorities()); n != 2 {
		t.Fatalf("JWKS holds %d keys after preparation, want 2", n)
	}
	clk.Add(24 * time.Minute) // 54m: the old key signs one last 5-minute token
	if err := c.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	token, _, err := c.SignJWTSVID(ca.JWTSVIDParams{SPIFFEID: id, Audience: []string{"a"}, TTL: 5 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	clk.Add(4*time.Minute + 30*time.Second) // after the rotation, before the token expires
	if err := c.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := jwtsvid.ParseAndValidate(token, c.JWTBundle(), []string{"a"}); err != nil {
		t.Fatalf("a token signed before rotation no longer validates while unexpired: %v", err)
	}
}
