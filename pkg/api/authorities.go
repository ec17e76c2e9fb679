package api

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/shortleaf/shortleaf/ca"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// DefaultAgentLiveness is how recently an agent must have synced to count as
// live for root activation and revocation checks.
const DefaultAgentLiveness = 10 * time.Minute

// ListAuthorities shows every authority, its next transition and how far the
// newest bundle has propagated.
func (s *AdminService) ListAuthorities(ctx context.Context, _ *adminv1.ListAuthoritiesRequest) (*adminv1.ListAuthoritiesResponse, error) {
	resp := &adminv1.ListAuthoritiesResponse{}
	for _, a := range s.cfg.Lifecycle.Authorities() {
		resp.Authorities = append(resp.Authorities, s.authorityProto(a))
	}
	_, seq := s.cfg.Lifecycle.Bundle()
	live, lagging, err := s.liveAgents(ctx, seq)
	if err != nil {
		return nil, toStatus(ctx, s.cfg.Logger, "list authorities", err)
	}
	resp.Propagation = &adminv1.Propagation{
		BundleSequence: seq, LiveAgents: int32(live), CurrentAgents: int32(live - len(lagging)), LaggingAgents: lagging,
	}
	return resp, nil
}

// liveAgents counts agents seen within the liveness window and lists those
// whose bundle is older than seq.
func (s *AdminService) liveAgents(ctx context.Context, seq uint64) (live int, lagging []string, err error) {
	agents, err := s.cfg.Store.ListAgents(ctx)
	if err != nil {
		return 0, nil, err
	}
	since := s.cfg.Clock.Now().Add(-s.cfg.AgentLiveness)
	for _, a := range agents {
		if a.LastSeen.Before(since) {
			continue
		}
		live++
		if a.BundleSequence < seq {
			lagging = append(lagging, a.SPIFFEID)
		}
	}
	return live, lagging, nil
}

// agentsUsing lists live agents that reported SVIDs signed by keyID.
func (s *AdminService) agentsUsing(ctx context.Context, keyID string) ([]string, error) {
	agents, err := s.cfg.Store.ListAgents(ctx)
	if err != nil {
		return nil, err
	}
	since := s.cfg.Clock.Now().Add(-s.cfg.AgentLiveness)
	var out []string
	for _, a := range agents {
		if !a.LastSeen.Before(since) && slices.Contains(a.SignerKeyIDs, keyID) {
			out = append(out, a.SPIFFEID)
		}
	}
	return out, nil
}

func parseKind(field, s string) (ca.Kind, error) {
	switch s {
	case "", string(ca.KindIntermediate), "x509":
		return ca.KindIntermediate, nil
	case string(ca.KindJWT):
		return ca.KindJWT, nil
	default:
		return "", invalid(field, "%q is not intermediate or jwt", s)
	}
}

// PrepareAuthority creates the next intermediate or JWT key ahead of schedule.
func (s *AdminService) PrepareAuthority(ctx context.Context, req *adminv1.PrepareAuthorityRequest) (*adminv1.Authority, error) {
	kind, err := parseKind("kind", req.GetKind())
	if err != nil {
		return nil, err
	}
	a, err := s.cfg.Lifecycle.Prepare(ctx, kind)
	return s.authorityResult(ctx, "prepare", a, err)
}

// ActivateAuthority activates the prepared intermediate or JWT key now.
func (s *AdminService) ActivateAuthority(ctx context.Context, req *adminv1.ActivateAuthorityRequest) (*adminv1.Authority, error) {
	kind, err := parseKind("kind", req.GetKind())
	if err != nil {
		return nil, err
	}
	a, err := s.cfg.Lifecycle.Activate(ctx, kind)
	return s.authorityResult(ctx, "activate", a, err)
}

// TaintAuthority marks an old key as untrusted; agents replace what it signed.
func (s *AdminService) TaintAuthority(ctx context.Context, req *adminv1.TaintAuthorityRequest) (*adminv1.Authority, error) {
	if req.GetId() == "" {
		return nil, invalid("id", "is required")
	}
	a, err := s.cfg.Lifecycle.Taint(ctx, req.GetId())
	return s.authorityResult(ctx, "taint", a, err)
}

// RevokeAuthority removes a tainted key nothing uses any more.
func (s *AdminService) RevokeAuthority(ctx context.Context, req *adminv1.RevokeAuthorityRequest) (*adminv1.Authority, error) {
	if req.GetId() == "" {
		return nil, invalid("id", "is required")
	}
	var lookupErr error
	a, err := s.cfg.Lifecycle.Revoke(ctx, req.GetId(), func(keyID string) []string {
		users, err := s.agentsUsing(ctx, keyID)
		if err != nil {
			lookupErr = err
			return []string{"(agents could not be listed)"}
		}
		return users
	})
	if lookupErr != nil {
		return nil, toStatus(ctx, s.cfg.Logger, "revoke", lookupErr)
	}
	return s.authorityResult(ctx, "revoke", a, err)
}

// PrepareRoot creates a new root and publishes it in the bundle.
func (s *AdminService) PrepareRoot(ctx context.Context, _ *adminv1.PrepareRootRequest) (*adminv1.Authority, error) {
	a, err := s.cfg.Lifecycle.PrepareRoot(ctx)
	return s.authorityResult(ctx, "root prepare", a, err)
}

// ActivateRoot switches signing to the prepared root once every live agent
// holds it (or with force).
func (s *AdminService) ActivateRoot(ctx context.Context, req *adminv1.ActivateRootRequest) (*adminv1.ActivateRootResponse, error) {
	var forcedPast []string
	var lookupErr error
	a, err := s.cfg.Lifecycle.ActivateRoot(ctx, func(seq uint64) []string {
		_, lagging, err := s.liveAgents(ctx, seq)
		if err != nil {
			lookupErr = err
			return []string{"(agents could not be listed)"}
		}
		if wait := s.federationWait(); wait != "" {
			lagging = append(lagging, wait)
		}
		forcedPast = lagging
		return lagging
	}, req.GetForce())
	if lookupErr != nil {
		return nil, toStatus(ctx, s.cfg.Logger, "root activate", lookupErr)
	}
	out, err := s.authorityResult(ctx, "root activate", a, err)
	if err != nil {
		return nil, err
	}
	resp := &adminv1.ActivateRootResponse{Authority: out}
	if req.GetForce() && len(forcedPast) > 0 {
		resp.LaggingAgents = forcedPast
		s.cfg.Logger.WarnContext(ctx, "root activated with --force although agents lack it", slog.Int("lagging_agents", len(forcedPast)))
	}
	return resp, nil
}

// PublishLeadRefreshHints is how many bundle refresh hints a new root is
// published to federated trust domains before it may sign (SPIFFE
// Federation: 3 to 5).
const PublishLeadRefreshHints = 3

// federationWait names the wait still owed to federated consumers of the
// bundle endpoint before the prepared root may sign, or "".
func (s *AdminService) federationWait() string {
	if s.cfg.BundleRefreshHint <= 0 {
		return ""
	}
	for _, a := range s.cfg.Lifecycle.Authorities() {
		if a.Kind != ca.KindRoot || a.State != ca.StatePrepared {
			continue
		}
		ready := a.NotBefore.Add(ca.Backdate).Add(PublishLeadRefreshHints * s.cfg.BundleRefreshHint)
		if now := s.cfg.Clock.Now(); now.Before(ready) {
			return fmt.Sprintf("bundle endpoint consumers (%d refresh hints after prepare: wait until %s)",
				PublishLeadRefreshHints, ready.UTC().Format(time.RFC3339))
		}
	}
	return ""
}

// RetireRoot drops the old root from the bundle once nothing chains to it.
func (s *AdminService) RetireRoot(ctx context.Context, _ *adminv1.RetireRootRequest) (*adminv1.Authority, error) {
	a, err := s.cfg.Lifecycle.RetireRoot(ctx)
	return s.authorityResult(ctx, "root retire", a, err)
}

func (s *AdminService) authorityResult(ctx context.Context, op string, a ca.Authority, err error) (*adminv1.Authority, error) {
	if err != nil {
		return nil, toStatus(ctx, s.cfg.Logger, op, err)
	}
	s.cfg.Logger.InfoContext(ctx, fmt.Sprintf("CA %s by admin", op), slog.String("authority_id", a.ID), slog.String("kind", string(a.Kind)))
	return s.authorityProto(a), nil
}

func (s *AdminService) authorityProto(a ca.Authority) *adminv1.Authority {
	what, at := s.cfg.Lifecycle.NextTransition(a)
	out := &adminv1.Authority{
		Id: a.ID, Kind: string(a.Kind), State: string(a.State), NotBefore: a.NotBefore.Unix(), NotAfter: a.NotAfter.Unix(),
		KeyRef: a.KeyRef, ParentId: a.ParentID, Tainted: a.Tainted, KeyId: a.KeyID(), BundleSequence: a.BundleSequence,
		NextTransition: what,
	}
	if !at.IsZero() {
		out.NextTransitionAt = at.Unix()
	}
	return out
}
