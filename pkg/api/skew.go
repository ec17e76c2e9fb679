package api

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// syncReport is what an agent's sync request reports (SyncRequest and the
// older SyncEntriesRequest).
type syncReport interface {
	GetBundleSequence() uint64
	GetSignerKeyIds() [][]byte
	GetAgentTimeUnixMs() int64
}

// SkewWarning is the clock skew past which an agent is logged: SVIDs are
// backdated 30s, so beyond that its workloads' peers see "not yet valid".
const SkewWarning = 15 * time.Second

// clockSkews keeps each agent's last measured clock skew: the server's
// clock minus the agent's when its sync request arrived (positive: the
// agent is behind). The request's transit time is in it; it is small
// beside the skews that matter.
type clockSkews struct {
	mu     sync.Mutex
	byID   map[string]skewSample
	warned map[string]time.Time
}

type skewSample struct {
	Skew time.Duration
	At   time.Time
}

func (c *clockSkews) observe(ctx context.Context, s *AgentService, agentID string, agentMs int64) {
	if agentMs == 0 {
		return // an older agent
	}
	now := s.cfg.Clock.Now()
	skew := now.Sub(time.UnixMilli(agentMs))
	if m := s.cfg.Metrics; m != nil && m.ClockSkew != nil {
		m.ClockSkew.Observe(skew.Abs().Seconds())
	}
	c.mu.Lock()
	if c.byID == nil {
		c.byID, c.warned = map[string]skewSample{}, map[string]time.Time{}
	}
	c.byID[agentID] = skewSample{Skew: skew, At: now}
	warn := skew.Abs() > SkewWarning && now.Sub(c.warned[agentID]) > time.Hour
	if warn {
		c.warned[agentID] = now
	}
	c.mu.Unlock()
	if warn {
		s.cfg.Logger.WarnContext(ctx, "an agent's clock is off: its workloads' SVIDs may be refused as not yet valid or expired",
			slog.String("agent_id", agentID), slog.Duration("skew", skew.Round(time.Millisecond)))
	}
}

// ClockSkews returns each agent's clock skew measured within window (the
// server's clock minus the agent's), dropping older ones.
func (s *AgentService) ClockSkews(window time.Duration) map[string]time.Duration {
	now := s.cfg.Clock.Now()
	c := &s.skews
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]time.Duration, len(c.byID))
	for id, sm := range c.byID {
		if now.Sub(sm.At) > window {
			delete(c.byID, id)
			delete(c.warned, id)
			continue
		}
		out[id] = sm.Skew
	}
	return out
}

// MaxClockSkew is the largest clock skew (absolute) of the agents measured
// within window.
func (s *AgentService) MaxClockSkew(window time.Duration) time.Duration {
	var most time.Duration
	for _, d := range s.ClockSkews(window) {
		most = max(most, d.Abs())
	}
	return most
}
