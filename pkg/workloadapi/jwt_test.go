package workloadapi_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	workload "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/ca/catest"
	"github.com/shortleaf/shortleaf/pkg/clock"
)

func rawClient(t *testing.T, addr string) (workload.SpiffeWorkloadAPIClient, context.Context) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return workload.NewSpiffeWorkloadAPIClient(conn), metadata.AppendToOutgoingContext(context.Background(), "workload.spiffe.io", "true")
}

func signWith(t *testing.T, alg jose.SignatureAlgorithm, key any, kid string, claims jwt.Claims) string {
	t.Helper()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: jose.JSONWebKey{Key: key, KeyID: kid}}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	token, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return token
}

// ValidateJWTSVID accepts a good token and refuses a wrong or missing
// audience, an expired token, an unknown kid and an alg outside the list.
func TestValidateJWTSVID(t *testing.T) {
	// A CA whose clock runs an hour behind: its tokens are already expired.
	past := clock.NewFake(time.Now().Add(-time.Hour))
	cfg := catest.Config(t)
	cfg.Clock = past
	old := catest.NewFromConfig(t, cfg)
	c := catest.New(t)
	id := spiffeid.RequireFromString("spiffe://example.org/a")

	st := state(c, identity(t, c, id.String(), "", uid1))
	b := c.JWTBundle()
	for kid, pub := range old.JWTBundle().JWTAuthorities() {
		_ = b.AddJWTAuthority(kid, pub)
	}
	st.JWTBundle = b
	src := &source{state: st, changed: make(chan struct{})}
	client, ctx := rawClient(t, serve(t, src, uid1))

	good, _, err := c.SignJWTSVID(ca.JWTSVIDParams{SPIFFEID: id, Audience: []string{"db"}, TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	expired, _, _ := old.SignJWTSVID(ca.JWTSVIDParams{SPIFFEID: id, Audience: []string{"db"}, TTL: time.Minute})
	stranger, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	unknownKid := signWith(t, jose.ES256, stranger, "nope", jwt.Claims{Subject: id.String(), Audience: jwt.Audience{"db"}, Expiry: jwt.NewNumericDate(time.Now().Add(time.Minute))})
	hmac := signWith(t, jose.HS256, []byte("0123456789abcdef0123456789abcdef"), "x", jwt.Claims{Subject: id.String(), Audience: jwt.Audience{"db"}, Expiry: jwt.NewNumericDate(time.Now().Add(time.Minute))})

	resp, err := client.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "db", Svid: good})
	if err != nil || resp.GetSpiffeId() != id.String() || resp.GetClaims().GetFields()["sub"].GetStringValue() != id.String() {
		t.Fatalf("good token: %v %v", resp, err)
	}
	for name, req := range map[string]*workload.ValidateJWTSVIDRequest{
		"wrong audience":   {Audience: "web", Svid: good},
		"missing audience": {Svid: good},
		"missing token":    {Audience: "db"},
		"expired":          {Audience: "db", Svid: expired},
		"unknown kid":      {Audience: "db", Svid: unknownKid},
		"HS256":            {Audience: "db", Svid: hmac},
	} {
		if _, err := client.ValidateJWTSVID(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	// And the header is required here too.
	if _, err := client.ValidateJWTSVID(context.Background(), &workload.ValidateJWTSVIDRequest{Audience: "db", Svid: good}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("no header: %v", err)
	}
}

type fixedJWT struct{ token string }

func (f fixedJWT) FetchJWTSVID(context.Context, string, []string) (string, error) {
	return f.token, nil
}

func TestFetchJWTSVIDChecksAudience(t *testing.T) {
	c := catest.New(t)
	src := &source{state: state(c, identity(t, c, "spiffe://example.org/a", "", uid1)), changed: make(chan struct{})}
	client, ctx := rawClient(t, serve(t, src, uid1))
	many := make([]string, 17)
	for i := range many {
		many[i] = "a"
	}
	for name, aud := range map[string][]string{"no audience": nil, "empty audience": {""}, "17 audiences": many} {
		if _, err := client.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: aud}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	resp, err := client.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"db"}})
	if err != nil || len(resp.GetSvids()) != 1 || resp.GetSvids()[0].GetSvid() != "test-token" {
		t.Fatalf("a good request: %v %v", resp, err)
	}
}
