package api

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/pkg/audit"
	"github.com/shortleaf/shortleaf/pkg/clock"
	"github.com/shortleaf/shortleaf/pkg/datastore"
	"github.com/shortleaf/shortleaf/pkg/entryfeed"
	"github.com/shortleaf/shortleaf/pkg/ratelimit"
	"github.com/shortleaf/shortleaf/pkg/rpclimit"
	"github.com/shortleaf/shortleaf/pkg/signqueue"
	"github.com/shortleaf/shortleaf/pkg/telemetry"
	agentv1 "github.com/shortleaf/shortleaf/proto/agent/v1"
)

// Authority is what the services need of the CA.
type Authority interface {
	TrustDomain() spiffeid.TrustDomain
	SignX509SVID(ca.X509SVIDParams) ([]*x509.Certificate, error)
	Bundle() (*x509bundle.Bundle, uint64)
	TaintedKeyIDs() [][]byte
	SignJWTSVID(ca.JWTSVIDParams) (string, time.Time, error)
	JWTBundle() *jwtbundle.Bundle
}

// AgentStore is what the agent API needs of the datastore.
type AgentStore interface {
	AttestJoinToken(ctx context.Context, tokenID string, secretHash []byte, now time.Time, agent *datastore.Agent) error
	AttestAgent(ctx context.Context, agent *datastore.Agent) (*datastore.Agent, error)
	GetAgent(ctx context.Context, spiffeID string) (*datastore.Agent, error)
	UpdateAgent(ctx context.Context, spiffeID string, change func(*datastore.Agent) error) (*datastore.Agent, error)
	DeleteAgent(ctx context.Context, spiffeID string) error
	GetEntry(ctx context.Context, id string) (*datastore.Entry, error)
	ListEntriesByParent(ctx context.Context, parentID, pageToken string, pageSize int) ([]*datastore.Entry, string, error)
	GetFederatedBundle(ctx context.Context, td string) ([]byte, error)
	EntriesRevision(ctx context.Context, parentID string) (current, parent uint64, err error)
	SnapshotEntriesByParent(ctx context.Context, parentID string, pageSize int, fn func(page []*datastore.Entry) error) (uint64, error)
	RecordLastSeen(ctx context.Context, seen map[string]time.Time) (int, error)
}

// Limits of the agent API.
const (
	// MaxBatchSize is the most CSRs one BatchNewX509SVID call may carry.
	MaxBatchSize = 500
	// MaxBatchCSRBytes bounds the CSR bytes of one batch: the CA's work per
	// CSR grows with its key (an RSA-4096 CSR is four times a P-256 one), so
	// the byte total bounds the key cost of a batch as well as its size.
	MaxBatchCSRBytes = 96 << 10
	// MaxSignerKeyIDs bounds the signer key IDs an agent reports per sync;
	// an agent holds SVIDs of a handful of intermediates at most.
	MaxSignerKeyIDs = 64
	// SyncPageSize and SyncPageBytes bound one sync message: at most that
	// many entries, and that many bytes of them, far below gRPC's 4 MB
	// limit whatever the entries hold.
	SyncPageSize  = 500
	SyncPageBytes = 1 << 20
	// MaxEntryBytes bounds an entry's encoded size, so that every entry
	// fits a sync page many times over; creation refuses a larger one.
	MaxEntryBytes = 64 << 10
)

// pageEnds splits n items, item i encoding to size(i) bytes, into pages of
// at most SyncPageSize items and SyncPageBytes bytes, and returns the end
// of each page. A page holds at least one item.
func pageEnds(n int, size func(i int) int) []int {
	var ends []int
	count, bytes := 0, 0
	for i := range n {
		sz := size(i)
		if count > 0 && (count == SyncPageSize || bytes+sz > SyncPageBytes) {
			ends = append(ends, i)
			count, bytes = 0, 0
		}
		count++
		bytes += sz
	}
	if count > 0 {
		ends = append(ends, n)
	}
	return ends
}

// AgentConfig configures the agent API.
type AgentConfig struct {
	CA             Authority
	Store          AgentStore
	DefaultSVIDTTL time.Duration
	DefaultJWTTTL  time.Duration
	AgentSVIDTTL   time.Duration
	Clock          clock.Clock
	Logger         *slog.Logger
	Metrics        *telemetry.Server
	// AttestLimit bounds attestations per source address; nil: unlimited.
	AttestLimit *ratelimit.Limiter
	// SignLimit bounds the SVIDs (X.509 and JWT, the agent's own included)
	// each agent may have signed; a batch takes one token per CSR. nil:
	// unlimited.
	SignLimit *ratelimit.Limiter
	// SignQueue is where CSRs wait for a signature: bounded, most urgent
	// first, a fair share per agent. nil: each batch is signed at once on
	// its own goroutines (tests of other parts).
	SignQueue *signqueue.Queue
	// Feed pushes entry changes to Sync streams; nil: Sync is refused
	// (Unimplemented) and agents poll SyncEntries.
	Feed *entryfeed.Feed
	// NodeAttestors are the node attestors agents may use besides join
	// tokens, by type.
	NodeAttestors map[string]attest.NodeServer
	// Audit records every signature and attestation; nil: none.
	Audit Auditor
}

// AgentService implements the agent API.
type AgentService struct {
	agentv1.UnimplementedAgentAPIServer
	cfg      AgentConfig
	refusals *ratelimit.Sampler
	trail    auditTrail
	// auditRefusals samples the refusals that become audit records: one
	// per source a minute, the next one counting those left out.
	auditRefusals *ratelimit.Sampler
	seen          lastSeen
	skews         clockSkews
	signed        signedUntil
}

// refusalLogInterval is how often one source may add a line to the log about
// refused requests; the lines in between are counted, not written.
const refusalLogInterval = time.Minute

// NewAgentService returns the agent API.
func NewAgentService(cfg AgentConfig) *AgentService {
	if cfg.Clock == nil {
		cfg.Clock = clock.Real
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &AgentService{cfg: cfg, refusals: ratelimit.NewSampler(cfg.Logger, refusalLogInterval),
		trail: auditTrail{log: cfg.Audit, clock: cfg.Clock}, auditRefusals: ratelimit.NewSampler(cfg.Logger, refusalLogInterval)}
}

// auditRefusal records a refused call whose caller is not (or no longer) an
// agent in good standing, sampled per peer: a refused agent retries.
func (s *AgentService) auditRefusal(ctx context.Context, action, object string, err error) {
	actor := peerActor(ctx)
	suppressed, ok := s.auditRefusals.Take(s.cfg.Clock.Now(), action+"|"+actor)
	if !ok {
		return
	}
	r := refusalRecord(actor, action, object, err)
	r.Details = map[string]string{"source": peerIP(ctx)}
	if suppressed > 0 {
		r.Details["suppressed_since_last"] = fmt.Sprint(suppressed)
	}
	s.trail.record(r)
}

// refuse counts and logs (sampled per key) a request refused by a limit.
func (s *AgentService) refuse(ctx context.Context, reason, key string, err error) error {
	s.cfg.Metrics.Refusals.WithLabelValues(reason).Inc()
	s.refusals.Warn(ctx, s.cfg.Clock.Now(), reason+"|"+key, "request refused", slog.String("reason", reason), slog.String("caller", key), slog.Any("error", err))
	return err
}

// takeSigning takes n signing tokens from the agent's bucket.
func (s *AgentService) takeSigning(ctx context.Context, agentID spiffeid.ID, n int) error {
	if s.cfg.SignLimit.Allow(agentID.String(), s.cfg.Clock.Now(), n) {
		return nil
	}
	return s.refuse(ctx, "signing_rate", agentID.String(), retryLater(s.cfg.SignLimit.RetryAfter(n),
		"signing rate limit for %s exceeded (%s SVIDs per agent); retry later", agentID, s.cfg.SignLimit.Describe()))
}

// retryLater is a RESOURCE_EXHAUSTED status with a google.rpc.RetryInfo
// detail saying when to ask again.
func retryLater(after time.Duration, format string, args ...any) error {
	st := status.Newf(codes.ResourceExhausted, format, args...)
	if withInfo, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(after)}); err == nil {
		st = withInfo
	}
	return st.Err()
}

// RetryAfter reads the google.rpc.RetryInfo detail of a refusal made by
// retryLater; false without one.
func RetryAfter(st *status.Status) (time.Duration, bool) {
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay() != nil {
			return ri.GetRetryDelay().AsDuration(), true
		}
	}
	return 0, false
}

// RenewAgent issues a fresh agent SVID to an attested agent.
func (s *AgentService) RenewAgent(ctx context.Context, req *agentv1.RenewAgentRequest) (*agentv1.RenewAgentResponse, error) {
	agentID, agent, err := s.callerAgent(ctx)
	if err != nil {
		s.cfg.Metrics.AgentRenewals.WithLabelValues(telemetry.ResultDenied).Inc()
		s.auditRefusal(ctx, audit.ActionAgentRenew, "", err)
		return nil, err
	}
	if err := s.takeSigning(ctx, agentID, 1); err != nil {
		return nil, err
	}
	csr, err := ca.ParseX509SVIDCSR(req.GetCsr(), agentID)
	if err != nil {
		s.cfg.Metrics.AgentRenewals.WithLabelValues(telemetry.ResultBad).Inc()
		return nil, toStatus(ctx, s.cfg.Logger, "renew agent", err)
	}
	svid, err := s.signAgentSVID(ctx, agent, csr, true)
	if err != nil {
		s.cfg.Metrics.AgentRenewals.WithLabelValues(telemetry.ResultError).Inc()
		s.auditRefusal(ctx, audit.ActionAgentRenew, agentID.String(), err)
		return nil, err
	}
	s.cfg.Metrics.AgentRenewals.WithLabelValues(telemetry.ResultOK).Inc()
	return &agentv1.RenewAgentResponse{Svid: svid}, nil
}

// signAgentSVID signs an agent SVID. At attestation it becomes the agent's
// serial at once; at renewal it is recorded as the new serial, promoted on
// first use (see datastore.Agent). It returns once the signature is in the
// audit log.
func (s *AgentService) signAgentSVID(ctx context.Context, agent *datastore.Agent, csr *x509.CertificateRequest, renewal bool) (*agentv1.X509SVID, error) {
	id, err := spiffeid.FromString(agent.SPIFFEID)
	if err != nil {
		return nil, toStatus(ctx, s.cfg.Logger, "sign agent SVID", err)
	}
	chain, err := s.cfg.CA.SignX509SVID(ca.X509SVIDParams{PublicKey: csr.PublicKey, SPIFFEID: id, TTL: s.cfg.AgentSVIDTTL})
	if err != nil {
		return nil, toStatus(ctx, s.cfg.Logger, "sign agent SVID", err)
	}
	serial := chain[0].SerialNumber.Text(16)
	now := s.cfg.Clock.Now()
	_, err = s.cfg.Store.UpdateAgent(ctx, agent.SPIFFEID, func(a *datastore.Agent) error {
		if renewal {
			a.NewSerialNumber = serial
		} else {
			a.SerialNumber, a.NewSerialNumber = serial, ""
		}
		a.NotAfter, a.LastSeen = chain[0].NotAfter, now
		return nil
	})
	if err != nil {
		if errors.Is(err, datastore.ErrNotFound) {
			return nil, status.Error(codes.PermissionDenied, "agent was evicted; attest again")
		}
		return nil, toStatus(ctx, s.cfg.Logger, "record agent SVID", err)
	}
	rec := certRecord(agent.SPIFFEID, audit.ActionAgentAttest, agent.SPIFFEID, chain)
	rec.Details = map[string]string{"attestor": agent.AttestationType, "source": peerIP(ctx)}
	if renewal {
		rec.Action, rec.Details = audit.ActionAgentRenew, nil
	}
	if err := s.trail.wait(ctx, s.trail.record(rec)); err != nil {
		return nil, err
	}
	return svidProto(id, chain), nil
}

// callerAgent authenticates the caller by its agent SVID, on every call: the
// chain was verified against the bundle at the handshake, but a connection
// outlives certificates, so the validity period is checked again now, and
// the SVID must be the latest the server issued to that agent (or the one
// before, until the latest is first used).
func (s *AgentService) callerAgent(ctx context.Context) (spiffeid.ID, *datastore.Agent, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, nil, status.Error(codes.Unauthenticated, "no peer information")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return spiffeid.ID{}, nil, status.Error(codes.Unauthenticated, "an agent SVID is required as client certificate")
	}
	leaf := info.State.PeerCertificates[0]
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return spiffeid.ID{}, nil, status.Errorf(codes.Unauthenticated, "client certificate is not an SVID: %v", err)
	}
	if !ca.IsAgentID(id, s.cfg.CA.TrustDomain()) {
		return spiffeid.ID{}, nil, status.Errorf(codes.PermissionDenied, "%s is not an agent of this trust domain", id)
	}
	now := s.cfg.Clock.Now()
	for _, c := range info.State.PeerCertificates {
		if now.Before(c.NotBefore) || now.After(c.NotAfter) {
			return spiffeid.ID{}, nil, status.Errorf(codes.Unauthenticated,
				"the connection's certificate %s is outside its validity (%s to %s); reconnect with a current agent SVID",
				c.SerialNumber.Text(16), c.NotBefore.Format(time.RFC3339), c.NotAfter.Format(time.RFC3339))
		}
	}
	agent, err := s.cfg.Store.GetAgent(ctx, id.String())
	if errors.Is(err, datastore.ErrNotFound) {
		return spiffeid.ID{}, nil, status.Errorf(codes.PermissionDenied, "agent %s is not attested (evicted?); attest again", id)
	}
	if err != nil {
		return spiffeid.ID{}, nil, toStatus(ctx, s.cfg.Logger, "authenticate agent", err)
	}
	if agent.Banned {
		return spiffeid.ID{}, nil, status.Errorf(codes.PermissionDenied, "agent %s is banned", id)
	}
	switch serial := leaf.SerialNumber.Text(16); serial {
	case agent.SerialNumber:
	case agent.NewSerialNumber:
		agent, err = s.cfg.Store.UpdateAgent(ctx, id.String(), func(a *datastore.Agent) error {
			// Promote only the serial that was read: a renewal made since
			// has recorded a newer one, which must stay acceptable.
			if a.NewSerialNumber == serial {
				a.SerialNumber, a.NewSerialNumber = serial, ""
			}
			return nil
		})
		if errors.Is(err, datastore.ErrNotFound) {
			return spiffeid.ID{}, nil, status.Errorf(codes.PermissionDenied, "agent %s is not attested (evicted?); attest again", id)
		}
		if err != nil {
			return spiffeid.ID{}, nil, toStatus(ctx, s.cfg.Logger, "authenticate agent", err)
		}
		if agent.SerialNumber != serial {
			return spiffeid.ID{}, nil, status.Errorf(codes.PermissionDenied,
				"agent SVID %s is not the latest issued to %s; a superseded or copied SVID cannot be used", serial, id)
		}
	default:
		s.refusals.Warn(ctx, now, "stale_serial|"+id.String(), "agent presented an SVID that is not its latest (a copied key, or a superseded SVID)",
			slog.String("agent_id", id.String()), slog.String("serial", serial), slog.String("latest", agent.SerialNumber))
		return spiffeid.ID{}, nil, status.Errorf(codes.PermissionDenied,
			"agent SVID %s is not the latest issued to %s; a superseded or copied SVID cannot be used", serial, id)
	}
	return id, agent, nil
}

// recordReport records what a sync reports of the agent. What the
// propagation gate and revoke decide on (the bundle it holds, the keys that
// signed its SVIDs) is written now; a sync that moves only the time is kept
// in memory and written in the next batch (RunLastSeenFlusher).
func (s *AgentService) recordReport(ctx context.Context, agentID spiffeid.ID, agent *datastore.Agent, r syncReport) error {
	bundleSeq, signerKeyIDs := r.GetBundleSequence(), r.GetSignerKeyIds()
	s.skews.observe(ctx, s, agentID.String(), r.GetAgentTimeUnixMs())
	if n := len(signerKeyIDs); n > MaxSignerKeyIDs {
		return s.refuse(ctx, "batch_limit", agentID.String(), invalid("signer_key_ids", "has %d key IDs, more than the limit of %d", n, MaxSignerKeyIDs))
	}
	signers := make([]string, 0, len(signerKeyIDs))
	for _, id := range signerKeyIDs {
		signers = append(signers, hex.EncodeToString(id))
	}
	slices.Sort(signers)
	now := s.cfg.Clock.Now()
	if agent.BundleSequence != bundleSeq || !slices.Equal(agent.SignerKeyIDs, signers) {
		_, err := s.cfg.Store.UpdateAgent(ctx, agentID.String(), func(a *datastore.Agent) error {
			a.LastSeen, a.BundleSequence, a.SignerKeyIDs = now, bundleSeq, signers
			return nil
		})
		if err != nil {
			return toStatus(ctx, s.cfg.Logger, "sync", err)
		}
	} else {
		s.seen.record(agentID.String(), now)
	}
	return nil
}

// SyncEntries streams the caller's entries page by page; the last message
// carries the bundle.
func (s *AgentService) SyncEntries(req *agentv1.SyncEntriesRequest, stream agentv1.AgentAPI_SyncEntriesServer) error {
	ctx := stream.Context()
	agentID, agent, err := s.callerAgent(ctx)
	if err != nil {
		return err
	}
	if err := s.recordReport(ctx, agentID, agent, req); err != nil {
		return err
	}
	parents, err := s.parents(ctx, agentID, agent)
	if err != nil {
		return toStatus(ctx, s.cfg.Logger, "sync", err)
	}
	// Read the revision before listing: a change made while listing raises
	// the parent's revision above it, so the next sync is complete again.
	// An alias entry's change (under the server's ID) counts too: it may
	// change the aliases the agent belongs to.
	current, latest, err := s.revisions(ctx, s.syncParents(parents))
	if err != nil {
		return toStatus(ctx, s.cfg.Logger, "sync", err)
	}
	if rev := req.GetEntriesRevision(); rev != 0 && rev >= latest && rev <= current {
		msg := &agentv1.SyncEntriesResponse{Unchanged: true, EntriesRevision: current}
		if err := s.finishSync(ctx, msg, req.GetFederatedTrustDomains()); err != nil {
			return err
		}
		return stream.Send(msg)
	}
	// Pages of entries, parent after parent, then a last message with the
	// revision, the bundle and the rest of the sync state.
	federated := map[string]bool{}
	for _, parent := range parents {
		token := ""
		for {
			entries, next, err := s.cfg.Store.ListEntriesByParent(ctx, parent, token, SyncPageSize)
			if err != nil {
				return toStatus(ctx, s.cfg.Logger, "sync", err)
			}
			page := make([]*agentv1.Entry, len(entries))
			for i, e := range entries {
				page[i] = s.agentEntryProto(e)
				for _, td := range e.FederatesWith {
					federated[td] = true
				}
			}
			start := 0
			for _, end := range pageEnds(len(page), func(i int) int { return proto.Size(page[i]) }) {
				if err := stream.Send(&agentv1.SyncEntriesResponse{Entries: page[start:end], More: true}); err != nil {
					return err
				}
				start = end
			}
			if next == "" {
				break
			}
			token = next
		}
	}
	msg := &agentv1.SyncEntriesResponse{EntriesRevision: current}
	if err := s.finishSync(ctx, msg, slices.Collect(maps.Keys(federated))); err != nil {
		return err
	}
	return stream.Send(msg)
}

// finishSync fills the last SyncEntries message from syncState.
func (s *AgentService) finishSync(ctx context.Context, msg *agentv1.SyncEntriesResponse, federated []string) error {
	st, err := s.syncState(ctx, federated)
	if err != nil {
		return err
	}
	msg.Bundle, msg.TaintedKeyIds, msg.FederatedBundles = st.GetBundle(), st.GetTaintedKeyIds(), st.GetFederatedBundles()
	return nil
}

// syncState is what every sync answer carries: the bundle, tainted keys and
// the bundles of the foreign trust domains the agent's entries federate with.
func (s *AgentService) syncState(ctx context.Context, federated []string) (*agentv1.SyncState, error) {
	st := &agentv1.SyncState{Bundle: s.bundleProto(), TaintedKeyIds: s.cfg.CA.TaintedKeyIDs()}
	for _, td := range federated {
		raw, err := s.cfg.Store.GetFederatedBundle(ctx, td)
		if errors.Is(err, datastore.ErrNotFound) {
			continue // not fetched yet; a later sync brings it
		}
		if err != nil {
			return nil, toStatus(ctx, s.cfg.Logger, "sync", err)
		}
		st.FederatedBundles = append(st.FederatedBundles, &agentv1.FederatedBundle{TrustDomain: td, Bundle: raw})
	}
	return st, nil
}

// BatchNewX509SVID signs each CSR whose entry is parented to the caller. Each
// request gets its own result; one bad CSR does not fail the batch.
func (s *AgentService) BatchNewX509SVID(ctx context.Context, req *agentv1.BatchNewX509SVIDRequest) (*agentv1.BatchNewX509SVIDResponse, error) {
	defer telemetry.ObserveSince(s.cfg.Metrics.BatchDuration, time.Now())
	agentID, agent, err := s.callerAgent(ctx)
	if err != nil {
		s.cfg.Metrics.SVIDsIssued.WithLabelValues(telemetry.ResultDenied).Add(float64(len(req.GetParams())))
		s.auditRefusal(ctx, audit.ActionX509SVIDIssue, fmt.Sprintf("%d entries", len(req.GetParams())), err)
		return nil, err
	}
	if err := checkBatch(req.GetParams()); err != nil {
		return nil, s.refuse(ctx, "batch_limit", agentID.String(), err)
	}
	if err := s.takeSigning(ctx, agentID, len(req.GetParams())); err != nil {
		return nil, err
	}
	parents, err := s.parents(ctx, agentID, agent)
	if err != nil {
		return nil, toStatus(ctx, s.cfg.Logger, "new X509-SVID", err)
	}
	params := req.GetParams()
	results := make([]*agentv1.BatchNewX509SVIDResult, len(params))
	tickets := make([]uint64, len(params))
	jobs := make([]*signqueue.Job, len(params))
	for i, p := range params {
		jobs[i] = &signqueue.Job{Urgency: s.urgency(p), Run: func() { results[i], tickets[i] = s.newX509SVID(ctx, agentID, parents, p) }}
	}
	s.runSigning(ctx, agentID, jobs)
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	// One wait for the whole batch: the records are written in order, so
	// the last ticket's commit covers them all.
	if err := s.trail.wait(ctx, slices.Max(append(tickets, 0))); err != nil {
		return nil, err
	}
	// The hint is taken now, not when the work was shed: the answer comes
	// only once the batch's admitted work is signed, and by then the queue
	// may have drained. A batch with nothing shed does not ask for one.
	var retry time.Duration
	shed := 0
	for i, j := range jobs {
		if sh := j.Shed(); sh != nil {
			if shed == 0 && s.cfg.SignQueue != nil {
				retry = s.cfg.SignQueue.RetryAfter()
			}
			shed++
			sh.RetryAfter = retry
			results[i] = &agentv1.BatchNewX509SVIDResult{EntryId: params[i].GetEntryId(), StatusCode: int32(codes.ResourceExhausted),
				StatusMessage: sh.Error(), RetryAfterMs: sh.RetryAfter.Milliseconds()}
		}
	}
	if shed > 0 && shed == len(jobs) {
		return nil, s.refuse(ctx, "signing_queue", agentID.String(), retryLater(retry,
			"the signing queue cannot take these %d CSRs now (%s); retry after %s", shed, jobs[0].Shed().Reason, retry.Round(time.Millisecond)))
	}
	return &agentv1.BatchNewX509SVIDResponse{Results: results, ServerBusy: s.cfg.SignQueue != nil && s.cfg.SignQueue.Busy()}, nil
}

// urgency orders a CSR in the signing queue: the NotAfter of the SVID it
// replaces, the zero time (first of all) when the agent holds none. The
// agent's word is checked against the last SVID this server signed for the
// entry: an agent that claims to hold nothing, or an older SVID, to get
// ahead of the others is ordered by what it was given.
func (s *AgentService) urgency(p *agentv1.NewX509SVIDParams) time.Time {
	n := max(p.GetCurrentNotAfter(), s.signed.get(p.GetEntryId()))
	if n > 0 {
		return time.Unix(n, 0)
	}
	return time.Time{}
}

// runSigning runs a batch's jobs through the signing queue, or, without
// one, at once spread over the cores.
func (s *AgentService) runSigning(ctx context.Context, agentID spiffeid.ID, jobs []*signqueue.Job) {
	if s.cfg.SignQueue != nil {
		s.cfg.SignQueue.Do(ctx, agentID.String(), jobs)
		return
	}
	var g errgroup.Group
	g.SetLimit(runtime.GOMAXPROCS(0))
	for _, j := range jobs {
		g.Go(func() error { j.Run(); return nil })
	}
	_ = g.Wait()
}

// checkBatch applies the batch limits before any CSR is parsed: the count,
// the CSR bytes, and one request per entry (two CSRs for one entry would
// only double the work).
func checkBatch(params []*agentv1.NewX509SVIDParams) error {
	if len(params) > MaxBatchSize {
		return invalid("params", "has %d requests, more than the limit of %d", len(params), MaxBatchSize)
	}
	total := 0
	seen := make(map[string]bool, len(params))
	for i, p := range params {
		total += len(p.GetCsr())
		if seen[p.GetEntryId()] {
			return invalid(fmt.Sprintf("params[%d].entry_id", i), "%q is requested twice in one batch", p.GetEntryId())
		}
		seen[p.GetEntryId()] = true
	}
	if total > MaxBatchCSRBytes {
		return invalid("params", "CSRs total %d bytes, more than the limit of %d per batch", total, MaxBatchCSRBytes)
	}
	return nil
}

// newX509SVID signs one CSR of a batch and records the outcome in the audit
// log, returning the record's ticket.
func (s *AgentService) newX509SVID(ctx context.Context, agentID spiffeid.ID, parents []string, p *agentv1.NewX509SVIDParams) (*agentv1.BatchNewX509SVIDResult, uint64) {
	start := time.Now()
	res := &agentv1.BatchNewX509SVIDResult{EntryId: p.GetEntryId()}
	fail := func(result string, err error) (*agentv1.BatchNewX509SVIDResult, uint64) {
		s.cfg.Metrics.SVIDsIssued.WithLabelValues(result).Inc()
		st := status.Convert(err)
		res.StatusCode, res.StatusMessage = int32(st.Code()), st.Message()
		return res, s.trail.record(refusalRecord(agentID.String(), audit.ActionX509SVIDIssue, p.GetEntryId(), err))
	}
	entry, err := s.cfg.Store.GetEntry(ctx, p.GetEntryId())
	if errors.Is(err, datastore.ErrNotFound) || (err == nil && !slices.Contains(parents, entry.ParentID)) {
		// The same answer for "no such entry" and "not yours": an agent learns
		// nothing about other agents' entries.
		return fail(telemetry.ResultDenied, status.Errorf(codes.PermissionDenied, "entry %q is not authorized for %s", p.GetEntryId(), agentID))
	}
	if err != nil {
		return fail(telemetry.ResultError, toStatus(ctx, s.cfg.Logger, "get entry", err))
	}
	id, err := spiffeid.FromString(entry.SPIFFEID)
	if err != nil {
		return fail(telemetry.ResultError, toStatus(ctx, s.cfg.Logger, "parse entry ID", err))
	}
	csr, err := ca.ParseX509SVIDCSR(p.GetCsr(), id)
	if err != nil {
		return fail(telemetry.ResultBad, toStatus(ctx, s.cfg.Logger, "new X509-SVID", err))
	}
	ttl := entry.X509SVIDTTL
	if ttl == 0 {
		ttl = s.cfg.DefaultSVIDTTL
	}
	chain, err := s.cfg.CA.SignX509SVID(ca.X509SVIDParams{PublicKey: csr.PublicKey, SPIFFEID: id, DNSNames: entry.DNSNames, TTL: ttl})
	if err != nil {
		return fail(telemetry.ResultError, toStatus(ctx, s.cfg.Logger, "sign X509-SVID", err))
	}
	s.cfg.Metrics.SVIDsIssued.WithLabelValues(telemetry.ResultOK).Inc()
	telemetry.ObserveSince(s.cfg.Metrics.SignDuration, start)
	s.signed.put(entry.ID, chain[0].NotAfter, s.cfg.Clock.Now())
	res.Svid = svidProto(id, chain)
	return res, s.trail.record(certRecord(agentID.String(), audit.ActionX509SVIDIssue, entry.ID, chain))
}

// NewJWTSVID signs a JWT-SVID for an entry parented to the caller.
func (s *AgentService) NewJWTSVID(ctx context.Context, req *agentv1.NewJWTSVIDRequest) (*agentv1.NewJWTSVIDResponse, error) {
	agentID, agent, err := s.callerAgent(ctx)
	if err != nil {
		s.auditRefusal(ctx, audit.ActionJWTSVIDIssue, req.GetEntryId(), err)
		return nil, err
	}
	if err := s.takeSigning(ctx, agentID, 1); err != nil {
		return nil, err
	}
	resp, err := s.newJWTSVID(ctx, agentID, agent, req)
	if err != nil {
		s.trail.record(refusalRecord(agentID.String(), audit.ActionJWTSVIDIssue, req.GetEntryId(), err))
	}
	return resp, err
}

func (s *AgentService) newJWTSVID(ctx context.Context, agentID spiffeid.ID, agent *datastore.Agent, req *agentv1.NewJWTSVIDRequest) (*agentv1.NewJWTSVIDResponse, error) {
	parents, err := s.parents(ctx, agentID, agent)
	if err != nil {
		return nil, toStatus(ctx, s.cfg.Logger, "new JWT-SVID", err)
	}
	entry, err := s.cfg.Store.GetEntry(ctx, req.GetEntryId())
	if errors.Is(err, datastore.ErrNotFound) || (err == nil && !slices.Contains(parents, entry.ParentID)) {
		return nil, status.Errorf(codes.PermissionDenied, "entry %q is not authorized for %s", req.GetEntryId(), agentID)
	}
	if err != nil {
		return nil, toStatus(ctx, s.cfg.Logger, "new JWT-SVID", err)
	}
	id, err := spiffeid.FromString(entry.SPIFFEID)
	if err != nil {
		return nil, toStatus(ctx, s.cfg.Logger, "new JWT-SVID", err)
	}
	ttl := entry.JWTSVIDTTL
	if ttl == 0 {
		ttl = s.cfg.DefaultJWTTTL
	}
	now := s.cfg.Clock.Now()
	token, exp, err := s.cfg.CA.SignJWTSVID(ca.JWTSVIDParams{SPIFFEID: id, Audience: req.GetAudience(), TTL: ttl})
	if err != nil {
		return nil, toStatus(ctx, s.cfg.Logger, "new JWT-SVID", err)
	}
	ticket := s.trail.record(jwtRecord(agentID.String(), entry.ID, id.String(), token, req.GetAudience(), now, exp))
	if err := s.trail.wait(ctx, ticket); err != nil {
		return nil, err
	}
	return &agentv1.NewJWTSVIDResponse{Token: token, ExpiresAt: exp.Unix()}, nil
}

func (s *AgentService) agentEntryProto(e *datastore.Entry) *agentv1.Entry {
	sels := make([]*agentv1.Selector, len(e.Selectors))
	for i, sel := range e.Selectors {
		sels[i] = &agentv1.Selector{Type: sel.Type, Value: sel.Value}
	}
	ttl := e.X509SVIDTTL
	if ttl == 0 {
		ttl = s.cfg.DefaultSVIDTTL
	}
	jwtTTL := e.JWTSVIDTTL
	if jwtTTL == 0 {
		jwtTTL = s.cfg.DefaultJWTTTL
	}
	return &agentv1.Entry{
		JwtSvidTtlSeconds:  int32(jwtTTL / time.Second),
		Id:                 e.ID,
		SpiffeId:           e.SPIFFEID,
		Selectors:          sels,
		X509SvidTtlSeconds: int32(ttl / time.Second),
		DnsNames:           e.DNSNames,
		Hint:               e.Hint,
		Revision:           e.Revision,
		FederatesWith:      e.FederatesWith,
	}
}

func (s *AgentService) bundleProto() *agentv1.Bundle {
	return readBundle(s.cfg.CA).agentProto()
}

// peerIP is the caller's IP address, the key of per-source limits.
func peerIP(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "unknown"
	}
	return rpclimit.HostOf(p.Addr)
}

// peerActor names a caller that may not be an agent in good standing: the
// SPIFFE ID of its client certificate, or its address.
func peerActor(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok {
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(info.State.PeerCertificates) > 0 {
			if id, err := x509svid.IDFromCert(info.State.PeerCertificates[0]); err == nil {
				return id.String()
			}
		}
	}
	return peerIP(ctx)
}

func svidProto(id spiffeid.ID, chain []*x509.Certificate) *agentv1.X509SVID {
	out := &agentv1.X509SVID{SpiffeId: id.String(), ExpiresAt: chain[0].NotAfter.Unix()}
	for _, c := range chain {
		out.CertChain = append(out.CertChain, c.Raw)
	}
	return out
}
