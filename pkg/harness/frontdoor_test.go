package harness_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/shortleaf/shortleaf/ca/catest"
	"github.com/shortleaf/shortleaf/pkg/agent"
	"github.com/shortleaf/shortleaf/pkg/harness"
	"github.com/shortleaf/shortleaf/pkg/server"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
	agentv1 "github.com/shortleaf/shortleaf/proto/agent/v1"
)

const refusedMetric = "shortleaf_server_requests_refused_total"

// attackerClient connects to the agent API as an attacker would: no client
// certificate, no interest in who the server is.
func attackerClient(t *testing.T, addr string) agentv1.AgentAPIClient {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, //nolint:gosec // the attacker does not care
	})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return agentv1.NewAgentAPIClient(conn)
}

func attestWith(c agentv1.AgentAPIClient, token string, csr []byte) error {
	_, err := agent.AttestCall(context.Background(), c, &agentv1.AttestAgentRequest{
		Attestation: &agentv1.AttestAgentRequest_JoinToken{JoinToken: &agentv1.JoinTokenAttestation{Token: token}},
		Csr:         csr,
	}, nil)
	return err
}

// An unauthenticated caller costs the server less than 1 ms of CPU per
// request whatever it sends: unknown tokens, a known token ID with a wrong
// secret, malformed tokens, each with the most expensive CSR it could send
// (an RSA-8192 key with a signature that would have to be checked). Measured
// on the server process's own CPU time, with the rate limit off so that
// every request reaches the attestation path.
func TestUnauthenticatedRequestsAreCheap(t *testing.T) {
	p := harness.StartServerProcess(t, harness.ProcessConfig{Extra: "limits:\n  attestations_per_second: -1\n"})
	admin := p.Admin(t)
	tok, err := admin.CreateJoinToken(context.Background(), &adminv1.CreateJoinTokenRequest{})
	if err != nil {
		t.Fatal(err)
	}
	knownID, _, _ := strings.Cut(tok.GetToken(), ".")
	heavy := catest.ForgedRSACSR(t, 30000, 65537) // near the CSR size limit
	tokens := []string{
		"0123456789abcdef." + strings.Repeat("A", 43), // unknown ID
		knownID + "." + strings.Repeat("B", 43),       // known ID, wrong secret
		"not-a-token",                                 // malformed
	}
	const workers, perWorker = 4, 300
	clients := make([]agentv1.AgentAPIClient, workers)
	for i := range clients {
		clients[i] = attackerClient(t, p.AgentAddr)
		_ = attestWith(clients[i], tokens[0], heavy) // connect outside the measurement
	}
	before := p.CPUTime(t)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				err := attestWith(clients[w], tokens[i%len(tokens)], heavy)
				if c := status.Code(err); c != codes.PermissionDenied && c != codes.InvalidArgument {
					errs <- fmt.Errorf("request %d: %w, want PermissionDenied or InvalidArgument", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	used := p.CPUTime(t) - before
	perRequest := used / (workers * perWorker)
	t.Logf("server CPU: %v for %d unauthenticated requests, %v per request", used, workers*perWorker, perRequest)
	if perRequest >= time.Millisecond {
		t.Fatalf("an unauthenticated request cost the server %v of CPU, want < 1ms", perRequest)
	}
	// The real token still works: nothing the flood did consumed it.
	if _, err := admin.ListAgents(context.Background(), &adminv1.ListAgentsRequest{}); err != nil {
		t.Fatal(err)
	}
}

// A flood of bad join tokens from one address is cut off by the attestation
// rate limit with RESOURCE_EXHAUSTED naming the limit, counted by reason,
// and leaves one log line per kind per minute, not one per request.
func TestAttestationFloodIsRateLimitedAndLogsSampled(t *testing.T) {
	logs := &harness.LogBuffer{}
	srv := harness.StartServer(t, func(c *server.Config) {
		c.Limits = server.Limits{AttestationsPerSecond: 0.001, AttestationBurst: 3}
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})
	_, csr := harness.NewCSR(t, spiffeid.ID{})
	client := harness.UnauthenticatedClient(t, srv)
	denied, limited := 0, 0
	for range 50 {
		err := attestWith(client, "0123456789abcdef."+strings.Repeat("A", 43), csr)
		switch status.Code(err) {
		case codes.PermissionDenied:
			denied++
		case codes.ResourceExhausted:
			limited++
			if !strings.Contains(err.Error(), "attestation rate limit") || !strings.Contains(err.Error(), "per source address") {
				t.Fatalf("refusal does not name the limit: %v", err)
			}
		default:
			t.Fatalf("unexpected answer: %v", err)
		}
	}
	if denied != 3 || limited != 47 {
		t.Fatalf("denied %d, rate-limited %d; want 3 and 47", denied, limited)
	}
	if got := srv.CounterValue(t, refusedMetric, map[string]string{"reason": "attestation_rate"}); got != 47 {
		t.Fatalf("%s{reason=attestation_rate} = %v, want 47", refusedMetric, got)
	}
	out := logs.String()
	if n := strings.Count(out, "agent attestation refused"); n != 1 {
		t.Fatalf("%d lines for 3 refused attestations, want 1 (sampled):\n%s", n, out)
	}
	if n := strings.Count(out, "request refused"); n != 1 {
		t.Fatalf("%d lines for 47 rate-limited requests, want 1 (sampled):\n%s", n, out)
	}
	// Another source is not affected: a real agent attests from a fresh
	// limiter key (the limit is per source address; here, a new server
	// shows the limit is not global state).
	other := harness.StartServer(t)
	harness.StartAgent(t, other)
}

// An authenticated agent is bounded too: SVIDs per agent per second, signer
// key IDs per sync, and message sizes per method.
func TestAgentLimits(t *testing.T) {
	srv := harness.StartServer(t, func(c *server.Config) {
		c.Limits = server.Limits{SigningPerSecond: 0.001, SigningBurst: 500}
	})
	a := harness.AttestRaw(t, srv)
	ctx := context.Background()
	batch := func(n int) *agentv1.BatchNewX509SVIDRequest {
		req := &agentv1.BatchNewX509SVIDRequest{}
		for i := range n {
			req.Params = append(req.Params, &agentv1.NewX509SVIDParams{EntryId: fmt.Sprintf("e%d", i)})
		}
		return req
	}
	if _, err := a.Client.BatchNewX509SVID(ctx, batch(400)); err != nil {
		t.Fatalf("first batch: %v", err)
	}
	_, err := a.Client.BatchNewX509SVID(ctx, batch(200))
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "signing rate limit") {
		t.Fatalf("batch past the agent's signing budget: %v, want ResourceExhausted naming the limit", err)
	}
	if got := srv.CounterValue(t, refusedMetric, map[string]string{"reason": "signing_rate"}); got != 1 {
		t.Fatalf("signing_rate refusals = %v, want 1", got)
	}

	ids := make([][]byte, 65)
	for i := range ids {
		ids[i] = []byte{byte(i)}
	}
	stream, err := a.Client.SyncEntries(ctx, &agentv1.SyncEntriesRequest{SignerKeyIds: ids})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "signer_key_ids") {
		t.Fatalf("sync with 65 signer key IDs: %v, want InvalidArgument naming signer_key_ids", err)
	}

	_, err = a.Client.RenewAgent(ctx, &agentv1.RenewAgentRequest{Csr: make([]byte, 20<<10)})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "RenewAgent") || !strings.Contains(err.Error(), "limit of 16384") {
		t.Fatalf("20 KiB RenewAgent: %v, want ResourceExhausted naming the method and its limit", err)
	}
	_, err = a.Client.BatchNewX509SVID(ctx, &agentv1.BatchNewX509SVIDRequest{Params: []*agentv1.NewX509SVIDParams{{Csr: make([]byte, 4<<20)}}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("4 MiB batch: %v, want ResourceExhausted", err)
	}
	if got := srv.CounterValue(t, refusedMetric, map[string]string{"reason": "message_size"}); got != 1 {
		t.Fatalf("message_size refusals = %v, want 1 (the transport refuses the 4 MiB one before any handler)", got)
	}
}

// Connections over the cap are closed at once, counted, and the slot comes
// back when a connection closes.
func TestAgentAPIConnectionCap(t *testing.T) {
	srv := harness.StartServer(t, func(c *server.Config) { c.Limits = server.Limits{MaxConnections: 5} })
	var open []net.Conn
	for range 5 {
		c, err := net.Dial("tcp", srv.AgentAddr())
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
	}
	extra, err := net.Dial("tcp", srv.AgentAddr())
	if err != nil {
		t.Fatal(err)
	}
	_ = extra.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := extra.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("the sixth connection was not closed: %v", err)
	}
	if got := srv.CounterValue(t, refusedMetric, map[string]string{"reason": "connection_limit"}); got != 1 {
		t.Fatalf("connection_limit refusals = %v, want 1", got)
	}
	for _, c := range open {
		_ = c.Close()
	}
	// The slots free as the server notices the closes; a real agent then
	// attests and syncs.
	harness.Eventually(t, 10*time.Second, func() bool {
		c := harness.UnauthenticatedClient(t, srv)
		err := attestWith(c, "bad", nil)
		return status.Code(err) == codes.InvalidArgument
	})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
