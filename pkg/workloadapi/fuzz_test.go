package workloadapi_test

import (
	"context"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/ca/catest"
	wl "github.com/shortleaf/shortleaf/pkg/workloadapi"
)

// FuzzValidateJWTSVID: no token or audience panics ValidateJWTSVID, a
// refusal is InvalidArgument, and an accepted token names the audience it
// was checked against and a SPIFFE ID of the trust domain.
func FuzzValidateJWTSVID(f *testing.F) {
	c := catest.New(f)
	st := state(c)
	st.JWTBundle = c.JWTBundle()
	srv := wl.New(wl.Config{Source: &source{state: st, changed: make(chan struct{})}})
	good, _, err := c.SignJWTSVID(ca.JWTSVIDParams{SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/a"), Audience: []string{"db"}, TTL: time.Minute})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good, "db")
	f.Add(good, "other")
	f.Add("eyJhbGciOiJub25lIn0.e30.", "db")
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("workload.spiffe.io", "true"))
	f.Fuzz(func(t *testing.T, token, audience string) {
		resp, err := srv.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Svid: token, Audience: audience})
		if err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("refusal is not InvalidArgument: %v", err)
			}
			return
		}
		id, err := spiffeid.FromString(resp.GetSpiffeId())
		if err != nil || id.TrustDomain() != catest.TrustDomain {
			t.Fatalf("accepted a token for %q", resp.GetSpiffeId())
		}
		if token != good || audience != "db" {
			t.Fatalf("accepted a token the CA did not sign for this audience: %q %q", token, audience)
		}
	})
}
