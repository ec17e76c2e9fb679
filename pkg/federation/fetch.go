package federation

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

// Profiles of a foreign bundle endpoint.
const (
	ProfileWeb    = "https_web"
	ProfileSPIFFE = "https_spiffe"
)

// MaxBundleSize bounds a fetched bundle; a real one is a few kilobytes.
const MaxBundleSize = 1 << 20

// fetchTimeout bounds one fetch, from dial to the last byte.
const fetchTimeout = 30 * time.Second

// Relationship is how to reach a foreign trust domain's bundle endpoint.
type Relationship struct {
	TrustDomain spiffeid.TrustDomain
	URL         string
	Profile     string
	// EndpointID is the SPIFFE ID the endpoint must present (https_spiffe).
	EndpointID spiffeid.ID
	// WebRoots, if set, replace the system roots for https_web.
	WebRoots []*x509.Certificate
}

// Validate checks a relationship's fields, naming the one at fault.
func (r Relationship) Validate() error {
	if r.TrustDomain.IsZero() {
		return errors.New("trust_domain: is required")
	}
	if len(r.URL) < len("https://x") || r.URL[:8] != "https://" {
		return fmt.Errorf("bundle_endpoint_url: %q must be an https:// URL", r.URL)
	}
	switch r.Profile {
	case ProfileWeb:
	case ProfileSPIFFE:
		if r.EndpointID.IsZero() {
			return errors.New("endpoint_spiffe_id: is required for https_spiffe")
		}
	default:
		return fmt.Errorf("profile: %q is not https_web or https_spiffe", r.Profile)
	}
	return nil
}

// Fetch gets the bundle of r.TrustDomain from its endpoint. For
// https_spiffe, trusted is the latest bundle held for that trust domain (the
// bootstrap bundle at first): the endpoint's SVID must verify against it.
func Fetch(ctx context.Context, r Relationship, trusted *spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
	var tlsCfg *tls.Config
	switch r.Profile {
	case ProfileSPIFFE:
		if trusted == nil || len(trusted.X509Authorities()) == 0 {
			return nil, fmt.Errorf("federation: %s: https_spiffe needs a bootstrap bundle", r.TrustDomain)
		}
		tlsCfg = tlsconfig.TLSClientConfig(trusted, tlsconfig.AuthorizeID(r.EndpointID))
	default:
		tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12}
		if len(r.WebRoots) > 0 {
			pool := x509.NewCertPool()
			for _, c := range r.WebRoots {
				pool.AddCert(c)
			}
			tlsCfg.RootCAs = pool
		}
	}
	// One fetch per refresh hint (minutes) gains nothing from keep-alive, and
	// a transport per fetch that kept its idle connection would leave one
	// open connection per fetch: no connection outlives its fetch.
	transport := &http.Transport{TLSClientConfig: tlsCfg, Proxy: http.ProxyFromEnvironment, DisableKeepAlives: true,
		TLSHandshakeTimeout: 10 * time.Second, ResponseHeaderTimeout: 20 * time.Second, MaxResponseHeaderBytes: 64 << 10}
	defer transport.CloseIdleConnections()
	client := &http.Client{Timeout: fetchTimeout, Transport: transport}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.URL, http.NoBody)
	if err != nil {
		return nil, fmt.Errorf("federation: %s: %w", r.TrustDomain, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("federation: %s: fetch: %w", r.TrustDomain, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("federation: %s: endpoint answered %s", r.TrustDomain, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBundleSize+1))
	if err != nil {
		return nil, fmt.Errorf("federation: %s: read: %w", r.TrustDomain, err)
	}
	if len(body) > MaxBundleSize {
		return nil, fmt.Errorf("federation: %s: bundle is larger than %d bytes", r.TrustDomain, MaxBundleSize)
	}
	return Parse(r.TrustDomain, body)
}

// Parse reads a SPIFFE bundle for td and checks it belongs to td: at least
// one key, every X.509 authority a CA certificate, and any SPIFFE ID in them
// of td itself.
func Parse(td spiffeid.TrustDomain, raw []byte) (*spiffebundle.Bundle, error) {
	if len(raw) > MaxBundleSize {
		return nil, fmt.Errorf("federation: %s: bundle is larger than %d bytes", td, MaxBundleSize)
	}
	b, err := spiffebundle.Parse(td, raw)
	if err != nil {
		return nil, fmt.Errorf("federation: %s: malformed bundle: %w", td, err)
	}
	if len(b.X509Authorities()) == 0 && len(b.JWTAuthorities()) == 0 {
		return nil, fmt.Errorf("federation: %s: bundle holds no keys", td)
	}
	for _, c := range b.X509Authorities() {
		if !c.IsCA {
			return nil, fmt.Errorf("federation: %s: X.509 authority %q is not a CA certificate", td, c.Subject)
		}
		for _, u := range c.URIs {
			if id, err := spiffeid.FromURI(u); err == nil && id.TrustDomain() != td {
				return nil, fmt.Errorf("federation: %s: bundle holds an authority of trust domain %s", td, id.TrustDomain())
			}
		}
	}
	return b, nil
}

// ParsePEMCertificates reads every CERTIFICATE block of raw.
func ParsePEMCertificates(raw []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, raw = pem.Decode(raw)
		if block == nil {
			return out, nil
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}
