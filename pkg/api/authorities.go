package api

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shortleaf/shortleaf/ca"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// DefaultAgentLiveness is how recently an agent must have synced to count as
// live for root activation and revocation checks.
const DefaultAgentLiveness = 10 * time.Minute

// ListAuthorities shows every authority, its next transition, how far the
// newest bundle has propagated, where root rotation stands and which
// certificate the server presents.
func (s *AdminService) ListAuthorities(ctx context.Context, _ *adminv1.ListAuthoritiesRequest) (*adminv1.ListAuthoritiesResponse, error) {
	resp := &adminv1.ListAuthoritiesResponse{}
	for _, a := range s.cfg.Lifecycle.Authorities() {
		resp.Authorities = append(resp.Authorities, s.authorityProto(a))
	}
	_, seq := s.cfg.Lifecycle.Bundle()
	live, lagging, err := s.gate().Live(ctx, seq)
	if err != nil {
		return nil, toStatus(ctx, s.cfg.Logger, "list authorities", err)
	}
	resp.Propagation = &adminv1.Propagation{
		BundleSequence: seq, LiveAgents: int32(live), CurrentAgents: int32(live - len(lagging)), LaggingAgents: lagging,
	}
	resp.RootRotation = rootRotationProto(s.cfg.Lifecycle.RootRotation())
	resp.ServerCertificate = s.serverCertificateProto()
	if resp.Replicas, err = s.replicasProto(ctx); err != nil {
		return nil, toStatus(ctx, s.cfg.Logger, "list authorities", err)
	}
	return resp, nil
}

// replicasProto lists the replicas the journal knows and which one leads.
func (s *AdminService) replicasProto(ctx context.Context) ([]*adminv1.Replica, error) {
	c := s.cfg.Lifecycle
	leader := c.ReplicaID()
	if s.cfg.LeaderID != nil {
		var err error
		if leader, err = s.cfg.LeaderID(ctx); err != nil {
			return nil, err
		}
	}
	var out []*adminv1.Replica
	for _, r := range c.Replicas() {
		out = append(out, &adminv1.Replica{Id: r.ID, Live: r.Live, Leader: r.ID == leader, Authorities: int32(r.Authorities)})
	}
	return out, nil
}

func rootRotationProto(st ca.RootRotationStatus) *adminv1.RootRotation {
	return &adminv1.RootRotation{
		Scheduled: st.Scheduled, ActiveRootId: st.ActiveRootID, RootNotAfter: unixOrZero(st.RootNotAfter),
		PrepareAt: unixOrZero(st.PrepareAt), Deadline: unixOrZero(st.Deadline), ForceAt: unixOrZero(st.ForceAt),
		PreparedRootId: st.PreparedRootID, PreparedAt: unixOrZero(st.PreparedAt), Blockers: st.Blockers,
		OldRootId: st.OldRootID, RetireAt: unixOrZero(st.RetireAt),
	}
}

func unixOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

// serverCertificateProto describes the certificate the server presents now.
func (s *AdminService) serverCertificateProto() *adminv1.ServerCertificate {
	chain := s.serverChain()
	if len(chain) < 2 {
		return nil
	}
	out := &adminv1.ServerCertificate{SerialNumber: chain[0].SerialNumber.Text(16), SignerKeyId: hex.EncodeToString(chain[1].SubjectKeyId),
		NotAfter: chain[0].NotAfter.Unix()}
	for _, a := range s.cfg.Lifecycle.Authorities() {
		if a.Cert != nil && a.Cert.Equal(chain[1]) {
			out.SignerId = a.ID
		}
	}
	return out
}

func (s *AdminService) serverChain() []*x509.Certificate {
	if s.cfg.ServerChain == nil {
		return nil
	}
	return s.cfg.ServerChain()
}

// gate is the propagation gate the admin API reports on.
func (s *AdminService) gate() *PropagationGate {
	return &PropagationGate{Agents: s.cfg.Store, Clock: s.cfg.Clock, AgentLiveness: s.cfg.AgentLiveness, BundleRefreshHint: s.cfg.BundleRefreshHint}
}

// agentsUsing lists live agents that reported SVIDs signed by keyID.
func (s *AdminService) agentsUsing(ctx context.Context, keyID string) ([]string, error) {
	agents, err := s.gate().LiveAgents(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, a := range agents {
		if slices.Contains(a.SignerKeyIDs, keyID) {
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
		var users []string
		if chain := s.serverChain(); len(chain) > 1 && hex.EncodeToString(chain[1].SubjectKeyId) == keyID {
			users = append(users, serverCertificateUser(chain))
		}
		agents, err := s.agentsUsing(ctx, keyID)
		if err != nil {
			lookupErr = err
			return append(users, "(agents could not be listed)")
		}
		return append(users, agents...)
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

// ActivateRoot switches signing to the prepared root once the propagation
// gate passes (or with force, naming what it overrode).
func (s *AdminService) ActivateRoot(ctx context.Context, req *adminv1.ActivateRootRequest) (*adminv1.ActivateRootResponse, error) {
	a, forcedPast, err := s.cfg.Lifecycle.ActivateRoot(ctx, req.GetForce())
	out, err := s.authorityResult(ctx, "root activate", a, err)
	if err != nil {
		return nil, err
	}
	resp := &adminv1.ActivateRootResponse{Authority: out}
	if len(forcedPast) > 0 {
		resp.LaggingAgents = forcedPast
		s.cfg.Logger.WarnContext(ctx, "root activated with --force although the propagation gate did not pass: the consumers listed lack the new root",
			slog.Int("blockers", len(forcedPast)), slog.Any("blocking", ca.RootRotationStatus{Blockers: forcedPast}.FirstBlockers(20)))
	}
	return resp, nil
}

// RetireRoot drops the old root from the bundle once nothing chains to it
// and the server presents no certificate under it.
func (s *AdminService) RetireRoot(ctx context.Context, _ *adminv1.RetireRootRequest) (*adminv1.Authority, error) {
	a, err := s.cfg.Lifecycle.RetireRoot(ctx, func(root ca.Authority) []string {
		if chain := s.serverChain(); len(chain) > 1 && root.Cert != nil && bytes.Equal(chain[1].AuthorityKeyId, root.Cert.SubjectKeyId) {
			return []string{serverCertificateUser(chain)}
		}
		return nil
	})
	return s.authorityResult(ctx, "root retire", a, err)
}

// ExportCAJournal returns the CA journal for `ca drill`: certificates,
// lifetimes and key references, no key material.
func (s *AdminService) ExportCAJournal(ctx context.Context, _ *adminv1.ExportCAJournalRequest) (*adminv1.ExportCAJournalResponse, error) {
	if s.cfg.Journal == nil {
		return nil, status.Error(codes.Unimplemented, "this server cannot export its CA journal")
	}
	state, err := s.cfg.Journal.LoadCAJournal(ctx)
	if err != nil {
		return nil, toStatus(ctx, s.cfg.Logger, "export CA journal", err)
	}
	raw, err := ca.ExportJournal(state, s.cfg.Lifecycle.ReplicaID())
	if err != nil {
		return nil, toStatus(ctx, s.cfg.Logger, "export CA journal", err)
	}
	return &adminv1.ExportCAJournalResponse{Journal: raw}, nil
}

func serverCertificateUser(chain []*x509.Certificate) string {
	return fmt.Sprintf("this server's TLS certificate (serial %s, until %s)", chain[0].SerialNumber.Text(16), chain[0].NotAfter.UTC().Format(time.RFC3339))
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
		NextTransition: what, ReplicaId: a.Replica,
	}
	if !at.IsZero() {
		out.NextTransitionAt = at.Unix()
	}
	return out
}
