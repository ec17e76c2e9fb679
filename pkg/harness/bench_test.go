package harness_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync/atomic"
	"time"

	workload "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/shortleaf/shortleaf/pkg/agent"
	"github.com/shortleaf/shortleaf/pkg/harness"
	"github.com/shortleaf/shortleaf/pkg/server"
	"github.com/shortleaf/shortleaf/pkg/uds"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
	agentv1 "github.com/shortleaf/shortleaf/proto/agent/v1"
)

// BenchmarkBatchNewX509SVID is the whole server path agents pay for:
// batches of 100 CSRs over mTLS gRPC from four agents at once,
// authorization against the bbolt datastore, CSR checks, signing, and the
// audit record of each SVID (each response waits until its records are
// durable). It reports ns per SVID of wall time, with the audit log on (the
// default) and off: their ratio is what the log costs in throughput.
func BenchmarkBatchNewX509SVID(b *testing.B) {
	for _, auditOn := range []bool{true, false} {
		b.Run(fmt.Sprintf("audit=%t", auditOn), func(b *testing.B) { benchmarkBatch(b, auditOn) })
	}
}

func benchmarkBatch(b *testing.B, auditOn bool) {
	// The per-agent rate limit (500/s by default) is off: this is the
	// server's capacity, not one agent's allowance.
	srv := harness.StartServer(b, func(c *server.Config) {
		c.Logger = slog.New(slog.DiscardHandler)
		c.Limits.SigningPerSecond = -1
		c.Audit.Disabled = !auditOn
	})
	const agents, batch = 4, 100
	type caller struct {
		a   *harness.RawAgent
		req *agentv1.BatchNewX509SVIDRequest
	}
	callers := make([]caller, agents)
	for n := range callers {
		a := harness.AttestRaw(b, srv)
		req := &agentv1.BatchNewX509SVIDRequest{}
		for i := range batch {
			id := spiffeid.RequireFromString(fmt.Sprintf("spiffe://example.org/bench/%d/%d", n, i))
			e := srv.CreateEntry(b, &adminv1.Entry{SpiffeId: id.String(), ParentId: a.ID.String(), Selectors: []string{"unix:uid:1"}})
			_, csr := harness.NewCSR(b, id)
			req.Params = append(req.Params, &agentv1.NewX509SVIDParams{EntryId: e.GetId(), Csr: csr})
		}
		callers[n] = caller{a: a, req: req}
	}
	ctx := context.Background()
	var next atomic.Int32
	b.ReportAllocs()
	b.SetParallelism(agents / runtime.GOMAXPROCS(0))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c := callers[int(next.Add(1)-1)%agents]
		for pb.Next() {
			resp, err := c.a.Client.BatchNewX509SVID(ctx, c.req)
			if err != nil {
				b.Error(err)
				return
			}
			if r := resp.GetResults()[batch-1]; r.GetSvid() == nil {
				b.Errorf("not signed: %s", r.GetStatusMessage())
				return
			}
		}
	})
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/svid")
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "svids/s")
}

// BenchmarkWorkloadAPIFetch is one FetchX509SVID as a workload pays for it:
// a new stream on the agent's socket, peer-credential attestation (uid, gid,
// names, executable path and hash), selector matching and the response.
func BenchmarkWorkloadAPIFetch(b *testing.B) {
	benchmarkFetch(b, "unix:uid:"+strconv.Itoa(os.Getuid()))
}

// BenchmarkWorkloadAPIFetchExecutableSelectors is the same fetch when an
// entry uses unix:path and unix:sha256: the agent then reads /proc/<pid>/exe
// and checks the caller is still the process that connected (the hash
// itself comes from the cache after the first fetch).
func BenchmarkWorkloadAPIFetchExecutableSelectors(b *testing.B) {
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	raw, err := os.ReadFile(exe) //nolint:gosec // this benchmark's own binary
	if err != nil {
		b.Fatal(err)
	}
	sum := sha256.Sum256(raw)
	benchmarkFetch(b, "unix:uid:"+strconv.Itoa(os.Getuid()), "unix:path:"+exe, "unix:sha256:"+hex.EncodeToString(sum[:]))
}

func benchmarkFetch(b *testing.B, selectors ...string) {
	srv := harness.StartServer(b, func(c *server.Config) { c.Logger = slog.New(slog.DiscardHandler) })
	ag := harness.StartAgent(b, srv, func(c *agent.Config) { c.Logger = slog.New(slog.DiscardHandler) })
	srv.CreateEntry(b, &adminv1.Entry{SpiffeId: "spiffe://example.org/bench", ParentId: ag.ID(), Selectors: selectors})
	conn, err := grpc.NewClient(ag.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	client := workload.NewSpiffeWorkloadAPIClient(conn)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "workload.spiffe.io", "true")
	fetch := func() error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stream, err := client.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
		if err != nil {
			return err
		}
		_, err = stream.Recv()
		return err
	}
	for deadline := time.Now().Add(10 * time.Second); fetch() != nil; {
		if time.Now().After(deadline) {
			b.Fatal("no SVID")
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := fetch(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBareUDSStream is the floor for the same round trip: a gRPC stream
// on a Unix socket to a server that answers at once, with no attestation.
func BenchmarkBareUDSStream(b *testing.B) {
	sock := filepath.Join(harness.ShortDir(b), "bare.sock")
	lis, err := uds.Listen(sock, 0o700)
	if err != nil {
		b.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(uds.NewCredentials()))
	workload.RegisterSpiffeWorkloadAPIServer(g, bareWorkloadAPI{})
	go func() { _ = g.Serve(lis) }()
	defer g.Stop()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	client := workload.NewSpiffeWorkloadAPIClient(conn)
	b.ReportAllocs()
	for b.Loop() {
		ctx, cancel := context.WithCancel(context.Background())
		stream, err := client.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
		if err == nil {
			_, err = stream.Recv()
		}
		cancel()
		if err != nil {
			b.Fatal(err)
		}
	}
}

type bareWorkloadAPI struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
}

func (bareWorkloadAPI) FetchX509SVID(_ *workload.X509SVIDRequest, s workload.SpiffeWorkloadAPI_FetchX509SVIDServer) error {
	return s.Send(&workload.X509SVIDResponse{Svids: []*workload.X509SVID{{SpiffeId: "spiffe://example.org/bench"}}})
}

// BenchmarkEntryRegistration registers entries through the admin API of a
// real server on bbolt: one CreateEntry per entry (one commit each), and
// BatchCreateEntry with 1000 per call (one commit per call). It reports
// entries per second; scripts/bench.sh prints the ratio of the two.
func BenchmarkEntryRegistration(b *testing.B) {
	srv := harness.StartServer(b, func(c *server.Config) { c.Logger = slog.New(slog.DiscardHandler) })
	ctx := context.Background()
	parent := "spiffe://example.org/agent/join_token/0123456789abcdef"
	next := 0
	newEntry := func() *adminv1.Entry {
		next++
		return &adminv1.Entry{SpiffeId: "spiffe://example.org/reg/" + strconv.Itoa(next), ParentId: parent,
			Selectors: []string{"unix:uid:" + strconv.Itoa(next)}}
	}
	b.Run("single", func(b *testing.B) {
		for b.Loop() {
			if _, err := srv.Admin.CreateEntry(ctx, &adminv1.CreateEntryRequest{Entry: newEntry()}); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "entries/s")
	})
	b.Run("batch", func(b *testing.B) {
		const per = 1000
		for b.Loop() {
			req := &adminv1.BatchCreateEntryRequest{}
			for range per {
				req.Entries = append(req.Entries, newEntry())
			}
			resp, err := srv.Admin.BatchCreateEntry(ctx, req)
			if err != nil {
				b.Fatal(err)
			}
			if r := resp.GetResults()[per-1]; r.GetStatusCode() != 0 {
				b.Fatal(r.GetStatusMessage())
			}
		}
		b.ReportMetric(float64(b.N*per)/b.Elapsed().Seconds(), "entries/s")
	})
}
