package harness_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shortleaf/shortleaf/pkg/clock"
	"github.com/shortleaf/shortleaf/pkg/harness"
	"github.com/shortleaf/shortleaf/pkg/server"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
	agentv1 "github.com/shortleaf/shortleaf/proto/agent/v1"
)

const issuedMetric = "shortleaf_server_x509_svids_issued_total"

var signedOK = map[string]string{"result": "ok"}

func TestAgentCannotObtainAnotherAgentsEntry(t *testing.T) {
	srv := harness.StartServer(t)
	a := harness.AttestRaw(t, srv)
	b := harness.AttestRaw(t, srv)
	entryB := srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/b-only", ParentId: b.ID.String(), Selectors: []string{"unix:uid:1"}})
	id := spiffeid.RequireFromString(entryB.GetSpiffeId())
	_, csr := harness.NewCSR(t, id)

	before := srv.CounterValue(t, issuedMetric, signedOK)
	for name, entryID := range map[string]string{"other agent's entry": entryB.GetId(), "unknown entry": "does-not-exist"} {
		resp, err := a.Client.BatchNewX509SVID(context.Background(), &agentv1.BatchNewX509SVIDRequest{
			Params: []*agentv1.NewX509SVIDParams{{EntryId: entryID, Csr: csr}},
		})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		r := resp.GetResults()[0]
		if codes.Code(r.GetStatusCode()) != codes.PermissionDenied || r.GetSvid() != nil {
			t.Errorf("%s: got code %d svid %v, want PermissionDenied and nothing signed", name, r.GetStatusCode(), r.GetSvid())
		}
	}
	if after := srv.CounterValue(t, issuedMetric, signedOK); after != before {
		t.Errorf("signed %v SVIDs for an unauthorized agent", after-before)
	}

	// B itself gets it.
	resp, err := b.Client.BatchNewX509SVID(context.Background(), &agentv1.BatchNewX509SVIDRequest{
		Params: []*agentv1.NewX509SVIDParams{{EntryId: entryB.GetId(), Csr: csr}},
	})
	if err != nil || resp.GetResults()[0].GetSvid() == nil {
		t.Fatalf("owning agent was refused: %v %v", err, resp.GetResults())
	}
}

func TestJoinTokenIsSingleUse(t *testing.T) {
	srv := harness.StartServer(t)
	token, _ := srv.NewJoinToken(t)
	_, csr := harness.NewCSR(t, spiffeid.ID{})
	if _, err := harness.Attest(t, srv, token, csr); err != nil {
		t.Fatalf("first use: %v", err)
	}
	_, err := harness.Attest(t, srv, token, csr)
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("reuse: %v, want PermissionDenied", err)
	}
}

func TestExpiredJoinTokenFails(t *testing.T) {
	srv := harness.StartServer(t)
	resp, err := srv.Admin.CreateJoinToken(context.Background(), &adminv1.CreateJoinTokenRequest{TtlSeconds: 1})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	_, csr := harness.NewCSR(t, spiffeid.ID{})
	_, err = harness.Attest(t, srv, resp.GetToken(), csr)
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired token: %v, want PermissionDenied naming expiry", err)
	}
}

func TestWrongJoinTokenSecretFails(t *testing.T) {
	srv := harness.StartServer(t)
	token, _ := srv.NewJoinToken(t)
	id, _, _ := strings.Cut(token, ".")
	forged := id + "." + strings.Repeat("A", 43)
	_, csr := harness.NewCSR(t, spiffeid.ID{})
	if _, err := harness.Attest(t, srv, forged, csr); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("forged secret: %v, want PermissionDenied", err)
	}
	// The real token still works: a wrong guess does not burn it.
	if _, err := harness.Attest(t, srv, token, csr); err != nil {
		t.Fatalf("real token after a forged attempt: %v", err)
	}
}

func TestEvictedAgentIsRefused(t *testing.T) {
	srv := harness.StartServer(t)
	a := harness.AttestRaw(t, srv)
	ctx := context.Background()
	if _, err := srv.Admin.EvictAgent(ctx, &adminv1.EvictAgentRequest{SpiffeId: a.ID.String()}); err != nil {
		t.Fatal(err)
	}
	stream, err := a.Client.SyncEntries(ctx, &agentv1.SyncEntriesRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("sync after eviction: %v, want PermissionDenied", err)
	}
	_, csr := harness.NewCSR(t, a.ID)
	if _, err := a.Client.RenewAgent(ctx, &agentv1.RenewAgentRequest{Csr: csr}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("renew after eviction: %v, want PermissionDenied", err)
	}
	if _, err := a.Client.BatchNewX509SVID(ctx, &agentv1.BatchNewX509SVIDRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("batch after eviction: %v, want PermissionDenied", err)
	}
}

func TestAgentAPINeedsAgentSVID(t *testing.T) {
	srv := harness.StartServer(t)
	c := harness.UnauthenticatedClient(t, srv)
	stream, err := c.SyncEntries(context.Background(), &agentv1.SyncEntriesRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("sync without client certificate: %v, want Unauthenticated", err)
	}
}

func TestForeignCAClientCertificateFailsHandshake(t *testing.T) {
	srv := harness.StartServer(t)
	other := harness.StartServer(t)
	a := harness.AttestRaw(t, other) // an SVID from a different root
	// Point a client holding the foreign SVID at srv.
	c := harness.ClientWithSVID(t, srv, a.SVID)
	_, err := c.RenewAgent(context.Background(), &agentv1.RenewAgentRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("foreign client certificate: %v, want a failed handshake (Unavailable)", err)
	}
}

func TestSyncStreamsManyEntriesInPages(t *testing.T) {
	srv := harness.StartServer(t)
	a := harness.AttestRaw(t, srv)
	const n = 1203 // more than two pages
	for i := range n {
		srv.CreateEntry(t, &adminv1.Entry{
			SpiffeId: "spiffe://example.org/w/" + strconv.Itoa(i), ParentId: a.ID.String(), Selectors: []string{"unix:uid:1"},
		})
	}
	stream, err := a.Client.SyncEntries(context.Background(), &agentv1.SyncEntriesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	msgs := 0
	for {
		msg, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		msgs++
		for _, e := range msg.GetEntries() {
			if seen[e.GetId()] {
				t.Fatalf("entry %s sent twice", e.GetId())
			}
			seen[e.GetId()] = true
		}
		if !msg.GetMore() {
			if msg.GetBundle() == nil {
				t.Fatal("last message carries no bundle")
			}
			break
		}
	}
	if len(seen) != n || msgs < 3 {
		t.Fatalf("got %d entries in %d messages, want %d in at least 3", len(seen), msgs, n)
	}
}

// syncOnce runs one SyncEntries call and returns the entries and the last message.
func syncOnce(t *testing.T, a *harness.RawAgent, rev uint64) (int, *agentv1.SyncEntriesResponse) {
	t.Helper()
	stream, err := a.Client.SyncEntries(context.Background(), &agentv1.SyncEntriesRequest{EntriesRevision: rev})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		msg, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		n += len(msg.GetEntries())
		if !msg.GetMore() {
			return n, msg
		}
	}
}

// A sync sends the entries only when something authorized for the agent
// changed since the revision it holds.
func TestSyncSkipsUnchangedEntries(t *testing.T) {
	srv := harness.StartServer(t)
	a, b := harness.AttestRaw(t, srv), harness.AttestRaw(t, srv)
	e := srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/w1", ParentId: a.ID.String(), Selectors: []string{"unix:uid:1"}})

	n, last := syncOnce(t, a, 0)
	if n != 1 || last.GetUnchanged() || last.GetEntriesRevision() == 0 || last.GetBundle() == nil {
		t.Fatalf("first sync: %d entries, %v", n, last)
	}
	rev := last.GetEntriesRevision()
	if n, last = syncOnce(t, a, rev); n != 0 || !last.GetUnchanged() || last.GetBundle() == nil {
		t.Fatalf("unchanged sync: %d entries, unchanged=%v", n, last.GetUnchanged())
	}
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/w2", ParentId: b.ID.String(), Selectors: []string{"unix:uid:1"}})
	if n, last = syncOnce(t, a, rev); n != 0 || !last.GetUnchanged() {
		t.Fatalf("another agent's new entry made this agent resync: %d entries", n)
	}
	rev = last.GetEntriesRevision()
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/w3", ParentId: a.ID.String(), Selectors: []string{"unix:uid:1"}})
	if n, last = syncOnce(t, a, rev); n != 2 || last.GetUnchanged() {
		t.Fatalf("after a new own entry: %d entries, unchanged=%v", n, last.GetUnchanged())
	}
	rev = last.GetEntriesRevision()
	e.ParentId = b.ID.String()
	if _, err := srv.Admin.UpdateEntry(context.Background(), &adminv1.UpdateEntryRequest{Entry: e}); err != nil {
		t.Fatal(err)
	}
	if n, last = syncOnce(t, a, rev); n != 1 || last.GetUnchanged() {
		t.Fatalf("after an entry moved away: %d entries, unchanged=%v", n, last.GetUnchanged())
	}
	if n, last = syncOnce(t, a, last.GetEntriesRevision()+1000); n != 1 || last.GetUnchanged() {
		t.Fatalf("a revision from the future must force a full sync: %d, unchanged=%v", n, last.GetUnchanged())
	}
}

// A sync that changes nothing but the time writes nothing: the time is
// kept in memory and recorded in the next batch (every 5 s), and the last
// batch is written when the server stops.
func TestLastSeenIsRecordedInBatches(t *testing.T) {
	clk := clock.NewFake(time.Now())
	srv := harness.StartServer(t, func(c *server.Config) { c.Clock = clk })
	a := harness.AttestRaw(t, srv)
	// Times in whole seconds, as the admin API gives them.
	lastSeen := func(s *harness.Server) int64 {
		t.Helper()
		got, err := s.Admin.GetAgent(context.Background(), &adminv1.GetAgentRequest{SpiffeId: a.ID.String()})
		if err != nil {
			t.Fatal(err)
		}
		return got.GetLastSeen()
	}
	attested := lastSeen(srv)
	clk.Add(2 * time.Second)
	syncOnce(t, a, 0)
	if got := lastSeen(srv); got != attested {
		t.Fatalf("a sync wrote its time at once (%v, attested %v); it should wait for the batch", got, attested)
	}
	synced := clk.Now().Unix()
	clk.Add(5 * time.Second) // the flush interval
	harness.Eventually(t, 5*time.Second, func() bool { return lastSeen(srv) == synced })

	// The pending time of a sync made just before the server stops is
	// written as it stops.
	clk.Add(time.Second)
	syncOnce(t, a, 0)
	final := clk.Now().Unix()
	srv = srv.Restart(t)
	if got := lastSeen(srv); got != final {
		t.Fatalf("after a restart the last sync is %v, want %v (lost at shutdown)", got, final)
	}
}
