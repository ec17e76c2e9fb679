package api

import (
	"context"
	"fmt"
	"time"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/pkg/clock"
	"github.com/shortleaf/shortleaf/pkg/datastore"
)

// PublishLeadRefreshHints is how many bundle refresh hints a new root is
// published to federated trust domains before it may sign (SPIFFE
// Federation: 3 to 5).
const PublishLeadRefreshHints = 3

// AgentLister lists the agents the server knows.
type AgentLister interface {
	ListAgents(ctx context.Context) ([]*datastore.Agent, error)
}

// PropagationGate decides whether a prepared root may sign: every live agent
// (seen within AgentLiveness) must hold the bundle that published it, and
// federated consumers of the bundle endpoint must have had
// PublishLeadRefreshHints refresh hints to fetch it. Its Blockers is the CA's
// RootGate.
type PropagationGate struct {
	Agents        AgentLister
	Clock         clock.Clock
	AgentLiveness time.Duration // default DefaultAgentLiveness
	// BundleRefreshHint is the bundle endpoint's refresh hint, 0 without an endpoint.
	BundleRefreshHint time.Duration
}

func (g *PropagationGate) liveness() time.Duration {
	if g.AgentLiveness == 0 {
		return DefaultAgentLiveness
	}
	return g.AgentLiveness
}

// Lead is the least time the gate needs after a prepare: a live agent may go
// unseen for AgentLiveness, and consumers are owed their refresh hints.
func (g *PropagationGate) Lead() time.Duration {
	return g.liveness() + PublishLeadRefreshHints*g.BundleRefreshHint
}

// Blockers names what still lacks prepared: the federation wait first (it
// costs nothing), then every lagging live agent.
func (g *PropagationGate) Blockers(ctx context.Context, prepared ca.Authority) []string {
	var out []string
	if g.BundleRefreshHint > 0 {
		ready := prepared.NotBefore.Add(ca.Backdate).Add(PublishLeadRefreshHints * g.BundleRefreshHint)
		if now := g.Clock.Now(); now.Before(ready) {
			out = append(out, fmt.Sprintf("bundle endpoint consumers (%d refresh hints after prepare: wait until %s)",
				PublishLeadRefreshHints, ready.UTC().Format(time.RFC3339)))
		}
	}
	_, lagging, err := g.Live(ctx, prepared.BundleSequence)
	if err != nil {
		return append(out, fmt.Sprintf("(agents could not be listed: %v)", err))
	}
	return append(out, lagging...)
}

// Live counts agents seen within the liveness window and lists those whose
// bundle is older than seq.
func (g *PropagationGate) Live(ctx context.Context, seq uint64) (live int, lagging []string, err error) {
	agents, err := g.LiveAgents(ctx)
	for _, a := range agents {
		if a.BundleSequence < seq {
			lagging = append(lagging, a.SPIFFEID)
		}
	}
	return len(agents), lagging, err
}

// LiveAgents are the agents seen within the liveness window: those the gate
// and revoke wait for.
func (g *PropagationGate) LiveAgents(ctx context.Context) ([]*datastore.Agent, error) {
	agents, err := g.Agents.ListAgents(ctx)
	if err != nil {
		return nil, err
	}
	since := g.Clock.Now().Add(-g.liveness())
	live := agents[:0]
	for _, a := range agents {
		if !a.LastSeen.Before(since) {
			live = append(live, a)
		}
	}
	return live, nil
}
