package api

import (
	"bytes"
	"context"
	"errors"
	"log/slog"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shortleaf/shortleaf/pkg/datastore"
	"github.com/shortleaf/shortleaf/pkg/federation"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// FederationStore is what federation management needs of the datastore.
type FederationStore interface {
	PutFederation(ctx context.Context, f *datastore.Federation, create bool) error
	GetFederation(ctx context.Context, td string) (*datastore.Federation, error)
	ListFederations(ctx context.Context) ([]*datastore.Federation, error)
	DeleteFederation(ctx context.Context, td string) error
	SetFederatedBundle(ctx context.Context, td string, raw []byte) error
	GetFederatedBundle(ctx context.Context, td string) ([]byte, error)
	ListFederatedBundles(ctx context.Context) ([]datastore.FederatedBundle, error)
	DeleteFederatedBundle(ctx context.Context, td string) error
}

// BundleRefresher fetches foreign bundles: at once on demand, or soon.
type BundleRefresher interface {
	Schedule(td string)
	Refresh(ctx context.Context, td string) error
}

// foreignTD parses a foreign trust domain name; the own one is refused.
func (s *AdminService) foreignTD(field, name string) (spiffeid.TrustDomain, error) {
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil || name == "" {
		return spiffeid.TrustDomain{}, invalid(field, "%q is not a valid trust domain name", name)
	}
	if td == s.cfg.CA.TrustDomain() {
		return spiffeid.TrustDomain{}, invalid(field, "%q is this server's own trust domain", name)
	}
	return td, nil
}

// parseBundle reads a foreign bundle given as SPIFFE bundle JSON or as PEM
// certificates, and checks it belongs to td.
func parseBundle(field string, td spiffeid.TrustDomain, raw []byte) (*spiffebundle.Bundle, error) {
	trimmed := bytes.TrimSpace(raw)
	if len(trimmed) > 0 && trimmed[0] != '{' {
		certs, err := federation.ParsePEMCertificates(trimmed)
		if err != nil {
			return nil, invalid(field, "PEM certificate: %v", err)
		}
		b := spiffebundle.FromX509Authorities(td, certs)
		if trimmed, err = b.Marshal(); err != nil {
			return nil, invalid(field, "%v", err)
		}
	}
	b, err := federation.Parse(td, trimmed)
	if err != nil {
		return nil, invalid(field, "%v", err)
	}
	return b, nil
}

func (s *AdminService) federationFromProto(in *adminv1.Federation) (*datastore.Federation, *spiffebundle.Bundle, error) {
	if in == nil {
		return nil, nil, invalid("federation", "is required")
	}
	td, err := s.foreignTD("federation.trust_domain", in.GetTrustDomain())
	if err != nil {
		return nil, nil, err
	}
	f := &datastore.Federation{TrustDomain: td.Name(), URL: in.GetBundleEndpointUrl(), Profile: in.GetProfile(),
		EndpointSPIFFEID: in.GetEndpointSpiffeId(), WebRootsPEM: in.GetWebRoots()}
	if _, err := federation.RelationshipOf(f); err != nil {
		return nil, nil, invalid("federation", "%v", err)
	}
	var bootstrap *spiffebundle.Bundle
	if len(in.GetBootstrapBundle()) > 0 {
		if bootstrap, err = parseBundle("federation.bootstrap_bundle", td, in.GetBootstrapBundle()); err != nil {
			return nil, nil, err
		}
	}
	return f, bootstrap, nil
}

// CreateFederation records a relationship and fetches the foreign bundle soon.
func (s *AdminService) CreateFederation(ctx context.Context, req *adminv1.CreateFederationRequest) (*adminv1.Federation, error) {
	f, bootstrap, err := s.federationFromProto(req.GetFederation())
	if err != nil {
		return nil, err
	}
	if f.Profile == federation.ProfileSPIFFE && bootstrap == nil {
		return nil, invalid("federation.bootstrap_bundle", "is required for https_spiffe: it authenticates the endpoint the first time")
	}
	if err := s.cfg.Federation.PutFederation(ctx, f, true); err != nil {
		return nil, objectStatus(ctx, s.cfg.Logger, "create federation", "federation", f.TrustDomain, err)
	}
	if bootstrap != nil {
		if err := s.storeBundle(ctx, bootstrap); err != nil {
			return nil, err
		}
	}
	s.cfg.Refresher.Schedule(f.TrustDomain)
	s.cfg.Logger.InfoContext(ctx, "federation created", slog.String("trust_domain", f.TrustDomain), slog.String("profile", f.Profile))
	return s.federationProto(ctx, f), nil
}

// UpdateFederation replaces a relationship (keeping its bundle unless a new
// bootstrap bundle is given).
func (s *AdminService) UpdateFederation(ctx context.Context, req *adminv1.UpdateFederationRequest) (*adminv1.Federation, error) {
	f, bootstrap, err := s.federationFromProto(req.GetFederation())
	if err != nil {
		return nil, err
	}
	if err := s.cfg.Federation.PutFederation(ctx, f, false); err != nil {
		return nil, objectStatus(ctx, s.cfg.Logger, "update federation", "federation", f.TrustDomain, err)
	}
	if bootstrap != nil {
		if err := s.storeBundle(ctx, bootstrap); err != nil {
			return nil, err
		}
	}
	s.cfg.Refresher.Schedule(f.TrustDomain)
	return s.federationProto(ctx, f), nil
}

// GetFederation shows one relationship and its bundle's state.
func (s *AdminService) GetFederation(ctx context.Context, req *adminv1.GetFederationRequest) (*adminv1.Federation, error) {
	f, err := s.cfg.Federation.GetFederation(ctx, req.GetTrustDomain())
	if err != nil {
		return nil, objectStatus(ctx, s.cfg.Logger, "get federation", "federation", req.GetTrustDomain(), err)
	}
	return s.federationProto(ctx, f), nil
}

// ListFederations lists every relationship.
func (s *AdminService) ListFederations(ctx context.Context, _ *adminv1.ListFederationsRequest) (*adminv1.ListFederationsResponse, error) {
	feds, err := s.cfg.Federation.ListFederations(ctx)
	if err != nil {
		return nil, toStatus(ctx, s.cfg.Logger, "list federations", err)
	}
	resp := &adminv1.ListFederationsResponse{}
	for _, f := range feds {
		resp.Federations = append(resp.Federations, s.federationProto(ctx, f))
	}
	return resp, nil
}

// DeleteFederation removes a relationship and its bundle.
func (s *AdminService) DeleteFederation(ctx context.Context, req *adminv1.DeleteFederationRequest) (*adminv1.DeleteFederationResponse, error) {
	if err := s.cfg.Federation.DeleteFederation(ctx, req.GetTrustDomain()); err != nil {
		return nil, objectStatus(ctx, s.cfg.Logger, "delete federation", "federation", req.GetTrustDomain(), err)
	}
	s.cfg.Logger.InfoContext(ctx, "federation deleted", slog.String("trust_domain", req.GetTrustDomain()))
	return &adminv1.DeleteFederationResponse{}, nil
}

// RefreshFederation fetches the foreign bundle now.
func (s *AdminService) RefreshFederation(ctx context.Context, req *adminv1.RefreshFederationRequest) (*adminv1.Federation, error) {
	if _, err := s.cfg.Federation.GetFederation(ctx, req.GetTrustDomain()); err != nil {
		return nil, objectStatus(ctx, s.cfg.Logger, "refresh federation", "federation", req.GetTrustDomain(), err)
	}
	if err := s.cfg.Refresher.Refresh(ctx, req.GetTrustDomain()); err != nil {
		return nil, status.Errorf(codes.Unavailable, "refresh of %s failed, last good bundle kept: %v", req.GetTrustDomain(), err)
	}
	return s.GetFederation(ctx, &adminv1.GetFederationRequest{TrustDomain: req.GetTrustDomain()})
}

// ListBundles returns the own bundle, then every federated one.
func (s *AdminService) ListBundles(ctx context.Context, _ *adminv1.ListBundlesRequest) (*adminv1.ListBundlesResponse, error) {
	resp := &adminv1.ListBundlesResponse{}
	own := s.cfg.Lifecycle.SPIFFEBundle(0)
	resp.Bundles = append(resp.Bundles, bundleSummary(own))
	stored, err := s.cfg.Federation.ListFederatedBundles(ctx)
	if err != nil {
		return nil, toStatus(ctx, s.cfg.Logger, "list bundles", err)
	}
	for _, fb := range stored {
		td, err := spiffeid.TrustDomainFromString(fb.TrustDomain)
		if err != nil {
			continue
		}
		if b, err := spiffebundle.Parse(td, fb.Raw); err == nil {
			resp.Bundles = append(resp.Bundles, bundleSummary(b))
		}
	}
	return resp, nil
}

// SetFederatedBundle stores a foreign bundle given by hand.
func (s *AdminService) SetFederatedBundle(ctx context.Context, req *adminv1.SetFederatedBundleRequest) (*adminv1.FederatedBundle, error) {
	td, err := s.foreignTD("trust_domain", req.GetTrustDomain())
	if err != nil {
		return nil, err
	}
	b, err := parseBundle("bundle", td, req.GetBundle())
	if err != nil {
		return nil, err
	}
	if err := s.storeBundle(ctx, b); err != nil {
		return nil, err
	}
	s.cfg.Logger.InfoContext(ctx, "federated bundle set by hand", slog.String("trust_domain", td.Name()))
	return bundleSummary(b), nil
}

// DeleteFederatedBundle removes a foreign bundle.
func (s *AdminService) DeleteFederatedBundle(ctx context.Context, req *adminv1.DeleteFederatedBundleRequest) (*adminv1.DeleteFederatedBundleResponse, error) {
	if err := s.cfg.Federation.DeleteFederatedBundle(ctx, req.GetTrustDomain()); err != nil {
		return nil, objectStatus(ctx, s.cfg.Logger, "delete federated bundle", "federated bundle", req.GetTrustDomain(), err)
	}
	return &adminv1.DeleteFederatedBundleResponse{}, nil
}

func (s *AdminService) storeBundle(ctx context.Context, b *spiffebundle.Bundle) error {
	raw, err := b.Marshal()
	if err != nil {
		return toStatus(ctx, s.cfg.Logger, "store bundle", err)
	}
	if err := s.cfg.Federation.SetFederatedBundle(ctx, b.TrustDomain().Name(), raw); err != nil {
		return toStatus(ctx, s.cfg.Logger, "store bundle", err)
	}
	return nil
}

func (s *AdminService) federationProto(ctx context.Context, f *datastore.Federation) *adminv1.Federation {
	out := &adminv1.Federation{
		TrustDomain: f.TrustDomain, BundleEndpointUrl: f.URL, Profile: f.Profile, EndpointSpiffeId: f.EndpointSPIFFEID,
		WebRoots: f.WebRootsPEM, LastError: f.LastError,
	}
	if !f.LastRefresh.IsZero() {
		out.LastRefresh = f.LastRefresh.Unix()
	}
	if raw, err := s.cfg.Federation.GetFederatedBundle(ctx, f.TrustDomain); err == nil {
		if td, err := spiffeid.TrustDomainFromString(f.TrustDomain); err == nil {
			if b, err := spiffebundle.Parse(td, raw); err == nil {
				out.BundleSequence, _ = b.SequenceNumber()
			}
		}
	} else if !errors.Is(err, datastore.ErrNotFound) {
		s.cfg.Logger.WarnContext(ctx, "federated bundle unreadable", slog.String("trust_domain", f.TrustDomain), slog.Any("error", err))
	}
	return out
}

func bundleSummary(b *spiffebundle.Bundle) *adminv1.FederatedBundle {
	raw, _ := b.Marshal()
	seq, _ := b.SequenceNumber()
	return &adminv1.FederatedBundle{TrustDomain: b.TrustDomain().Name(), Bundle: raw, Sequence: seq,
		X509Authorities: int32(len(b.X509Authorities())), JwtAuthorities: int32(len(b.JWTAuthorities()))}
}
