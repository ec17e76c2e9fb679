package harness_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shortleaf/shortleaf/pkg/clock"
	"github.com/shortleaf/shortleaf/pkg/harness"
	"github.com/shortleaf/shortleaf/pkg/server"
	agentv1 "github.com/shortleaf/shortleaf/proto/agent/v1"
)

// renew renews the raw agent's SVID with a fresh key and returns the new one.
func renew(t *testing.T, c agentv1.AgentAPIClient, a *harness.RawAgent) *x509svid.SVID {
	t.Helper()
	key, csr := harness.NewCSR(t, a.ID)
	resp, err := c.RenewAgent(context.Background(), &agentv1.RenewAgentRequest{Csr: csr})
	if err != nil {
		t.Fatalf("renew: %v", err)
	}
	return harness.ParseSVID(t, key, resp.GetSvid())
}

// syncCall makes one SyncEntries call and returns its first error.
func syncCall(c agentv1.AgentAPIClient) error {
	stream, err := c.SyncEntries(context.Background(), &agentv1.SyncEntriesRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	return err
}

// A copied agent key cannot go on alongside the real agent: once the agent
// uses its renewed SVID, the old one is refused. Until then the old one
// still works, so an agent that crashed before saving its renewal recovers.
func TestOnlyTheLatestAgentSVIDIsAccepted(t *testing.T) {
	srv := harness.StartServer(t)
	a := harness.AttestRaw(t, srv)
	old := harness.ClientWithSVID(t, srv, a.SVID)

	renewed := renew(t, old, a)
	if err := syncCall(old); err != nil {
		t.Fatalf("the old SVID before the new one is used (crash recovery): %v", err)
	}
	fresh := harness.ClientWithSVID(t, srv, renewed)
	if err := syncCall(fresh); err != nil {
		t.Fatalf("the renewed SVID: %v", err)
	}
	for name, call := range map[string]func() error{
		"sync":  func() error { return syncCall(old) },
		"renew": func() error { _, err := old.RenewAgent(context.Background(), &agentv1.RenewAgentRequest{}); return err },
		"batch": func() error {
			_, err := old.BatchNewX509SVID(context.Background(), &agentv1.BatchNewX509SVIDRequest{})
			return err
		},
	} {
		if err := call(); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "not the latest") {
			t.Errorf("%s with the superseded SVID: %v, want PermissionDenied saying it is not the latest", name, err)
		}
	}
	// The real agent is unaffected.
	if err := syncCall(fresh); err != nil {
		t.Fatalf("the renewed SVID after the copy was refused: %v", err)
	}
}

// A connection outlives its certificate: every call checks the validity of
// the certificate the connection was made with, not only the handshake.
func TestExpiredAgentSVIDIsRefusedOnAnOpenConnection(t *testing.T) {
	clk := clock.NewFake(time.Now())
	srv := harness.StartServer(t, func(c *server.Config) { c.Clock = clk })
	a := harness.AttestRaw(t, srv)
	if err := syncCall(a.Client); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Until(a.SVID.Certificates[0].NotAfter) + time.Minute)
	err := syncCall(a.Client)
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "outside its validity") {
		t.Fatalf("call on an open connection after the SVID expired: %v, want Unauthenticated", err)
	}
}
