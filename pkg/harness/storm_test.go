package harness_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/pkg/agent"
	"github.com/shortleaf/shortleaf/pkg/harness"
	"github.com/shortleaf/shortleaf/pkg/server"
	"github.com/shortleaf/shortleaf/pkg/signqueue"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
	agentv1 "github.com/shortleaf/shortleaf/proto/agent/v1"
)

// TestSigningStormBeyondCapacityLeavesNoSVIDExpired runs the server at a
// signing capacity small enough to overrun in seconds (60 signatures/s, a
// queue of 40) and asks more than twice that of it:
//
//   - two real agents start at once with 101 entries each (202 CSRs at
//     once, over 3 s of capacity), then renew them every ~5 s (0.67 of
//     capacity);
//   - a misbehaving agent asks, on 3 connections without pause, for its 100
//     SVIDs over and over, each time claiming to hold none (the most urgent
//     claim there is);
//   - halfway, the active intermediate is tainted: every SVID of the real
//     agents must be replaced at once.
//
// Two go-spiffe workloads on the real agents do mTLS throughout. No
// handshake may fail, no workload may hold an expired SVID, and neither
// agent's expired-SVID gauge may read above 0 at any sample. The server must
// have shed work (its metrics say so), the real agents must have been told
// to retry and have retried until every SVID was replaced, which the
// revocation of the tainted key proves: it is refused while any live agent
// still holds an SVID it signed.
func TestSigningStormBeyondCapacityLeavesNoSVIDExpired(t *testing.T) {
	const (
		capacity = 60
		perAgent = 100
		hogCSRs  = 100
		ttl      = 10 * time.Second
	)
	srv := harness.StartServer(t, func(c *server.Config) {
		c.DefaultSVIDTTL = ttl
		c.RotationInterval = 50 * time.Millisecond
		c.AgentLiveness = time.Minute
		c.Limits.SigningCapacity = capacity
		c.Limits.SigningQueue = 40
		c.Limits.SigningQueueMaxWait = 2 * time.Second
		c.Limits.SigningPerSecond = -1
	})
	ctx := context.Background()

	// Every entry exists before the agents start: their first sync asks
	// for all of them at once.
	type realAgent struct {
		token, id string
		reg       *prometheus.Registry
		ag        *harness.Agent
	}
	agents := make([]*realAgent, 2)
	workloadIDs := make([]spiffeid.ID, 2)
	for i := range agents {
		token, id := srv.NewJoinToken(t)
		agents[i] = &realAgent{token: token, id: id, reg: prometheus.NewRegistry()}
		workloadIDs[i] = spiffeid.RequireFromString(fmt.Sprintf("spiffe://%s/storm/workload-%d", harness.TrustDomain, i))
		srv.CreateEntry(t, &adminv1.Entry{SpiffeId: workloadIDs[i].String(), ParentId: id, Selectors: []string{uidSelector()}})
		for j := range perAgent {
			srv.CreateEntry(t, &adminv1.Entry{SpiffeId: fmt.Sprintf("spiffe://%s/storm/%d/%d", harness.TrustDomain, i, j), ParentId: id,
				Selectors: []string{"unix:uid:4000000001"}})
		}
	}
	hog := harness.AttestRaw(t, srv)
	var hogEntries []string
	for j := range hogCSRs {
		e := srv.CreateEntry(t, &adminv1.Entry{SpiffeId: fmt.Sprintf("spiffe://%s/storm/hog/%d", harness.TrustDomain, j), ParentId: hog.ID.String(),
			Selectors: []string{"unix:uid:4000000002"}})
		hogEntries = append(hogEntries, e.GetId())
	}
	for _, a := range agents {
		a.ag = harness.StartAgent(t, srv, func(c *agent.Config) { c.JoinToken, c.Registry = a.token, a.reg })
	}

	// The misbehaving agent: 3 loops, each a full batch claiming no SVID.
	hogCtx, stopHog := context.WithCancel(ctx)
	var hogWG sync.WaitGroup
	var hogSigned, hogRefused atomic.Int64
	for range 3 {
		hogWG.Add(1)
		go func() {
			defer hogWG.Done()
			for hogCtx.Err() == nil {
				req := &agentv1.BatchNewX509SVIDRequest{}
				for _, id := range hogEntries {
					_, csr := harness.NewCSR(t, spiffeid.ID{})
					req.Params = append(req.Params, &agentv1.NewX509SVIDParams{EntryId: id, Csr: csr})
				}
				resp, err := hog.Client.BatchNewX509SVID(hogCtx, req)
				if status.Code(err) == codes.ResourceExhausted {
					hogRefused.Add(int64(len(req.Params)))
					continue
				}
				for _, r := range resp.GetResults() {
					if r.GetStatusCode() == 0 {
						hogSigned.Add(1)
					} else {
						hogRefused.Add(1)
					}
				}
			}
		}()
	}
	t.Cleanup(func() { stopHog(); hogWG.Wait() })

	// Each agent's expired-SVID gauge, sampled every 50ms from the start.
	var maxExpired atomic.Int64
	sampleCtx, stopSampling := context.WithCancel(ctx)
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for sampleCtx.Err() == nil {
			for _, a := range agents {
				if v := int64(harness.MetricValue(t, a.reg, "shortleaf_agent_expired_x509_svids", nil)); v > maxExpired.Load() {
					maxExpired.Store(v)
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	defer func() { stopSampling(); <-sampled }()

	probeCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	probe := startMTLSProbe(t, x509Source(probeCtx, t, agents[0].ag), workloadIDs[0], x509Source(probeCtx, t, agents[1].ag), workloadIDs[1])

	// Every real agent holds all of its SVIDs despite the storm.
	harness.Eventually(t, 30*time.Second, func() bool {
		for _, a := range agents {
			if harness.MetricValue(t, a.reg, "shortleaf_agent_cached_x509_svids", nil) != perAgent+1 {
				return false
			}
		}
		return true
	})
	time.Sleep(ttl) // a full round of renewals under the misbehaving agent's load

	// Taint: every SVID the real agents hold must be replaced at once.
	var oldID string
	for _, a := range srv.CA().Authorities() {
		if a.Kind == ca.KindIntermediate && a.State == ca.StateActive {
			oldID = a.ID
		}
	}
	for _, call := range []func() error{
		func() error {
			_, err := srv.Admin.PrepareAuthority(ctx, &adminv1.PrepareAuthorityRequest{})
			return err
		},
		func() error {
			_, err := srv.Admin.ActivateAuthority(ctx, &adminv1.ActivateAuthorityRequest{})
			return err
		},
		func() error {
			_, err := srv.Admin.TaintAuthority(ctx, &adminv1.TaintAuthorityRequest{Id: oldID})
			return err
		},
	} {
		if err := call(); err != nil {
			t.Fatal(err)
		}
	}
	// Revocation is refused while a live agent still reports an SVID
	// signed by the tainted key: once it passes, every one was replaced.
	harness.Eventually(t, 2*ttl, func() bool {
		_, err := srv.Admin.RevokeAuthority(ctx, &adminv1.RevokeAuthorityRequest{Id: oldID})
		return err == nil
	})
	time.Sleep(ttl / 2) // and the workloads keep going on the new key

	stopHog()
	hogWG.Wait()
	probe.requireClean(t)
	stopSampling()
	<-sampled
	if n := maxExpired.Load(); n != 0 {
		t.Errorf("an agent held %d expired SVIDs at one sample; want 0 throughout", n)
	}
	shed := 0.0
	for _, reason := range []string{signqueue.ReasonFull, signqueue.ReasonFairShare, signqueue.ReasonDisplaced} {
		shed += srv.CounterValue(t, "shortleaf_server_signing_shed_total", map[string]string{"reason": reason})
	}
	if shed == 0 {
		t.Error("the server shed nothing: the test did not overrun its capacity")
	}
	agentShed := 0.0
	for _, a := range agents {
		agentShed += harness.MetricValue(t, a.reg, "shortleaf_agent_x509_svid_requests_shed_total", nil)
	}
	if agentShed == 0 {
		t.Error("no real agent was ever told to retry: the storm did not reach them")
	}
	t.Logf("capacity %d/s: %d handshakes, 0 failed; server shed %.0f CSRs, real agents retried %.0f, misbehaving agent got %d signed and %d refused",
		capacity, probe.ok.Load(), shed, agentShed, hogSigned.Load(), hogRefused.Load())
}
