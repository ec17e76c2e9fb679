package k8spsat

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/shortleaf/shortleaf/attest"
)

// signatureAlgorithms are those Kubernetes signs service-account tokens
// with.
var signatureAlgorithms = []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.ES256, jose.ES384, jose.ES512, jose.PS256}

// kubernetesClaims is the "kubernetes.io" claim of a projected token.
type kubernetesClaims struct {
	Namespace      string `json:"namespace"`
	ServiceAccount struct {
		Name string `json:"name"`
		UID  string `json:"uid"`
	} `json:"serviceaccount"`
	Pod *struct {
		Name string `json:"name"`
		UID  string `json:"uid"`
	} `json:"pod"`
	Node *struct {
		Name string `json:"name"`
		UID  string `json:"uid"`
	} `json:"node"`
}

// OfflineValidator validates tokens against the cluster's service-account
// issuer keys, without calling the cluster: for a server outside it.
type OfflineValidator struct {
	// Issuer is the iss claim tokens must carry.
	Issuer string
	keys   func(ctx context.Context, refresh bool) (*jose.JSONWebKeySet, error)
}

// NewJWKSFileValidator validates with the JWKS in path (the cluster's
// /openid/v1/jwks), read now.
func NewJWKSFileValidator(issuer, path string) (*OfflineValidator, error) {
	raw, err := os.ReadFile(path) //nolint:gosec // the operator-configured JWKS file
	if err != nil {
		return nil, err
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(raw, &set); err != nil {
		return nil, fmt.Errorf("%s: not a JWKS: %w", path, err)
	}
	if len(set.Keys) == 0 {
		return nil, fmt.Errorf("%s: the JWKS holds no key", path)
	}
	return &OfflineValidator{Issuer: issuer, keys: func(context.Context, bool) (*jose.JSONWebKeySet, error) { return &set, nil }}, nil
}

// NewDiscoveryValidator validates with the keys OIDC discovery finds at
// issuerURL (issuerURL/.well-known/openid-configuration, then its
// jwks_uri), fetched at first use and again when a token names a key not
// held, at most every refreshInterval.
func NewDiscoveryValidator(issuerURL string, client *http.Client) *OfflineValidator {
	d := &discovery{issuer: strings.TrimSuffix(issuerURL, "/"), client: client}
	return &OfflineValidator{Issuer: issuerURL, keys: d.get}
}

// refreshInterval bounds how often discovery is asked again: a flood of
// tokens naming unknown keys costs one fetch per interval.
const refreshInterval = 30 * time.Second

type discovery struct {
	issuer string
	client *http.Client
	mu     sync.Mutex
	set    *jose.JSONWebKeySet
	at     time.Time
}

func (d *discovery) get(ctx context.Context, refresh bool) (*jose.JSONWebKeySet, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.set != nil && (!refresh || now().Sub(d.at) < refreshInterval) {
		return d.set, nil
	}
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := d.fetch(ctx, d.issuer+"/.well-known/openid-configuration", &doc); err != nil {
		return d.set, err
	}
	if doc.Issuer != d.issuer || !strings.HasPrefix(doc.JWKSURI, "https://") {
		return d.set, fmt.Errorf("OIDC discovery at %s names issuer %q and jwks_uri %q (want issuer %q and an https jwks_uri)", d.issuer, doc.Issuer, doc.JWKSURI, d.issuer)
	}
	var set jose.JSONWebKeySet
	if err := d.fetch(ctx, doc.JWKSURI, &set); err != nil {
		return d.set, err
	}
	d.set, d.at = &set, now()
	return d.set, nil
}

func (d *discovery) fetch(ctx context.Context, url string, into any) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	client := d.client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(into)
}

// Validate implements Validator.
func (v *OfflineValidator) Validate(ctx context.Context, token, audience string) (*Identity, error) {
	tok, err := jwt.ParseSigned(token, signatureAlgorithms)
	if err != nil {
		return nil, attest.Malformed("k8s_psat: token: %v", err)
	}
	if len(tok.Headers) != 1 {
		return nil, attest.Malformed("k8s_psat: token has %d signatures, want 1", len(tok.Headers))
	}
	kid := tok.Headers[0].KeyID
	set, err := v.keys(ctx, false)
	if err != nil && set == nil {
		return nil, fmt.Errorf("k8s_psat: the issuer's keys: %w", err)
	}
	keys := set.Key(kid)
	if len(keys) == 0 {
		set, err = v.keys(ctx, true)
		if set != nil {
			keys = set.Key(kid)
		}
		if len(keys) == 0 && err != nil {
			return nil, fmt.Errorf("k8s_psat: the issuer's keys: %w", err)
		}
		if len(keys) == 0 {
			return nil, attest.Refused("k8s_psat: the token is signed with key %q, which the issuer does not publish", truncate(kid))
		}
	}
	var std jwt.Claims
	var k8s struct {
		Kubernetes *kubernetesClaims `json:"kubernetes.io"`
	}
	if err := tok.Claims(keys[0].Key, &std, &k8s); err != nil {
		return nil, attest.Refused("k8s_psat: the token's signature does not verify: %v", err)
	}
	if std.Expiry == nil {
		return nil, attest.Refused("k8s_psat: the token has no expiry (a legacy service-account secret, not a projected token)")
	}
	if err := std.ValidateWithLeeway(jwt.Expected{Issuer: v.Issuer, AnyAudience: jwt.Audience{audience}, Time: now()}, 30*time.Second); err != nil {
		return nil, attest.Refused("k8s_psat: token: %v (issuer %q, audience %q)", err, v.Issuer, audience)
	}
	c := k8s.Kubernetes
	if c == nil || c.Pod == nil {
		return nil, attest.Refused("k8s_psat: the token is not bound to a pod (want a projected service-account token)")
	}
	if want := "system:serviceaccount:" + c.Namespace + ":" + c.ServiceAccount.Name; std.Subject != want {
		return nil, attest.Refused("k8s_psat: the token's subject %q is not its service account %q", truncate(std.Subject), want)
	}
	id := &Identity{Namespace: c.Namespace, ServiceAccount: c.ServiceAccount.Name, PodName: c.Pod.Name, PodUID: c.Pod.UID}
	if c.Node != nil {
		id.NodeName, id.NodeUID = c.Node.Name, c.Node.UID
	}
	return id, nil
}
