package workloadapi

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"log/slog"
	"maps"
	"slices"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/pkg/grpcstream"
	"github.com/shortleaf/shortleaf/pkg/uds"
)

// SDS resource names, as SPIRE's agent serves them so that existing Envoy and
// Istio configurations work unchanged.
const (
	// SDSDefaultSVID is the caller's (first) X.509-SVID as a TLS certificate.
	SDSDefaultSVID = "default"
	// SDSRootCA is the own trust domain's bundle as a validation context.
	SDSRootCA = "ROOTCA"
	// SDSAll is every bundle the caller trusts, own and federated, as one
	// validation context that keeps each trust domain's bundle apart.
	SDSAll = "ALL"

	// DisableSPIFFECertValidationKey is the Envoy node-metadata switch
	// (a bool, as SPIRE reads it) that asks for plain trusted CAs instead of
	// Envoy's SPIFFE certificate validator. It applies to the own trust
	// domain's bundle only (ROOTCA and its name): ALL and federated trust
	// domains keep the validator, because a plain trusted CA list would let
	// a federated CA vouch for any SPIFFE ID, ours included.
	DisableSPIFFECertValidationKey = "disable_spiffe_cert_validation"

	secretTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
	// spiffeValidatorName names Envoy's SPIFFE certificate validator
	// extension (envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig).
	spiffeValidatorName = "envoy.tls.cert_validator.spiffe"
)

// secretOptions are what the caller's Envoy asked for in its node metadata.
type secretOptions struct {
	// plainTrustedCA sends the own trust domain's bundle as a trusted CA
	// list instead of the SPIFFE validator.
	plainTrustedCA bool
}

func optionsFor(node *corev3.Node) secretOptions {
	v := node.GetMetadata().GetFields()[DisableSPIFFECertValidationKey]
	return secretOptions{plainTrustedCA: v.GetBoolValue()}
}

// sdsServer serves Envoy's Secret Discovery Service v3 from the same source
// and attestation as the Workload API. Resource names: "default", a SPIFFE
// ID (that SVID), "ROOTCA", "ALL", and a trust domain ("spiffe://td" or
// "td") for its bundle. An empty request asks for every SVID and bundle.
//
// Bundles go out as Envoy's SPIFFE certificate validator, one bundle per
// trust domain, as SPIRE sends them: a peer's chain is checked only against
// the bundle of the trust domain in its own SPIFFE ID, so a federated CA can
// never vouch for a local ID (or another federated one).
type sdsServer struct {
	secretv3.UnimplementedSecretDiscoveryServiceServer
	s *Server
}

// RegisterSDS adds the SDS service to g.
func RegisterSDS(g *grpc.Server, s *Server) {
	secretv3.RegisterSecretDiscoveryServiceServer(g, &sdsServer{s: s})
}

func (d *sdsServer) attest(ctx context.Context) ([]attest.Selector, error) {
	cred, ok := uds.PeerFromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Internal, "caller's peer credentials are unknown")
	}
	sels, err := d.s.cfg.Attestor.Attest(ctx, cred)
	if err != nil {
		return nil, status.Error(codes.PermissionDenied, "workload attestation failed")
	}
	return sels, nil
}

// FetchSecrets answers one request.
func (d *sdsServer) FetchSecrets(ctx context.Context, req *discoveryv3.DiscoveryRequest) (resp *discoveryv3.DiscoveryResponse, err error) {
	defer func() { d.s.count("FetchSecrets", err) }()
	if err := checkTypeURL(req); err != nil {
		return nil, err
	}
	sels, err := d.attest(ctx)
	if err != nil {
		return nil, err
	}
	state, ids, _, err := d.s.matching(ctx, sels)
	if err != nil {
		return nil, err
	}
	return buildSecrets(state, ids, req.GetResourceNames(), optionsFor(req.GetNode()))
}

// StreamSecrets follows the xDS protocol: answer each new request, stay
// quiet on an ACK (a request whose nonce is the last response's), and push
// a new response whenever the requested secrets change.
func (d *sdsServer) StreamSecrets(stream grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]) (err error) {
	call := d.s.openStream("StreamSecrets")
	defer func() { call.end(err) }()
	ctx := stream.Context()
	sels, err := d.attest(ctx)
	if err != nil {
		return err
	}
	reqs, recvErr := grpcstream.Receive(ctx, stream.Recv)

	var names []string
	var opts secretOptions
	var lastVersion, lastNonce string
	subscribed := false
	_, changed := d.s.cfg.Source.Current()
	send := func() error {
		state, ids, ch, err := d.s.matching(ctx, sels)
		if err != nil {
			return err
		}
		changed = ch
		resp, err := buildSecrets(state, ids, names, opts)
		if err != nil {
			return err
		}
		if resp.GetVersionInfo() == lastVersion {
			return nil
		}
		resp.Nonce = newNonce()
		if err := stream.Send(resp); err != nil {
			return err
		}
		call.responded()
		lastVersion, lastNonce = resp.GetVersionInfo(), resp.GetNonce()
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-recvErr:
			if status.Code(err) == codes.Canceled {
				return nil
			}
			return err
		case req := <-reqs:
			if err := checkTypeURL(req); err != nil {
				return err
			}
			if req.GetResponseNonce() != "" && req.GetResponseNonce() != lastNonce {
				continue // answers an older response; the newest is on its way
			}
			if req.GetErrorDetail() != nil {
				d.s.cfg.Logger.WarnContext(ctx, "Envoy rejected secrets", slog.String("version", req.GetVersionInfo()), slog.String("error", req.GetErrorDetail().GetMessage()))
				continue
			}
			if subscribed && req.GetResponseNonce() != "" && slices.Equal(req.GetResourceNames(), names) {
				continue // an ACK
			}
			if req.GetNode() != nil { // Envoy may send its node on the first request only
				opts = optionsFor(req.GetNode())
			}
			subscribed, names, lastVersion = true, slices.Clone(req.GetResourceNames()), ""
			if err := send(); err != nil {
				return err
			}
		case <-changed:
			if !subscribed {
				_, changed = d.s.cfg.Source.Current()
				continue
			}
			if err := send(); err != nil {
				return err
			}
		}
	}
}

func checkTypeURL(req *discoveryv3.DiscoveryRequest) error {
	if t := req.GetTypeUrl(); t != "" && t != secretTypeURL {
		return status.Errorf(codes.InvalidArgument, "type_url: %q is not %s", t, secretTypeURL)
	}
	return nil
}

func newNonce() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// buildSecrets answers names from the state, for a caller with ids. Names it
// cannot serve (yet) are left out, as Envoy expects; the version is a hash of
// what is sent, so an unchanged answer is never pushed twice.
func buildSecrets(state *State, ids []*Identity, names []string, opts secretOptions) (*discoveryv3.DiscoveryResponse, error) {
	var issued []*Identity
	for _, id := range ids {
		if id.HasSVID() {
			issued = append(issued, id)
		}
	}
	bundles := map[string][]byte{state.TrustDomain.IDString(): state.BundleDER}
	for td, der := range state.federatedFor(ids, false) {
		bundles[td] = der
	}
	if len(names) == 0 {
		for _, id := range issued {
			names = append(names, id.SPIFFEID.String())
		}
		names = append(names, slices.Sorted(maps.Keys(bundles))...)
	}
	resp := &discoveryv3.DiscoveryResponse{TypeUrl: secretTypeURL}
	h := sha256.New()
	for _, name := range names {
		secret, err := secretFor(name, issued, bundles, state.TrustDomain, opts)
		if err != nil {
			return nil, err
		}
		if secret == nil {
			continue
		}
		a, err := anypb.New(secret)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "secret %s: %v", name, err)
		}
		resp.Resources = append(resp.Resources, a)
		raw, _ := proto.MarshalOptions{Deterministic: true}.Marshal(secret)
		h.Write(raw)
	}
	resp.VersionInfo = hex.EncodeToString(h.Sum(nil)[:12])
	return resp, nil
}

// secretFor builds the secret called name, or nil when the caller has
// nothing by that name (yet). bundles is keyed by trust domain ID.
func secretFor(name string, issued []*Identity, bundles map[string][]byte, own spiffeid.TrustDomain, opts secretOptions) (*tlsv3.Secret, error) {
	switch name {
	case SDSDefaultSVID:
		if len(issued) == 0 {
			return nil, nil
		}
		return tlsSecret(name, issued[0])
	case SDSRootCA:
		return trustDomainSecret(name, own.IDString(), bundles, opts.plainTrustedCA)
	case SDSAll:
		return spiffeValidatorSecret(name, slices.Sorted(maps.Keys(bundles)), bundles)
	}
	for _, id := range issued {
		if id.SPIFFEID.String() == name {
			return tlsSecret(name, id)
		}
	}
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil {
		return nil, nil //nolint:nilerr // a name that is no trust domain is a secret we do not have: left out, as Envoy expects
	}
	return trustDomainSecret(name, td.IDString(), bundles, opts.plainTrustedCA && td == own)
}

// trustDomainSecret validates peers of one trust domain (key, a trust
// domain ID) with its bundle alone.
func trustDomainSecret(name, key string, bundles map[string][]byte, plainTrustedCA bool) (*tlsv3.Secret, error) {
	der, ok := bundles[key]
	if !ok || len(der) == 0 {
		return nil, nil
	}
	if plainTrustedCA {
		return trustedCASecret(name, der)
	}
	return spiffeValidatorSecret(name, []string{key}, bundles)
}

func tlsSecret(name string, id *Identity) (*tlsv3.Secret, error) {
	certs, err := x509.ParseCertificates(id.ChainDER())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "SVID of %s: %v", id.SPIFFEID, err)
	}
	key := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: id.KeyDER})
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: inlineBytes(certificatesPEM(certs)),
		PrivateKey:       inlineBytes(key),
	}}}, nil
}

// trustedCASecret is a plain list of trusted CAs: Envoy accepts any chain
// to any of them, whatever SPIFFE ID it carries. Used only for the own
// trust domain's bundle, on the caller's request.
func trustedCASecret(name string, bundleDER []byte) (*tlsv3.Secret, error) {
	certs, err := x509.ParseCertificates(bundleDER)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "bundle %s: %v", name, err)
	}
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		TrustedCa: inlineBytes(certificatesPEM(certs)),
	}}}, nil
}

// spiffeValidatorSecret is Envoy's SPIFFE certificate validator holding
// one bundle per trust domain (keys are trust domain IDs, in order).
func spiffeValidatorSecret(name string, keys []string, bundles map[string][]byte) (*tlsv3.Secret, error) {
	cfg := &tlsv3.SPIFFECertValidatorConfig{}
	for _, key := range keys {
		td, err := spiffeid.TrustDomainFromString(key)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "bundle %s: %v", key, err)
		}
		certs, err := x509.ParseCertificates(bundles[key])
		if err != nil {
			return nil, status.Errorf(codes.Internal, "bundle %s: %v", key, err)
		}
		if len(certs) == 0 {
			continue
		}
		cfg.TrustDomains = append(cfg.TrustDomains, &tlsv3.SPIFFECertValidatorConfig_TrustDomain{
			Name:        td.Name(),
			TrustBundle: inlineBytes(certificatesPEM(certs)),
		})
	}
	if len(cfg.TrustDomains) == 0 {
		return nil, nil
	}
	typed, err := anypb.New(cfg)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "secret %s: %v", name, err)
	}
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		CustomValidatorConfig: &corev3.TypedExtensionConfig{Name: spiffeValidatorName, TypedConfig: typed},
	}}}, nil
}

func certificatesPEM(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

func inlineBytes(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}
