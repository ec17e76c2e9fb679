package harness_test

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shortleaf/shortleaf/pkg/agent"
	"github.com/shortleaf/shortleaf/pkg/clock"
	"github.com/shortleaf/shortleaf/pkg/harness"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// aheadClock is the real clock moved forward by a fixed offset, as a node
// whose clock runs ahead.
type aheadClock struct{ by time.Duration }

func (c aheadClock) Now() time.Time                         { return time.Now().Add(c.by) }
func (c aheadClock) After(d time.Duration) <-chan time.Time { return clock.Real.After(d) }

// The server measures each agent's clock from its sync requests: an agent
// 20s ahead shows in the largest-skew gauge and the skew histogram; the
// agent's own metrics give its issuance round trip, the codes answered and
// its last sync, and the server's its batch duration.
func TestServerMeasuresAgentClockSkewAndIssuanceMetrics(t *testing.T) {
	srv := harness.StartServer(t)
	agentReg := prometheus.NewRegistry()
	ag := harness.StartAgent(t, srv, func(c *agent.Config) {
		c.Clock, c.Registry, c.SyncInterval = aheadClock{by: 20 * time.Second}, agentReg, time.Second
	})
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/web", ParentId: ag.ID(), Selectors: []string{uidSelector()}})
	if _, err := fetchX509(t, ag.Addr(), 20*time.Second); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 10*time.Second, func() bool {
		skew := gaugeValue(t, srv.Registry, "shortleaf_server_agent_clock_skew_max_seconds")
		return skew > 19 && skew < 25
	})
	if n := histogramCount(t, srv.Registry, "shortleaf_server_agent_clock_skew_seconds"); n == 0 {
		t.Error("no skew observed in the histogram")
	}
	if n := histogramCount(t, srv.Registry, "shortleaf_server_x509_svid_batch_duration_seconds"); n == 0 {
		t.Error("no server batch duration observed")
	}
	if n := histogramCount(t, agentReg, "shortleaf_agent_x509_svid_issuance_duration_seconds"); n == 0 {
		t.Error("no agent issuance round trip observed")
	}
	if ok := harness.MetricValue(t, agentReg, "shortleaf_agent_x509_svid_issuance_results_total", map[string]string{"code": "OK"}); ok < 1 {
		t.Errorf("issuance results OK = %v", ok)
	}
	if next := gaugeValue(t, srv.Registry, "shortleaf_ca_next_transition_timestamp_seconds"); !time.Unix(int64(next), 0).After(time.Now()) {
		t.Errorf("next CA transition %v is not in the future", next)
	}
	if last := gaugeValue(t, agentReg, "shortleaf_agent_last_sync_timestamp_seconds"); time.Since(time.Unix(int64(last), 0)) > time.Minute+20*time.Second {
		t.Errorf("last sync gauge %v is not recent", last)
	}
}
