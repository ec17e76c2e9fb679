package harness_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shortleaf/shortleaf/pkg/agent"
	"github.com/shortleaf/shortleaf/pkg/harness"
	"github.com/shortleaf/shortleaf/pkg/server"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// An agent with x509_svid_cache_max_size obtains no SVID ahead: the first
// fetch of a go-spiffe workload waits for its SVID, which the agent then
// keeps renewing; entries no workload asked for never cost a signature.
func TestOnDemandAgentSignsOnlyWhatWorkloadsAskFor(t *testing.T) {
	srv := harness.StartServer(t, func(c *server.Config) {
		c.DefaultSVIDTTL, c.AgentSVIDTTL, c.MaxSVIDTTL = 6*time.Second, time.Hour, time.Hour
		c.RotationInterval = 100 * time.Millisecond
	})
	reg := prometheus.NewRegistry()
	ag := harness.StartAgent(t, srv, func(c *agent.Config) { c.Registry = reg; c.X509SVIDCacheMaxSize = 10 })
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/asked", ParentId: ag.ID(), Selectors: []string{uidSelector()}})
	for i := range 20 {
		srv.CreateEntry(t, &adminv1.Entry{SpiffeId: fmt.Sprintf("spiffe://example.org/idle/%d", i), ParentId: ag.ID(),
			Selectors: []string{fmt.Sprintf("unix:uid:%d", 4000000000+i)}})
	}
	cached := func() float64 { return harness.MetricValue(t, reg, "shortleaf_agent_cached_x509_svids", nil) }
	time.Sleep(time.Second) // the entries are synced; nothing may be signed for them
	if n := cached(); n != 0 {
		t.Fatalf("%v SVIDs obtained before any workload asked", n)
	}
	signed := func() float64 {
		return srv.CounterValue(t, "shortleaf_server_x509_svids_issued_total", map[string]string{"result": "ok"})
	}
	before := signed()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src := x509Source(ctx, t, ag) // waits for the first SVID
	first, err := src.GetX509SVID()
	if err != nil || first.ID.String() != "spiffe://example.org/asked" {
		t.Fatalf("first fetch: %v %v", first, err)
	}
	// The workload's SVID is renewed while its stream is open.
	harness.Eventually(t, 15*time.Second, func() bool {
		s, err := src.GetX509SVID()
		return err == nil && s.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) != 0
	})
	if n := cached(); n != 1 {
		t.Fatalf("%v SVIDs held, want 1 (only the one asked for)", n)
	}
	if n := signed() - before; n < 2 || n > 4 {
		t.Fatalf("%v SVIDs signed, want the asked-for one and its renewals only", n)
	}
}
