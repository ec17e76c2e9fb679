package api

import (
	"context"
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/pkg/datastore"
	"github.com/shortleaf/shortleaf/pkg/entryfeed"
)

// Node aliases, SPIRE's: an entry parented to the server's ID, with node
// selectors, names a group of nodes by its SPIFFE ID. Every agent whose
// node selectors include all of the alias's belongs to it, and an entry
// parented to the alias's ID is served to each of them: one registration
// covers every node that matches.

// aliasPageSize is the page in which alias entries are read.
const aliasPageSize = 1000

// parents returns the parent IDs whose entries the agent holds: its own ID
// first, then the IDs of the node aliases it belongs to, sorted.
func (s *AgentService) parents(ctx context.Context, agentID spiffeid.ID, agent *datastore.Agent) ([]string, error) {
	out := []string{agentID.String()}
	if len(agent.Selectors) == 0 {
		return out, nil
	}
	var aliases []string
	token := ""
	for {
		entries, next, err := s.cfg.Store.ListEntriesByParent(ctx, ca.ServerID(s.cfg.CA.TrustDomain()).String(), token, aliasPageSize)
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			if attest.Subset(e.Selectors, agent.Selectors) {
				aliases = append(aliases, e.SPIFFEID)
			}
		}
		if next == "" {
			break
		}
		token = next
	}
	slices.Sort(aliases)
	return append(out, slices.Compact(aliases)...), nil
}

// syncParents is what a sync stream watches: the agent's parents and the
// server's ID, under which alias entries change.
func (s *AgentService) syncParents(parents []string) entryfeed.Parents {
	p := entryfeed.NewParents(parents...)
	p[ca.ServerID(s.cfg.CA.TrustDomain()).String()] = true
	return p
}

// revisions is EntriesRevision over several parents: the store's current
// revision and the latest change to any of their entries.
func (s *AgentService) revisions(ctx context.Context, parents entryfeed.Parents) (current, latest uint64, err error) {
	for p := range parents {
		cur, rev, err := s.cfg.Store.EntriesRevision(ctx, p)
		if err != nil {
			return 0, 0, err
		}
		current, latest = max(current, cur), max(latest, rev)
	}
	return current, latest, nil
}
