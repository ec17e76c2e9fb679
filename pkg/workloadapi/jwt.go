package workloadapi

import (
	"context"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"

	workload "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// Audience limits, the same the CA enforces, checked here so a bad request
// is refused at once and named.
const (
	maxAudiences      = 16
	maxAudienceLength = 512
)

// FetchJWTSVID returns a JWT-SVID for the audience, for the asked SPIFFE ID
// or for every identity of the caller.
func (s *Server) FetchJWTSVID(ctx context.Context, req *workload.JWTSVIDRequest) (resp *workload.JWTSVIDResponse, err error) {
	defer func() { s.count("FetchJWTSVID", err) }()
	defer s.firstResponse("FetchJWTSVID")()
	if err := checkHeader(ctx); err != nil {
		return nil, err
	}
	if s.cfg.JWT == nil {
		return nil, status.Error(codes.Unimplemented, "JWT-SVIDs are not served by this agent")
	}
	if len(req.GetAudience()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "audience: at least one audience is required")
	}
	if len(req.GetAudience()) > maxAudiences {
		return nil, status.Errorf(codes.InvalidArgument, "audience: %d values, more than %d", len(req.GetAudience()), maxAudiences)
	}
	for _, a := range req.GetAudience() {
		if a == "" || len(a) > maxAudienceLength {
			return nil, status.Errorf(codes.InvalidArgument, "audience: values must be 1 to %d characters", maxAudienceLength)
		}
	}
	var want spiffeid.ID
	if req.GetSpiffeId() != "" {
		if want, err = spiffeid.FromString(req.GetSpiffeId()); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "spiffe_id: %v", err)
		}
	}
	sels, err := s.attestCaller(ctx)
	if err != nil {
		return nil, err
	}
	_, ids, _, err := s.matching(ctx, sels)
	if err != nil {
		return nil, err
	}
	resp = &workload.JWTSVIDResponse{}
	hints := map[string]bool{}
	for _, id := range ids {
		if !want.IsZero() && id.SPIFFEID != want {
			continue
		}
		if id.Hint != "" {
			if hints[id.Hint] {
				continue
			}
			hints[id.Hint] = true
		}
		token, err := s.cfg.JWT.FetchJWTSVID(ctx, id.EntryID, req.GetAudience())
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "could not obtain a JWT-SVID for %s: %v", id.SPIFFEID, status.Convert(err).Message())
		}
		resp.Svids = append(resp.Svids, &workload.JWTSVID{SpiffeId: id.SPIFFEID.String(), Svid: token, Hint: id.Hint})
	}
	if len(resp.Svids) == 0 {
		return nil, status.Error(codes.PermissionDenied, "no identity issued")
	}
	return resp, nil
}

// FetchJWTBundles streams the JWT signing keys (a JWK Set per trust domain,
// own and federated), again on every change.
func (s *Server) FetchJWTBundles(_ *workload.JWTBundlesRequest, stream workload.SpiffeWorkloadAPI_FetchJWTBundlesServer) (err error) {
	call := s.openStream("FetchJWTBundles")
	defer func() { call.end(err) }()
	return s.streamBundles(stream.Context(), call, func(state *State, ids []*Identity) map[string][]byte {
		bundles := state.federatedFor(ids, true)
		if state.JWTBundleJSON != nil {
			bundles[state.TrustDomain.IDString()] = state.JWTBundleJSON
		}
		return bundles
	}, func(b map[string][]byte) error {
		return stream.Send(&workload.JWTBundlesResponse{Bundles: b})
	})
}

// ValidateJWTSVID checks a JWT-SVID against the trust domain's JWT keys and
// the audience, and returns its SPIFFE ID and claims. Any caller may ask.
func (s *Server) ValidateJWTSVID(ctx context.Context, req *workload.ValidateJWTSVIDRequest) (resp *workload.ValidateJWTSVIDResponse, err error) {
	defer func() { s.count("ValidateJWTSVID", err) }()
	if err := checkHeader(ctx); err != nil {
		return nil, err
	}
	if req.GetAudience() == "" {
		return nil, status.Error(codes.InvalidArgument, "audience: is required")
	}
	if req.GetSvid() == "" {
		return nil, status.Error(codes.InvalidArgument, "svid: is required")
	}
	state, _ := s.cfg.Source.Current()
	if !state.Ready || state.JWTBundle == nil {
		return nil, status.Error(codes.Unavailable, "agent is starting; no JWT keys synced yet")
	}
	// Tokens of federated trust domains validate against their own keys
	// only: the set keeps each trust domain's bundle apart.
	set := jwtbundle.NewSet(state.JWTBundle)
	for _, fb := range state.Federated {
		if fb.JWT != nil {
			set.Add(fb.JWT)
		}
	}
	svid, err := jwtsvid.ParseAndValidate(req.GetSvid(), set, []string{req.GetAudience()})
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "svid: %v", err)
	}
	claims, err := structpb.NewStruct(svid.Claims)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "claims: %v", err)
	}
	return &workload.ValidateJWTSVIDResponse{SpiffeId: svid.ID.String(), Claims: claims}, nil
}
