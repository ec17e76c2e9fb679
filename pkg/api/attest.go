package api

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/attest/jointoken"
	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/pkg/audit"
	"github.com/shortleaf/shortleaf/pkg/datastore"
	"github.com/shortleaf/shortleaf/pkg/grpcstream"
	"github.com/shortleaf/shortleaf/pkg/telemetry"
	agentv1 "github.com/shortleaf/shortleaf/proto/agent/v1"
)

// Bounds of one attestation.
const (
	// attestTimeout bounds a whole attestation stream: a caller that opens
	// one and goes quiet holds nothing for longer.
	attestTimeout = 30 * time.Second
	// ChallengeTimeout is how long an agent has to answer a challenge: a
	// nonce is worth nothing after it.
	ChallengeTimeout = 10 * time.Second
	// MaxAttestationPayload bounds an attestor's payload and each answer,
	// within the 32 KiB the transport reads of one AttestAgent message.
	MaxAttestationPayload = 24 << 10
)

// AttestAgent attests a node and issues its agent SVID: at once for a join
// token; for any other attestor after the challenges it makes, each with a
// fresh nonce bound to this stream.
func (s *AgentService) AttestAgent(stream agentv1.AgentAPI_AttestAgentServer) error {
	ctx, cancel := context.WithTimeout(stream.Context(), attestTimeout)
	defer cancel()
	ip := peerIP(ctx)
	if !s.cfg.AttestLimit.Allow(ip, s.cfg.Clock.Now(), 1) {
		return s.refuse(ctx, "attestation_rate", ip, status.Errorf(codes.ResourceExhausted,
			"attestation rate limit for %s exceeded (%s per source address); retry later", ip, s.cfg.AttestLimit.Describe()))
	}
	msgs, errs := grpcstream.Receive(ctx, stream.Recv)
	first, err := receive(ctx, msgs, errs)
	if err != nil {
		return err
	}
	var resp *agentv1.AttestAgentResponse
	attestor := "none"
	switch a := first.GetAttestation().(type) {
	case *agentv1.AttestAgentRequest_JoinToken:
		attestor = jointoken.Type
		resp, err = s.attestJoinToken(ctx, ip, a.JoinToken, first.GetCsr())
	case *agentv1.AttestAgentRequest_Data:
		challenge := func(ctx context.Context, challenge []byte) ([]byte, error) {
			if err := stream.Send(&agentv1.AttestAgentResponse{Challenge: challenge}); err != nil {
				return nil, err
			}
			ctx, cancel := context.WithTimeout(ctx, ChallengeTimeout)
			defer cancel()
			answer, err := receive(ctx, msgs, errs)
			if err != nil {
				return nil, err
			}
			switch n := len(answer.GetChallengeResponse()); {
			case answer.GetAttestation() != nil || len(answer.GetCsr()) > 0:
				return nil, invalid("attestation", "may be sent in the first message only")
			case n == 0:
				return nil, invalid("challenge_response", "is empty")
			case n > MaxAttestationPayload:
				return nil, invalid("challenge_response", "is %d bytes, more than %d", n, MaxAttestationPayload)
			}
			return answer.GetChallengeResponse(), nil
		}
		if _, known := s.cfg.NodeAttestors[a.Data.GetType()]; known {
			attestor = a.Data.GetType()
		}
		resp, err = s.attestNode(ctx, ip, a.Data, first.GetCsr(), challenge)
	default:
		s.cfg.Metrics.AgentAttestations.WithLabelValues("none", telemetry.ResultBad).Inc()
		err = invalid("attestation", "a join_token or attestation data is required")
	}
	if err != nil {
		// The attestor's name only when it is one we know: the record
		// carries nothing a caller chose freely but the bounded reason.
		s.auditRefusal(ctx, audit.ActionAgentAttest, attestor, err)
		return err
	}
	return stream.Send(resp)
}

// receive waits for the next message of an attestation stream.
func receive(ctx context.Context, msgs <-chan *agentv1.AttestAgentRequest, errs <-chan error) (*agentv1.AttestAgentRequest, error) {
	select {
	case m := <-msgs:
		return m, nil
	case err := <-errs:
		if errors.Is(err, io.EOF) {
			return nil, invalid("attestation", "the stream ended before the attestation was complete")
		}
		return nil, err
	case <-ctx.Done():
		return nil, status.Error(codes.DeadlineExceeded, "attestation: no answer in time")
	}
}

// attestJoinToken consumes a join token and issues the agent's first SVID.
func (s *AgentService) attestJoinToken(ctx context.Context, ip string, jt *agentv1.JoinTokenAttestation, csrDER []byte) (*agentv1.AttestAgentResponse, error) {
	tokenID, hash, err := jointoken.Parse(jt.GetToken())
	if err != nil {
		s.cfg.Metrics.AgentAttestations.WithLabelValues(jointoken.Type, telemetry.ResultBad).Inc()
		return nil, invalid("join_token.token", "malformed (want <id>.<secret>)")
	}
	td := s.cfg.CA.TrustDomain()
	agentID, err := jointoken.AgentID(td, tokenID)
	if err != nil {
		return nil, invalid("join_token.token", "%v", err)
	}
	// The token is looked up (and, when it matches, consumed) before the CSR
	// is parsed or its signature checked: a caller without a valid token
	// costs one hash and one read transaction, whatever its CSR holds.
	now := s.cfg.Clock.Now()
	agent := &datastore.Agent{SPIFFEID: agentID.String(), AttestationType: jointoken.Type, CreatedAt: now, LastSeen: now,
		Selectors: []attest.Selector{{Type: jointoken.Type, Value: "id:" + tokenID}}}
	if err := s.cfg.Store.AttestJoinToken(ctx, tokenID, hash, now, agent); err != nil {
		s.cfg.Metrics.AgentAttestations.WithLabelValues(jointoken.Type, telemetry.ResultDenied).Inc()
		s.refusals.Warn(ctx, now, "attestation|"+ip, "agent attestation refused", slog.String("source", ip), slog.String("join_token_id", tokenID), slog.Any("error", err))
		return nil, toStatus(ctx, s.cfg.Logger, "attest", err)
	}
	csr, err := ca.ParseX509SVIDCSR(csrDER, agentID)
	if err != nil {
		// The token is spent, as a used token must be; the agent record it
		// made has no SVID and is removed so that nothing half-made stays.
		s.cfg.Metrics.AgentAttestations.WithLabelValues(jointoken.Type, telemetry.ResultBad).Inc()
		if derr := s.cfg.Store.DeleteAgent(ctx, agent.SPIFFEID); derr != nil {
			s.cfg.Logger.ErrorContext(ctx, "remove agent record after a refused CSR", slog.String("agent_id", agent.SPIFFEID), slog.Any("error", derr))
		}
		return nil, toStatus(ctx, s.cfg.Logger, "attest", err)
	}
	svid, err := s.signAgentSVID(ctx, agent, csr, false)
	if err != nil {
		return nil, err
	}
	s.cfg.Metrics.AgentAttestations.WithLabelValues(jointoken.Type, telemetry.ResultOK).Inc()
	s.cfg.Logger.InfoContext(ctx, "agent attested", slog.String("agent_id", agentID.String()), slog.String("join_token_id", tokenID))
	return &agentv1.AttestAgentResponse{Svid: svid, Bundle: s.bundleProto()}, nil
}

// attestNode runs a node attestor and issues the agent SVID of the node it
// proves. The same node attests to the same agent ID: a known agent
// re-attests (a new key, its old SVID no longer accepted), unless banned.
func (s *AgentService) attestNode(ctx context.Context, ip string, data *agentv1.AttestationData, csrDER []byte, challenge attest.Challenger) (*agentv1.AttestAgentResponse, error) {
	typ := data.GetType()
	attestor, ok := s.cfg.NodeAttestors[typ]
	if !ok {
		s.cfg.Metrics.AgentAttestations.WithLabelValues("none", telemetry.ResultBad).Inc()
		accepted := append(slices.Sorted(maps.Keys(s.cfg.NodeAttestors)), jointoken.Type)
		return nil, invalid("data.type", "%q is not a node attestor this server accepts (accepted: %s)", truncate(typ, 32), strings.Join(accepted, ", "))
	}
	if n := len(data.GetPayload()); n > MaxAttestationPayload {
		s.cfg.Metrics.AgentAttestations.WithLabelValues(typ, telemetry.ResultBad).Inc()
		return nil, invalid("data.payload", "is %d bytes, more than %d", n, MaxAttestationPayload)
	}
	now := s.cfg.Clock.Now()
	refused := func(result string, err error) error {
		s.cfg.Metrics.AgentAttestations.WithLabelValues(typ, result).Inc()
		s.refusals.Warn(ctx, now, "attestation|"+ip, "agent attestation refused", slog.String("source", ip), slog.String("attestor", typ), slog.Any("error", err))
		return err
	}
	res, err := attestor.Attest(ctx, s.cfg.CA.TrustDomain(), data.GetPayload(), challenge)
	if err != nil {
		switch {
		case errors.Is(err, attest.ErrMalformed):
			return nil, refused(telemetry.ResultBad, status.Error(codes.InvalidArgument, err.Error()))
		case errors.Is(err, attest.ErrRefused):
			return nil, refused(telemetry.ResultDenied, status.Error(codes.PermissionDenied, err.Error()))
		case status.Code(err) != codes.Unknown:
			return nil, refused(telemetry.ResultBad, err) // the stream's own errors
		}
		s.cfg.Metrics.AgentAttestations.WithLabelValues(typ, telemetry.ResultError).Inc()
		s.cfg.Logger.ErrorContext(ctx, "node attestor failed", slog.String("attestor", typ), slog.Any("error", err))
		return nil, status.Errorf(codes.Unavailable, "the %s attestor could not check the attestation now: %v; retry later", typ, err)
	}
	if !ca.IsAgentID(res.AgentID, s.cfg.CA.TrustDomain()) {
		return nil, toStatus(ctx, s.cfg.Logger, "attest", errors.New("attestor returned "+res.AgentID.String()+", not an agent ID"))
	}
	csr, err := ca.ParseX509SVIDCSR(csrDER, res.AgentID)
	if err != nil {
		return nil, refused(telemetry.ResultBad, toStatus(ctx, s.cfg.Logger, "attest", err))
	}
	agent, err := s.cfg.Store.AttestAgent(ctx, &datastore.Agent{SPIFFEID: res.AgentID.String(), AttestationType: typ,
		Selectors: res.Selectors, CreatedAt: now, LastSeen: now})
	if errors.Is(err, datastore.ErrAgentBanned) {
		return nil, refused(telemetry.ResultDenied, status.Errorf(codes.PermissionDenied, "agent %s is banned; an admin must unban it (shortleaf agent unban)", res.AgentID))
	}
	if err != nil {
		return nil, toStatus(ctx, s.cfg.Logger, "attest", err)
	}
	svid, err := s.signAgentSVID(ctx, agent, csr, false)
	if err != nil {
		return nil, err
	}
	s.cfg.Metrics.AgentAttestations.WithLabelValues(typ, telemetry.ResultOK).Inc()
	s.cfg.Logger.InfoContext(ctx, "agent attested", slog.String("agent_id", res.AgentID.String()), slog.String("attestor", typ),
		slog.Int("selectors", len(res.Selectors)), slog.Bool("known", !agent.CreatedAt.Equal(now)))
	return &agentv1.AttestAgentResponse{Svid: svid, Bundle: s.bundleProto()}, nil
}

// truncate shortens s to at most n bytes for an error message.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
