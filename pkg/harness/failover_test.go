package harness_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/shortleaf/shortleaf/pkg/agent"
	"github.com/shortleaf/shortleaf/pkg/harness"
	"github.com/shortleaf/shortleaf/pkg/server"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// An agent given several server addresses (one of them dead) attests and
// syncs through whichever answers; when the address it is connected to
// dies, it carries on through another within a sync or two, a workload's
// SVID keeps renewing and is never held past its expiry, and the server's
// maximum connection age keeps recycling its connection.
func TestAgentFailsOverBetweenServerAddresses(t *testing.T) {
	const ttl = 6 * time.Second
	srv := harness.StartServer(t, func(c *server.Config) {
		c.DefaultSVIDTTL = ttl
		c.Limits.MaxConnectionAge = 2 * time.Second
	})
	p1, p2 := harness.StartProxy(t, srv.AgentAddr()), harness.StartProxy(t, srv.AgentAddr())
	ag := harness.StartAgent(t, srv, func(c *agent.Config) {
		c.ServerAddrs = []string{"127.0.0.1:1", p1.Addr(), p2.Addr()} // nothing listens on port 1
	})
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/web", ParentId: ag.ID(), Selectors: []string{uidSelector()}})

	client, err := workloadapi.New(context.Background(), workloadapi.WithAddr(ag.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	var mu sync.Mutex
	var held *x509svid.SVID
	expiredSeen := false
	updates := make(chan struct{}, 64)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		_ = client.WatchX509Context(ctx, funcWatcher(func(x *workloadapi.X509Context) {
			mu.Lock()
			held = x.DefaultSVID()
			mu.Unlock()
			select {
			case updates <- struct{}{}:
			default:
			}
		}))
	}()
	// Every 100 ms, check the SVID the workload holds is within its life.
	go func() {
		for ctx.Err() == nil {
			mu.Lock()
			if held != nil && time.Now().After(held.Certificates[0].NotAfter) {
				expiredSeen = true
			}
			mu.Unlock()
			time.Sleep(100 * time.Millisecond)
		}
	}()
	select {
	case <-updates:
	case <-time.After(10 * time.Second):
		t.Fatal("no SVID through the proxies")
	}

	// Take down the address in use; the other one takes over.
	harness.Eventually(t, 5*time.Second, func() bool { return p1.Open()+p2.Open() > 0 })
	used, other := p1, p2
	if p2.Open() > 0 {
		used, other = p2, p1
	}
	used.Cut()
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/after-failover", ParentId: ag.ID(), Selectors: []string{uidSelector()}})
	harness.Eventually(t, 10*time.Second, func() bool {
		x, err := workloadapi.FetchX509Context(context.Background(), workloadapi.WithAddr(ag.Addr()))
		return err == nil && len(x.SVIDs) == 2
	})
	// Across two SVID lifetimes after the cut, renewals keep arriving.
	start := time.Now()
	renewals := 0
	for time.Since(start) < 2*ttl {
		select {
		case <-updates:
			renewals++
		case <-time.After(2 * ttl):
		}
	}
	if renewals < 2 {
		t.Fatalf("%d renewals in %s after the failover, want at least 2", renewals, 2*ttl)
	}
	mu.Lock()
	defer mu.Unlock()
	if expiredSeen {
		t.Fatal("the workload held an expired SVID during the failover")
	}
	// The maximum connection age recycled the connection through the
	// remaining address: several connections were accepted there.
	if n := other.Accepted(); n < 2 {
		t.Fatalf("the remaining address accepted %d connections in %s with a 2s maximum age", n, 2*ttl)
	}
}

// funcWatcher is a workloadapi.X509ContextWatcher calling one function.
type funcWatcher func(*workloadapi.X509Context)

func (f funcWatcher) OnX509ContextUpdate(c *workloadapi.X509Context) { f(c) }
func (funcWatcher) OnX509ContextWatchError(error)                    {}

// When the path to the server an agent uses loses every packet (a
// partition, a frozen host: the connection looks open, nothing answers),
// the agent's keepalive finds it dead and the agent moves to another
// address: a new entry reaches it there. Without the keepalive every
// request waited on the dead connection for good.
func TestAgentLeavesAServerWhosePacketsAreLost(t *testing.T) {
	srv := harness.StartServer(t)
	p1, p2 := harness.StartProxy(t, srv.AgentAddr()), harness.StartProxy(t, srv.AgentAddr())
	ag := harness.StartAgent(t, srv, func(c *agent.Config) { c.ServerAddrs = []string{p1.Addr(), p2.Addr()} })
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/before", ParentId: ag.ID(), Selectors: []string{uidSelector()}})
	waitForSVIDWithin(t, ag, "spiffe://example.org/before", 10*time.Second)
	harness.Eventually(t, 5*time.Second, func() bool { return p1.Open()+p2.Open() == 1 })
	used := p1
	if p2.Open() > 0 {
		used = p2
	}
	used.Pause()
	defer used.Resume()
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/after-blackhole", ParentId: ag.ID(), Selectors: []string{uidSelector()}})
	// The keepalive drops the connection within 1.5 intervals of silence.
	waitForSVIDWithin(t, ag, "spiffe://example.org/after-blackhole", 3*agent.KeepaliveInterval)
}

// waitForSVIDWithin waits up to timeout until the agent serves an SVID for id.
func waitForSVIDWithin(t *testing.T, ag *harness.Agent, id string, timeout time.Duration) {
	t.Helper()
	harness.Eventually(t, timeout, func() bool {
		x, err := fetchX509(t, ag.Addr(), 2*time.Second)
		if err != nil {
			return false
		}
		for _, s := range x.SVIDs {
			if s.ID.String() == id {
				return true
			}
		}
		return false
	})
}

// While the agent waits on a server whose packets are lost, the SVIDs it
// holds run out; its expired-SVID gauge says so at once, not after the
// request it waits on has ended.
func TestExpiredSVIDGaugeIsLiveWhileTheAgentWaits(t *testing.T) {
	srv := harness.StartServer(t, func(c *server.Config) { c.DefaultSVIDTTL = 2 * time.Second })
	p := harness.StartProxy(t, srv.AgentAddr())
	reg := prometheus.NewRegistry()
	ag := harness.StartAgent(t, srv, func(c *agent.Config) { c.ServerAddrs, c.Registry = []string{p.Addr()}, reg })
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/web", ParentId: ag.ID(), Selectors: []string{uidSelector()}})
	x, err := fetchX509(t, ag.Addr(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	p.Pause() // the only server: every request now waits for the keepalive (15 s)
	defer p.Resume()
	expiry := x.DefaultSVID().Certificates[0].NotAfter
	time.Sleep(time.Until(expiry))
	harness.Eventually(t, agent.KeepaliveInterval/2, func() bool {
		return gaugeValue(t, reg, "shortleaf_agent_expired_x509_svids") >= 1
	})
}

// gaugeValue reads an unlabelled gauge from reg.
func gaugeValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	return unlabelled(t, reg, name).GetGauge().GetValue()
}

// histogramCount reads the observations of an unlabelled histogram.
func histogramCount(t *testing.T, reg *prometheus.Registry, name string) uint64 {
	t.Helper()
	return unlabelled(t, reg, name).GetHistogram().GetSampleCount()
}

// unlabelled finds the one series of name in reg, or fails the test.
func unlabelled(t *testing.T, reg *prometheus.Registry, name string) *dto.Metric {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name && len(f.GetMetric()) == 1 {
			return f.GetMetric()[0]
		}
	}
	t.Fatalf("no unlabelled metric %s", name)
	return nil
}
