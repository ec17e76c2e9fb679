package api

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shortleaf/shortleaf/attest/jointoken"
	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/pkg/audit"
	"github.com/shortleaf/shortleaf/pkg/clock"
	"github.com/shortleaf/shortleaf/pkg/datastore"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// AdminStore is what the admin API needs of the datastore.
type AdminStore interface {
	CreateEntry(ctx context.Context, e *datastore.Entry) (*datastore.Entry, error)
	GetEntry(ctx context.Context, id string) (*datastore.Entry, error)
	UpdateEntry(ctx context.Context, e *datastore.Entry) (*datastore.Entry, error)
	DeleteEntry(ctx context.Context, id string) error
	WriteEntries(ctx context.Context, writes []datastore.EntryWrite) ([]datastore.EntryWriteResult, error)
	ListEntries(ctx context.Context, pageToken string, pageSize int) ([]*datastore.Entry, string, error)
	ListEntriesByParent(ctx context.Context, parentID, pageToken string, pageSize int) ([]*datastore.Entry, string, error)
	CreateJoinToken(ctx context.Context, t *datastore.JoinToken) error
	ListAgents(ctx context.Context) ([]*datastore.Agent, error)
	GetAgent(ctx context.Context, spiffeID string) (*datastore.Agent, error)
	DeleteAgent(ctx context.Context, spiffeID string) error
	UpdateAgent(ctx context.Context, spiffeID string, change func(*datastore.Agent) error) (*datastore.Agent, error)
}

// Join token lifetimes.
const (
	DefaultJoinTokenTTL = 10 * time.Minute
	MaxJoinTokenTTL     = 7 * 24 * time.Hour
	maxListPageSize     = 1000
)

// AdminConfig configures the admin API.
type AdminConfig struct {
	CA Authority
	// Lifecycle is the CA itself, for the key lifecycle operations.
	Lifecycle      *ca.CA
	Store          AdminStore
	DefaultSVIDTTL time.Duration
	DefaultJWTTTL  time.Duration
	// MaxSVIDTTL bounds entry and mint TTLs: the longest lifetime the CA
	// guarantees in full.
	MaxSVIDTTL    time.Duration
	AgentLiveness time.Duration // default DefaultAgentLiveness
	Federation    FederationStore
	Refresher     BundleRefresher
	// BundleRefreshHint is the bundle endpoint's refresh hint, 0 without an
	// endpoint; a new root waits PublishLeadRefreshHints of them.
	BundleRefreshHint time.Duration
	// ServerChain returns the certificate chain the server presents now
	// (leaf, intermediate): revoke and root retire refuse while it chains to
	// the key being removed.
	ServerChain func() []*x509.Certificate
	// Journal is where the CA keeps its journal, exported for `ca drill`.
	Journal interface {
		LoadCAJournal(ctx context.Context) (ca.JournalState, error)
	}
	// LeaderID names the replica that leads the cluster; nil on a single
	// server, which always leads.
	LeaderID func(ctx context.Context) (string, error)
	Clock    clock.Clock
	Logger   *slog.Logger
	// Audit records minted certificates and tokens (the other admin calls
	// are recorded by AdminAuditInterceptor); Actor names the caller.
	Audit Auditor
	Actor func(ctx context.Context) string
}

// AdminService implements the admin API.
type AdminService struct {
	adminv1.UnimplementedAdminAPIServer
	cfg   AdminConfig
	trail auditTrail
}

// NewAdminService returns the admin API.
func NewAdminService(cfg AdminConfig) *AdminService {
	if cfg.Clock == nil {
		cfg.Clock = clock.Real
	}
	if cfg.AgentLiveness == 0 {
		cfg.AgentLiveness = DefaultAgentLiveness
	}
	if cfg.MaxSVIDTTL == 0 {
		cfg.MaxSVIDTTL = MaxX509SVIDTTL
	}
	if cfg.Actor == nil {
		cfg.Actor = func(context.Context) string { return "admin" }
	}
	return &AdminService{cfg: cfg, trail: auditTrail{log: cfg.Audit, clock: cfg.Clock}}
}

// CreateEntry validates and stores a registration entry.
func (s *AdminService) CreateEntry(ctx context.Context, req *adminv1.CreateEntryRequest) (*adminv1.Entry, error) {
	e, err := entryFromProto(req.GetEntry(), s.cfg.CA.TrustDomain(), s.cfg.MaxSVIDTTL)
	if err != nil {
		return nil, err
	}
	e.ID = ""
	e.CreatedAt = s.cfg.Clock.Now()
	out, err := s.cfg.Store.CreateEntry(ctx, e)
	if err != nil {
		return nil, objectStatus(ctx, s.cfg.Logger, "create entry", "entry", e.SPIFFEID, err)
	}
	s.cfg.Logger.InfoContext(ctx, "entry created", slog.String("entry_id", out.ID), slog.String("spiffe_id", out.SPIFFEID))
	return entryToProto(out), nil
}

// GetEntry returns one entry.
func (s *AdminService) GetEntry(ctx context.Context, req *adminv1.GetEntryRequest) (*adminv1.Entry, error) {
	if req.GetId() == "" {
		return nil, invalid("id", "is required")
	}
	e, err := s.cfg.Store.GetEntry(ctx, req.GetId())
	if err != nil {
		return nil, objectStatus(ctx, s.cfg.Logger, "get entry", "entry", req.GetId(), err)
	}
	return entryToProto(e), nil
}

// UpdateEntry replaces an entry after validating it.
func (s *AdminService) UpdateEntry(ctx context.Context, req *adminv1.UpdateEntryRequest) (*adminv1.Entry, error) {
	if req.GetEntry().GetId() == "" {
		return nil, invalid("entry.id", "is required")
	}
	e, err := entryFromProto(req.GetEntry(), s.cfg.CA.TrustDomain(), s.cfg.MaxSVIDTTL)
	if err != nil {
		return nil, err
	}
	out, err := s.cfg.Store.UpdateEntry(ctx, e)
	if err != nil {
		return nil, objectStatus(ctx, s.cfg.Logger, "update entry", "entry", e.ID, err)
	}
	s.cfg.Logger.InfoContext(ctx, "entry updated", slog.String("entry_id", out.ID))
	return entryToProto(out), nil
}

// DeleteEntry removes an entry.
func (s *AdminService) DeleteEntry(ctx context.Context, req *adminv1.DeleteEntryRequest) (*adminv1.DeleteEntryResponse, error) {
	if req.GetId() == "" {
		return nil, invalid("id", "is required")
	}
	if err := s.cfg.Store.DeleteEntry(ctx, req.GetId()); err != nil {
		return nil, objectStatus(ctx, s.cfg.Logger, "delete entry", "entry", req.GetId(), err)
	}
	s.cfg.Logger.InfoContext(ctx, "entry deleted", slog.String("entry_id", req.GetId()))
	return &adminv1.DeleteEntryResponse{}, nil
}

// ListEntries pages through entries, optionally filtered by parent or SPIFFE
// ID. A parent filter reads only that parent's entries (the datastore keeps
// them by parent), so its pages are full; its page tokens are valid only
// with the same filter.
func (s *AdminService) ListEntries(ctx context.Context, req *adminv1.ListEntriesRequest) (*adminv1.ListEntriesResponse, error) {
	size := int(req.GetPageSize())
	if size < 0 || size > maxListPageSize {
		return nil, invalid("page_size", "must be between 0 and %d", maxListPageSize)
	}
	if size == 0 {
		size = maxListPageSize
	}
	resp := &adminv1.ListEntriesResponse{}
	token := req.GetPageToken()
	// The SPIFFE ID filter is applied while paging, so a page may hold
	// fewer than size.
	var entries []*datastore.Entry
	var next string
	var err error
	if parent := req.GetParentId(); parent != "" {
		entries, next, err = s.cfg.Store.ListEntriesByParent(ctx, parent, token, size)
	} else {
		entries, next, err = s.cfg.Store.ListEntries(ctx, token, size)
	}
	if err != nil {
		return nil, toStatus(ctx, s.cfg.Logger, "list entries", err)
	}
	for _, e := range entries {
		if req.GetParentId() != "" && e.ParentID != req.GetParentId() {
			continue
		}
		if req.GetSpiffeId() != "" && e.SPIFFEID != req.GetSpiffeId() {
			continue
		}
		resp.Entries = append(resp.Entries, entryToProto(e))
	}
	resp.NextPageToken = next
	return resp, nil
}

// CreateJoinToken makes a single-use join token; only its hash is stored.
func (s *AdminService) CreateJoinToken(ctx context.Context, req *adminv1.CreateJoinTokenRequest) (*adminv1.CreateJoinTokenResponse, error) {
	ttl := DefaultJoinTokenTTL
	if req.GetTtlSeconds() != 0 {
		ttl = time.Duration(req.GetTtlSeconds()) * time.Second
		if ttl < time.Second || ttl > MaxJoinTokenTTL {
			return nil, invalid("ttl", "%s is out of range (1s to %s)", ttl, MaxJoinTokenTTL)
		}
	}
	tok, err := jointoken.Generate()
	if err != nil {
		return nil, toStatus(ctx, s.cfg.Logger, "create join token", err)
	}
	agentID, err := jointoken.AgentID(s.cfg.CA.TrustDomain(), tok.ID)
	if err != nil {
		return nil, toStatus(ctx, s.cfg.Logger, "create join token", err)
	}
	expires := s.cfg.Clock.Now().Add(ttl)
	if err := s.cfg.Store.CreateJoinToken(ctx, &datastore.JoinToken{ID: tok.ID, SecretHash: tok.SecretHash, ExpiresAt: expires}); err != nil {
		return nil, toStatus(ctx, s.cfg.Logger, "create join token", err)
	}
	s.cfg.Logger.InfoContext(ctx, "join token created", slog.String("join_token_id", tok.ID), slog.Time("expires_at", expires))
	return &adminv1.CreateJoinTokenResponse{Token: tok.String(), TokenId: tok.ID, AgentId: agentID.String(), ExpiresAt: expires.Unix()}, nil
}

// ListAgents returns every attested agent.
func (s *AdminService) ListAgents(ctx context.Context, _ *adminv1.ListAgentsRequest) (*adminv1.ListAgentsResponse, error) {
	agents, err := s.cfg.Store.ListAgents(ctx)
	if err != nil {
		return nil, toStatus(ctx, s.cfg.Logger, "list agents", err)
	}
	resp := &adminv1.ListAgentsResponse{}
	for _, a := range agents {
		resp.Agents = append(resp.Agents, agentToProto(a))
	}
	return resp, nil
}

// GetAgent returns one agent.
func (s *AdminService) GetAgent(ctx context.Context, req *adminv1.GetAgentRequest) (*adminv1.Agent, error) {
	if _, err := parseAgentID("spiffe_id", req.GetSpiffeId(), s.cfg.CA.TrustDomain()); err != nil {
		return nil, err
	}
	a, err := s.cfg.Store.GetAgent(ctx, req.GetSpiffeId())
	if err != nil {
		return nil, objectStatus(ctx, s.cfg.Logger, "get agent", "agent", req.GetSpiffeId(), err)
	}
	return agentToProto(a), nil
}

// EvictAgent deletes an agent: its next call fails and it must attest again.
func (s *AdminService) EvictAgent(ctx context.Context, req *adminv1.EvictAgentRequest) (*adminv1.EvictAgentResponse, error) {
	if _, err := parseAgentID("spiffe_id", req.GetSpiffeId(), s.cfg.CA.TrustDomain()); err != nil {
		return nil, err
	}
	if err := s.cfg.Store.DeleteAgent(ctx, req.GetSpiffeId()); err != nil {
		return nil, objectStatus(ctx, s.cfg.Logger, "evict agent", "agent", req.GetSpiffeId(), err)
	}
	s.cfg.Logger.InfoContext(ctx, "agent evicted", slog.String("agent_id", req.GetSpiffeId()))
	return &adminv1.EvictAgentResponse{}, nil
}

// BanAgent cuts an agent off at its next call and refuses its attestation
// until UnbanAgent. Its record stays, marked, with no SVID accepted: unlike
// an eviction, a node that can re-attest by itself stays out.
func (s *AdminService) BanAgent(ctx context.Context, req *adminv1.BanAgentRequest) (*adminv1.Agent, error) {
	return s.setBanned(ctx, req.GetSpiffeId(), true)
}

// UnbanAgent lets a banned agent attest again; it holds no SVID the server
// accepts, so it must.
func (s *AdminService) UnbanAgent(ctx context.Context, req *adminv1.UnbanAgentRequest) (*adminv1.Agent, error) {
	return s.setBanned(ctx, req.GetSpiffeId(), false)
}

func (s *AdminService) setBanned(ctx context.Context, id string, banned bool) (*adminv1.Agent, error) {
	if _, err := parseAgentID("spiffe_id", id, s.cfg.CA.TrustDomain()); err != nil {
		return nil, err
	}
	op := map[bool]string{true: "ban agent", false: "unban agent"}[banned]
	a, err := s.cfg.Store.UpdateAgent(ctx, id, func(a *datastore.Agent) error {
		a.Banned = banned
		if banned {
			a.SerialNumber, a.NewSerialNumber = "", ""
		}
		return nil
	})
	if err != nil {
		return nil, objectStatus(ctx, s.cfg.Logger, op, "agent", id, err)
	}
	s.cfg.Logger.InfoContext(ctx, map[bool]string{true: "agent banned", false: "agent unbanned"}[banned], slog.String("agent_id", id))
	return agentToProto(a), nil
}

// GetBundle returns the trust bundle.
func (s *AdminService) GetBundle(ctx context.Context, _ *adminv1.GetBundleRequest) (*adminv1.Bundle, error) {
	out := readBundle(s.cfg.CA).adminProto()
	out.RefreshHintSeconds = int64(s.cfg.BundleRefreshHint / time.Second)
	if s.cfg.Lifecycle != nil {
		crls, err := s.cfg.Lifecycle.CRLs()
		if err != nil {
			return nil, toStatus(ctx, s.cfg.Logger, "get bundle", err)
		}
		for _, crl := range crls {
			out.Crls = append(out.Crls, crl.Raw)
		}
	}
	return out, nil
}

// MintX509SVID signs an X.509-SVID for tooling: from a CSR, or for a fresh
// P-256 key that is returned with it.
func (s *AdminService) MintX509SVID(ctx context.Context, req *adminv1.MintX509SVIDRequest) (*adminv1.MintX509SVIDResponse, error) {
	id, err := parseWorkloadID("spiffe_id", req.GetSpiffeId(), s.cfg.CA.TrustDomain())
	if err != nil {
		return nil, err
	}
	ttl, err := validateTTL("ttl", req.GetTtlSeconds(), s.cfg.MaxSVIDTTL)
	if err != nil {
		return nil, err
	}
	if ttl == 0 {
		ttl = s.cfg.DefaultSVIDTTL
	}
	if err := validateDNSNames("dns_names", req.GetDnsNames()); err != nil {
		return nil, err
	}
	resp := &adminv1.MintX509SVIDResponse{}
	var params ca.X509SVIDParams
	if len(req.GetCsr()) > 0 {
		csr, err := ca.ParseX509SVIDCSR(req.GetCsr(), id)
		if err != nil {
			return nil, toStatus(ctx, s.cfg.Logger, "mint", err)
		}
		params.PublicKey = csr.PublicKey
	} else {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, toStatus(ctx, s.cfg.Logger, "mint", err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, toStatus(ctx, s.cfg.Logger, "mint", err)
		}
		params.PublicKey = key.Public()
		resp.PrivateKey = der
	}
	params.SPIFFEID, params.TTL, params.DNSNames = id, ttl, req.GetDnsNames()
	chain, err := s.cfg.CA.SignX509SVID(params)
	if err != nil {
		return nil, toStatus(ctx, s.cfg.Logger, "mint", err)
	}
	for _, c := range chain {
		resp.CertChain = append(resp.CertChain, c.Raw)
	}
	b, _ := s.cfg.CA.Bundle()
	for _, c := range b.X509Authorities() {
		resp.Bundle = append(resp.Bundle, c.Raw)
	}
	if err := s.trail.wait(ctx, s.trail.record(certRecord(s.cfg.Actor(ctx), audit.ActionX509SVIDIssue, id.String(), chain))); err != nil {
		return nil, err
	}
	s.cfg.Logger.InfoContext(ctx, "X.509-SVID minted", slog.String("spiffe_id", id.String()), slog.String("serial", chain[0].SerialNumber.Text(16)))
	return resp, nil
}

// MintJWTSVID signs a JWT-SVID for tooling.
func (s *AdminService) MintJWTSVID(ctx context.Context, req *adminv1.MintJWTSVIDRequest) (*adminv1.MintJWTSVIDResponse, error) {
	id, err := parseWorkloadID("spiffe_id", req.GetSpiffeId(), s.cfg.CA.TrustDomain())
	if err != nil {
		return nil, err
	}
	if len(req.GetAudience()) == 0 {
		return nil, invalid("audience", "at least one audience is required")
	}
	ttl, err := validateTTL("ttl", req.GetTtlSeconds(), s.cfg.MaxSVIDTTL)
	if err != nil {
		return nil, err
	}
	if ttl == 0 {
		ttl = s.cfg.DefaultJWTTTL
	}
	now := s.cfg.Clock.Now()
	token, exp, err := s.cfg.CA.SignJWTSVID(ca.JWTSVIDParams{SPIFFEID: id, Audience: req.GetAudience(), TTL: ttl})
	if err != nil {
		return nil, toStatus(ctx, s.cfg.Logger, "mint JWT", err)
	}
	if err := s.trail.wait(ctx, s.trail.record(jwtRecord(s.cfg.Actor(ctx), id.String(), id.String(), token, req.GetAudience(), now, exp))); err != nil {
		return nil, err
	}
	s.cfg.Logger.InfoContext(ctx, "JWT-SVID minted", slog.String("spiffe_id", id.String()), slog.Time("expires_at", exp))
	return &adminv1.MintJWTSVIDResponse{Token: token, ExpiresAt: exp.Unix()}, nil
}

func agentToProto(a *datastore.Agent) *adminv1.Agent {
	return &adminv1.Agent{
		SpiffeId:        a.SPIFFEID,
		AttestationType: a.AttestationType,
		Selectors:       selectorStrings(a.Selectors),
		SerialNumber:    a.SerialNumber,
		NotAfter:        a.NotAfter.Unix(),
		CreatedAt:       a.CreatedAt.Unix(),
		LastSeen:        a.LastSeen.Unix(),
		Banned:          a.Banned,
	}
}

// errNotAdmin is returned to callers of another uid on the admin socket.
var errNotAdmin = status.Error(codes.PermissionDenied, "the admin socket accepts only the server's own uid or root")

// AdminPeerCheck refuses admin calls from any uid but allowed and root. It
// takes the caller's uid from the socket's peer credentials.
func AdminPeerCheck(uidOf func(context.Context) (uint32, bool), allowed uint32) func(context.Context) error {
	return func(ctx context.Context) error {
		uid, ok := uidOf(ctx)
		if !ok || (uid != allowed && uid != 0) {
			return errNotAdmin
		}
		return nil
	}
}
