package harness_test

import (
	"context"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/shortleaf/shortleaf/pkg/harness"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// JWT-SVIDs end to end: the go-spiffe client fetches them from the agent,
// validates them against the JWT bundle it fetched, and the agent's
// ValidateJWTSVID agrees; a wrong audience fails everywhere.
func TestJWTSVIDsThroughTheWorkloadAPI(t *testing.T) {
	srv := harness.StartServer(t)
	ag := harness.StartAgent(t, srv)
	for _, id := range []string{"spiffe://example.org/web", "spiffe://example.org/web-admin"} {
		srv.CreateEntry(t, &adminv1.Entry{SpiffeId: id, ParentId: ag.ID(), Selectors: []string{uidSelector()}, JwtSvidTtlSeconds: 120})
	}
	// Both entries synced and issued before the JWT calls.
	for deadline := time.Now().Add(10 * time.Second); ; {
		x, err := fetchX509(t, ag.Addr(), 5*time.Second)
		if err == nil && len(x.SVIDs) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent does not serve both identities: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(ag.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	web := spiffeid.RequireFromString("spiffe://example.org/web")
	svid, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db", ExtraAudiences: []string{"cache"}, Subject: web})
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != web || len(svid.Audience) != 2 {
		t.Fatalf("JWT-SVID for %s with audience %v", svid.ID, svid.Audience)
	}
	if ttl := time.Until(svid.Expiry); ttl < 110*time.Second || ttl > 121*time.Second {
		t.Errorf("JWT-SVID lives %s, want the entry's 2m", ttl)
	}
	bundles, err := client.FetchJWTBundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jwtsvid.ParseAndValidate(svid.Marshal(), bundles, []string{"db"}); err != nil {
		t.Fatalf("go-spiffe does not validate the token: %v", err)
	}
	if _, err := jwtsvid.ParseAndValidate(svid.Marshal(), bundles, []string{"mail"}); err == nil {
		t.Fatal("a wrong audience validated")
	}
	got, err := client.ValidateJWTSVID(ctx, svid.Marshal(), "db")
	if err != nil || got.ID != web {
		t.Fatalf("ValidateJWTSVID: %v %v", got, err)
	}
	if _, err := client.ValidateJWTSVID(ctx, svid.Marshal(), "mail"); err == nil {
		t.Fatal("ValidateJWTSVID accepted a wrong audience")
	}

	// Asked again, the agent serves the same token from its cache.
	again, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "cache", ExtraAudiences: []string{"db"}, Subject: web})
	if err != nil || again.Marshal() != svid.Marshal() {
		t.Errorf("second fetch for the same audience set got a new token (%v)", err)
	}
	// Without a subject: every identity of the caller.
	all, err := client.FetchJWTSVIDs(ctx, jwtsvid.Params{Audience: "db"})
	if err != nil || len(all) != 2 {
		t.Fatalf("FetchJWTSVIDs without subject: %d, %v", len(all), err)
	}
	// An identity the caller does not have.
	if _, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db", Subject: spiffeid.RequireFromString("spiffe://example.org/other")}); err == nil {
		t.Fatal("fetched a JWT-SVID for an identity the workload does not have")
	}
}

func TestMintJWTSVID(t *testing.T) {
	srv := harness.StartServer(t)
	resp, err := srv.Admin.MintJWTSVID(context.Background(), &adminv1.MintJWTSVIDRequest{SpiffeId: "spiffe://example.org/tool", Audience: []string{"x"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jwtsvid.ParseAndValidate(resp.GetToken(), srv.CA().JWTBundle(), []string{"x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Admin.MintJWTSVID(context.Background(), &adminv1.MintJWTSVIDRequest{SpiffeId: "spiffe://example.org/tool"}); err == nil {
		t.Fatal("minted without an audience")
	}
}
