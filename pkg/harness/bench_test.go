package harness_test

import (
	"context"
	"log/slog"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/shortleaf/shortleaf/pkg/harness"
	"github.com/shortleaf/shortleaf/pkg/server"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
	agentv1 "github.com/shortleaf/shortleaf/proto/agent/v1"
)

// BenchmarkBatchNewX509SVID is the whole server path an agent pays for:
// batches of 100 CSRs over mTLS gRPC, authorization against the bbolt
// datastore, CSR checks and signing. It reports ns per SVID.
func BenchmarkBatchNewX509SVID(b *testing.B) {
	srv := harness.StartServer(b, func(c *server.Config) { c.Logger = slog.New(slog.DiscardHandler) })
	a := harness.AttestRaw(b, srv)
	const batch = 100
	req := &agentv1.BatchNewX509SVIDRequest{}
	for i := range batch {
		id := spiffeid.RequireFromString("spiffe://example.org/bench/" + string(rune('a'+i%26)) + string(rune('a'+i/26)))
		e := srv.CreateEntry(b, &adminv1.Entry{SpiffeId: id.String(), ParentId: a.ID.String(), Selectors: []string{"unix:uid:1"}})
		_, csr := harness.NewCSR(b, id)
		req.Params = append(req.Params, &agentv1.NewX509SVIDParams{EntryId: e.GetId(), Csr: csr})
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		resp, err := a.Client.BatchNewX509SVID(ctx, req)
		if err != nil {
			b.Fatal(err)
		}
		if r := resp.GetResults()[batch-1]; r.GetSvid() == nil {
			b.Fatalf("not signed: %s", r.GetStatusMessage())
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/svid")
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "svids/s")
}
