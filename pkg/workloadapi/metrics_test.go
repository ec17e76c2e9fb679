package workloadapi_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/shortleaf/shortleaf/ca/catest"
	"github.com/shortleaf/shortleaf/pkg/telemetry"
	wl "github.com/shortleaf/shortleaf/pkg/workloadapi"
)

func value(t *testing.T, c prometheus.Metric) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	if m.GetCounter() != nil {
		return m.GetCounter().GetValue()
	}
	return m.GetGauge().GetValue()
}

// A long-lived stream (an Envoy's or a go-spiffe watcher's) is counted when
// it starts serving, not hours later when it ends, and shows in the
// open-streams gauge while it lives.
func TestStreamCountedAtItsFirstResponse(t *testing.T) {
	c := catest.New(t)
	src := &source{state: state(c, identity(t, c, "spiffe://example.org/a", "", uid1)), changed: make(chan struct{})}
	metrics := telemetry.NewAgent(prometheus.NewRegistry(), nil)
	addr := serveWith(t, wl.Config{Source: src, JWT: fixedJWT{"t"}, Attestor: fixedAttestor{uid1}, Metrics: metrics})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	streamCtx, closeStream := context.WithCancel(metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true"))
	stream, err := workload.NewSpiffeWorkloadAPIClient(conn).FetchX509SVID(streamCtx, &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	ok := metrics.WorkloadRequests.WithLabelValues("FetchX509SVID", telemetry.ResultOK)
	open := metrics.OpenStreams.WithLabelValues("FetchX509SVID")
	// The server counts once its Send returns, which may be just after the
	// client has the response: wait for it, while the stream stays open.
	for value(t, ok) != 1 {
		if ctx.Err() != nil {
			t.Fatalf("requests_total{FetchX509SVID,ok} = %v while the stream serves, want 1", value(t, ok))
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := value(t, open); got != 1 {
		t.Fatalf("open streams = %v, want 1", got)
	}
	closeStream()
	for value(t, open) != 0 {
		if ctx.Err() != nil {
			t.Fatal("the stream's end never left the open-streams gauge")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := value(t, ok); got != 1 {
		t.Fatalf("requests_total{FetchX509SVID,ok} = %v after the end, want 1 (counted once)", got)
	}
}
