package workloadapi

import (
	"bytes"
	"context"
	"log/slog"
	"maps"
	"slices"
	"time"

	workload "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/pkg/telemetry"
	"github.com/shortleaf/shortleaf/pkg/uds"
)

// Config configures the Workload API server.
type Config struct {
	Source Source
	// JWT signs JWT-SVIDs; without it the JWT methods answer Unimplemented.
	JWT      JWTSource
	Attestor Attestor
	Logger   *slog.Logger
	Metrics  *telemetry.Agent
}

// Server implements SpiffeWorkloadAPI: the X.509 and JWT profiles. The
// optional WIT profile answers Unimplemented.
type Server struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	cfg Config
}

// New returns a Workload API server.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg}
}

func registerServices(g *grpc.Server, s *Server) {
	workload.RegisterSpiffeWorkloadAPIServer(g, s)
	RegisterSDS(g, s)
}

const headerKey = "workload.spiffe.io"

// checkHeader enforces the Workload API's security header.
func checkHeader(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if vals := md.Get(headerKey); len(vals) != 1 || vals[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request: workload.spiffe.io: true")
	}
	return nil
}

// attestCaller checks the header and returns the caller's selectors.
func (s *Server) attestCaller(ctx context.Context) ([]attest.Selector, error) {
	if err := checkHeader(ctx); err != nil {
		return nil, err
	}
	cred, ok := uds.PeerFromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Internal, "caller's peer credentials are unknown")
	}
	sels, err := s.cfg.Attestor.Attest(ctx, cred)
	if err != nil {
		s.cfg.Logger.WarnContext(ctx, "workload attestation failed", slog.Int("pid", int(cred.PID)), slog.Any("error", err))
		return nil, status.Error(codes.PermissionDenied, "workload attestation failed")
	}
	return sels, nil
}

// matching returns the current state for a caller with sels: Unavailable until the
// agent is ready, PermissionDenied when no entry matches.
func (s *Server) matching(ctx context.Context, sels []attest.Selector) (*State, []*Identity, <-chan struct{}, error) {
	state, changed := s.cfg.Source.Current()
	if !state.Ready {
		return nil, nil, nil, status.Error(codes.Unavailable, "agent is starting; no entries synced yet")
	}
	ids := state.match(sels)
	if len(ids) == 0 {
		return nil, nil, nil, status.Error(codes.PermissionDenied, "no identity issued")
	}
	if d, ok := s.cfg.Source.(Demand); ok {
		d.Want(ids)
	}
	return state, ids, changed, nil
}

// firstResponse returns a func that records, once, the time since start.
func (s *Server) firstResponse(method string) func() {
	start := time.Now()
	done := false
	return func() {
		if done || s.cfg.Metrics == nil {
			return
		}
		done = true
		s.cfg.Metrics.FirstResponse.WithLabelValues(method).Observe(time.Since(start).Seconds())
	}
}

// streamCall accounts for one streaming call: it is in the open-streams
// gauge while it runs and counts once in requests_total, at its first
// response (ok) or, if it never sends one, at its end (by its error). A
// stream that lives for hours is thus seen when it starts serving.
type streamCall struct {
	s       *Server
	method  string
	counted bool
	observe func()
}

func (s *Server) openStream(method string) *streamCall {
	if s.cfg.Metrics != nil {
		s.cfg.Metrics.OpenStreams.WithLabelValues(method).Inc()
	}
	return &streamCall{s: s, method: method, observe: s.firstResponse(method)}
}

// responded records that a response went out.
func (c *streamCall) responded() {
	c.observe()
	if !c.counted {
		c.counted = true
		c.s.count(c.method, nil)
	}
}

// end closes the call with its error.
func (c *streamCall) end(err error) {
	if !c.counted {
		c.counted = true
		c.s.count(c.method, err)
	}
	if c.s.cfg.Metrics != nil {
		c.s.cfg.Metrics.OpenStreams.WithLabelValues(c.method).Dec()
	}
}

func (s *Server) count(method string, err error) {
	if s.cfg.Metrics == nil {
		return
	}
	result := telemetry.ResultOK
	switch status.Code(err) {
	case codes.OK, codes.Canceled:
	case codes.PermissionDenied, codes.InvalidArgument:
		result = telemetry.ResultDenied
	default:
		result = telemetry.ResultError
	}
	s.cfg.Metrics.WorkloadRequests.WithLabelValues(method, result).Inc()
}

// FetchX509SVID streams the caller's X.509-SVIDs, again on every renewal,
// entry change or bundle change.
func (s *Server) FetchX509SVID(_ *workload.X509SVIDRequest, stream workload.SpiffeWorkloadAPI_FetchX509SVIDServer) (err error) {
	call := s.openStream("FetchX509SVID")
	defer func() { call.end(err) }()
	ctx := stream.Context()
	sels, err := s.attestCaller(ctx)
	if err != nil {
		return err
	}
	var lastSent []string
	for {
		state, ids, changed, err := s.matching(ctx, sels)
		if err != nil {
			return err
		}
		resp := &workload.X509SVIDResponse{FederatedBundles: state.federatedFor(ids, false)}
		var sent []string
		hints := map[string]bool{}
		for _, id := range ids {
			if !id.HasSVID() {
				continue // not issued yet; the change that issues it wakes us
			}
			if id.Hint != "" {
				// Hints must be unique in a response: the first identity
				// (in the source's stable order) keeps it.
				if hints[id.Hint] {
					continue
				}
				hints[id.Hint] = true
			}
			resp.Svids = append(resp.Svids, &workload.X509SVID{
				SpiffeId: id.SPIFFEID.String(), X509Svid: id.ChainDER(), X509SvidKey: id.KeyDER,
				Bundle: state.BundleDER, Hint: id.Hint,
			})
			sent = append(sent, id.Serial)
		}
		sent = append(sent, string(state.BundleDER))
		for _, td := range slices.Sorted(maps.Keys(resp.FederatedBundles)) {
			sent = append(sent, td, string(resp.FederatedBundles[td]))
		}
		if len(resp.Svids) > 0 && !slices.Equal(sent, lastSent) {
			if err := stream.Send(resp); err != nil {
				return err
			}
			call.responded()
			lastSent = sent
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil
		}
	}
}

// FetchX509Bundles streams the trust bundles the caller should trust: its
// own trust domain's and those its identities federate with.
func (s *Server) FetchX509Bundles(_ *workload.X509BundlesRequest, stream workload.SpiffeWorkloadAPI_FetchX509BundlesServer) (err error) {
	call := s.openStream("FetchX509Bundles")
	defer func() { call.end(err) }()
	return s.streamBundles(stream.Context(), call, func(state *State, ids []*Identity) map[string][]byte {
		bundles := state.federatedFor(ids, false)
		bundles[state.TrustDomain.IDString()] = state.BundleDER
		return bundles
	}, func(b map[string][]byte) error {
		return stream.Send(&workload.X509BundlesResponse{Bundles: b})
	})
}

// streamBundles attests the caller, then sends the bundles build returns at
// once and again whenever they change, until the caller leaves.
func (s *Server) streamBundles(ctx context.Context, call *streamCall, build func(*State, []*Identity) map[string][]byte, send func(map[string][]byte) error) error {
	sels, err := s.attestCaller(ctx)
	if err != nil {
		return err
	}
	var lastSent map[string][]byte
	for {
		state, ids, changed, err := s.matching(ctx, sels)
		if err != nil {
			return err
		}
		bundles := build(state, ids)
		if len(bundles) > 0 && (lastSent == nil || !maps.EqualFunc(bundles, lastSent, bytes.Equal)) {
			if err := send(bundles); err != nil {
				return err
			}
			call.responded()
			lastSent = bundles
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil
		}
	}
}
