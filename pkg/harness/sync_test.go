package harness_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/shortleaf/shortleaf/pkg/agent"
	"github.com/shortleaf/shortleaf/pkg/api"
	"github.com/shortleaf/shortleaf/pkg/datastore"
	"github.com/shortleaf/shortleaf/pkg/etcdtest"
	"github.com/shortleaf/shortleaf/pkg/harness"
	"github.com/shortleaf/shortleaf/pkg/server"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
	agentv1 "github.com/shortleaf/shortleaf/proto/agent/v1"
)

// neverPoll is a sync interval no test outlasts: whatever reaches such an
// agent after its first sync was pushed to it.
func neverPoll(c *agent.Config) { c.SyncInterval = time.Hour }

// servedIDs lists the SPIFFE IDs the agent serves now, each verified
// against the bundle it serves with them.
func servedIDs(t *testing.T, ag *harness.Agent) map[string]bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out := map[string]bool{}
	x, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr(ag.Addr()))
	if err != nil {
		return out // no identity for this workload (yet, or any more)
	}
	for _, s := range x.SVIDs {
		if _, _, err := x509svid.Verify(s.Certificates, x.Bundles); err != nil {
			t.Fatalf("served SVID %s does not verify: %v", s.ID, err)
		}
		out[s.ID.String()] = true
	}
	return out
}

// waitSynced waits until the agent has synced once: its Workload API then
// answers PermissionDenied (no identity for this workload) rather than
// Unavailable (starting).
func waitSynced(t *testing.T, ag *harness.Agent) {
	t.Helper()
	harness.Eventually(t, 15*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr(ag.Addr()))
		return err == nil || status.Code(err) == codes.PermissionDenied
	})
}

func waitServed(t *testing.T, ag *harness.Agent, want map[string]bool) {
	t.Helper()
	harness.Eventually(t, 15*time.Second, func() bool {
		got := servedIDs(t, ag)
		if len(got) != len(want) {
			return false
		}
		for id := range want {
			if !got[id] {
				return false
			}
		}
		return true
	})
}

// Entry creations, updates, moves and deletions reach an agent that never
// polls; a server restart costs the agent no full read of its entries.
func TestEntryChangesArePushedToAgents(t *testing.T) {
	srv := harness.StartServer(t)
	ag := harness.StartAgent(t, srv, neverPoll)
	other := harness.StartAgent(t, srv, neverPoll)
	waitSynced(t, ag)
	waitSynced(t, other)
	ctx := context.Background()

	web := srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/web", ParentId: ag.ID(), Selectors: []string{uidSelector()}})
	waitServed(t, ag, map[string]bool{"spiffe://example.org/web": true})

	renamed := proto.Clone(web).(*adminv1.Entry)
	renamed.SpiffeId = "spiffe://example.org/web2"
	if _, err := srv.Admin.UpdateEntry(ctx, &adminv1.UpdateEntryRequest{Entry: renamed}); err != nil {
		t.Fatal(err)
	}
	waitServed(t, ag, map[string]bool{"spiffe://example.org/web2": true})

	moved := proto.Clone(renamed).(*adminv1.Entry)
	moved.ParentId = other.ID()
	if _, err := srv.Admin.UpdateEntry(ctx, &adminv1.UpdateEntryRequest{Entry: moved}); err != nil {
		t.Fatal(err)
	}
	waitServed(t, ag, map[string]bool{})
	waitServed(t, other, map[string]bool{"spiffe://example.org/web2": true})

	if _, err := srv.Admin.DeleteEntry(ctx, &adminv1.DeleteEntryRequest{Id: web.GetId()}); err != nil {
		t.Fatal(err)
	}
	waitServed(t, other, map[string]bool{})
	// Each agent read its (then empty) entries once, when it connected;
	// everything since came as changes.
	if full := srv.CounterValue(t, "shortleaf_server_sync_starts_total", map[string]string{"kind": "full"}); full != 2 {
		t.Errorf("%v full reads, want 2 (one per agent, at its first sync)", full)
	}
	if n := srv.CounterValue(t, "shortleaf_server_sync_entry_changes_total", nil); n < 5 {
		t.Errorf("%v entry changes pushed, want at least 5", n)
	}

	// Restarted, the server resumes the agents where they were.
	srv.Config.AgentAPIAddr = srv.AgentAddr() // where the agents look for it
	srv = srv.Restart(t)
	harness.Eventually(t, 15*time.Second, func() bool {
		return srv.CounterValue(t, "shortleaf_server_sync_streams", nil) == 2
	})
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/after-restart", ParentId: ag.ID(), Selectors: []string{uidSelector()}})
	waitServed(t, ag, map[string]bool{"spiffe://example.org/after-restart": true})
	if full := srv.CounterValue(t, "shortleaf_server_sync_starts_total", map[string]string{"kind": "full"}); full != 0 {
		t.Errorf("after the restart %v agents read all their entries again, want 0", full)
	}
}

// An entry written through one replica reaches an agent connected to
// another, pushed by that replica's etcd watch.
func TestEntryWrittenThroughOneReplicaReachesAgentsOnAnother(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	etcd := &datastore.EtcdConfig{Endpoints: cluster.Endpoints(), Prefix: etcdPrefix(), LockTTL: 2 * time.Second, LockWait: time.Second}
	start := func(id string) *harness.Server {
		return harness.StartServer(t, harness.WithPassphrase, func(c *server.Config) { c.Etcd, c.ReplicaID = etcd, id })
	}
	a, b := start("a"), start("b")
	ag := harness.StartAgent(t, b, neverPoll) // knows b alone
	waitSynced(t, ag)

	written := time.Now()
	a.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/web", ParentId: ag.ID(), Selectors: []string{uidSelector()}})
	waitServed(t, ag, map[string]bool{"spiffe://example.org/web": true})
	t.Logf("an entry written through replica a was served by an agent on replica b %s later (SVID signed included)", time.Since(written).Round(time.Millisecond))
	if n := b.CounterValue(t, "shortleaf_server_sync_entry_changes_total", nil); n != 1 {
		t.Errorf("replica b pushed %v entry changes, want 1", n)
	}
}

// An agent evicted while its Sync stream is open is refused at its next
// request on that stream (each request authenticates the agent again):
// the stream ends with PermissionDenied, and so do its SVID requests.
func TestEvictionCutsOffAnOpenSyncStream(t *testing.T) {
	srv := harness.StartServer(t)
	a := harness.AttestRaw(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := a.Client.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	answered := func() error {
		for {
			msg, err := stream.Recv()
			if err != nil {
				return err
			}
			if msg.GetState() != nil {
				return nil
			}
		}
	}
	if err := stream.Send(&agentv1.SyncRequest{}); err != nil {
		t.Fatal(err)
	}
	if err := answered(); err != nil {
		t.Fatalf("first sync: %v", err)
	}
	if _, err := srv.Admin.EvictAgent(ctx, &adminv1.EvictAgentRequest{SpiffeId: a.ID.String()}); err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&agentv1.SyncRequest{}); err != nil {
		t.Fatal(err)
	}
	if err := answered(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a request on the open stream after eviction: %v, want PermissionDenied", err)
	}
	if _, err := a.Client.BatchNewX509SVID(ctx, &agentv1.BatchNewX509SVIDRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("SVIDs after eviction: %v, want PermissionDenied", err)
	}
}

// An agent holding 600 large but valid entries (9 KB each: 500 of them, a
// page by count, are over gRPC's 4 MB message limit) syncs them all,
// through Sync and through SyncEntries: pages are bounded by bytes as well
// as by count.
func TestLargeEntriesSyncInPagesBoundedByBytes(t *testing.T) {
	srv := harness.StartServer(t)
	a := harness.AttestRaw(t, srv)
	for i := range 600 {
		srv.CreateEntry(t, &adminv1.Entry{SpiffeId: fmt.Sprintf("spiffe://example.org/large/%d", i), ParentId: a.ID.String(), Selectors: []string{
			"unix:uid:1000", "unix:path:/a" + strings.Repeat("p", 3000), "unix:path:/b" + strings.Repeat("q", 3000), "unix:path:/c" + strings.Repeat("r", 3000),
		}})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	check := func(rpc string, entries, largest int) {
		t.Helper()
		if entries != 600 || largest > api.SyncPageBytes+64<<10 {
			t.Fatalf("%s brought %d entries (want 600), its largest message %d bytes (want at most about %d)", rpc, entries, largest, api.SyncPageBytes)
		}
	}

	stream, err := a.Client.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&agentv1.SyncRequest{}); err != nil {
		t.Fatal(err)
	}
	entries, largest := 0, 0
	for {
		msg, err := stream.Recv()
		if err != nil {
			t.Fatalf("Sync: %v", err)
		}
		entries += len(msg.GetEntries())
		largest = max(largest, proto.Size(msg))
		if msg.GetState() != nil {
			break
		}
	}
	check("Sync", entries, largest)

	poll, err := a.Client.SyncEntries(ctx, &agentv1.SyncEntriesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	entries, largest = 0, 0
	for {
		msg, err := poll.Recv()
		if err != nil {
			t.Fatalf("SyncEntries: %v", err)
		}
		entries += len(msg.GetEntries())
		largest = max(largest, proto.Size(msg))
		if !msg.GetMore() {
			break
		}
	}
	check("SyncEntries", entries, largest)
}
