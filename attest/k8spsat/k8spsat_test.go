package k8spsat

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/attest/k8spsat/k8spsattest"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

const (
	podUID  = k8spsattest.PodUID
	nodeUID = k8spsattest.NodeUID
)

// testIssuer is a token issuer whose tokens are issued at now().
type testIssuer struct{ *k8spsattest.Issuer }

func newIssuer(url string) *testIssuer { return &testIssuer{k8spsattest.NewIssuer(url)} }

func (i *testIssuer) token(t *testing.T, mutate func(std *jwt.Claims, k8s map[string]any)) string {
	return i.Token(t, DefaultAudience, now(), mutate)
}

func payload(cluster, token string) []byte {
	raw, _ := json.Marshal(Payload{Cluster: cluster, Token: token})
	return raw
}

func noChallenge(context.Context, []byte) ([]byte, error) {
	return nil, errors.New("no challenge expected")
}

func newServer(t *testing.T, v Validator) *Server {
	s, err := NewServer([]*Cluster{{Name: "prod", AllowedServiceAccounts: []string{"shortleaf:shortleaf-agent"}, Validator: v}})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Offline validation with keys found by OIDC discovery, over HTTPS.
func TestOfflineValidationByDiscovery(t *testing.T) {
	var iss *testIssuer
	fetches := 0
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/.well-known/openid-configuration":
			_ = json.NewEncoder(w).Encode(map[string]string{"issuer": iss.URL, "jwks_uri": iss.URL + "/openid/v1/jwks"})
		case "/openid/v1/jwks":
			fetches++
			_ = json.NewEncoder(w).Encode(iss.JWKS())
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	iss = newIssuer(srv.URL)
	s := newServer(t, NewDiscoveryValidator(srv.URL, srv.Client()))
	res, err := s.Attest(context.Background(), td, payload("prod", iss.token(t, nil)), noChallenge)
	if err != nil {
		t.Fatal(err)
	}
	if want := "spiffe://example.org/agent/k8s_psat/prod/" + nodeUID; res.AgentID.String() != want {
		t.Fatalf("agent ID %s, want %s", res.AgentID, want)
	}
	got := map[string]bool{}
	for _, sel := range res.Selectors {
		if err := sel.Validate(); err != nil {
			t.Errorf("%v", err)
		}
		got[sel.String()] = true
	}
	for _, want := range []string{"k8s_psat:cluster:prod", "k8s_psat:agent_ns:shortleaf", "k8s_psat:agent_sa:shortleaf-agent",
		"k8s_psat:agent_pod_name:shortleaf-agent-x7k2p", "k8s_psat:agent_pod_uid:" + podUID, "k8s_psat:agent_node_name:node-1", "k8s_psat:agent_node_uid:" + nodeUID} {
		if !got[want] {
			t.Errorf("selector %s missing from %v", want, res.Selectors)
		}
	}
	// A token of a key the issuer has not published makes one more fetch,
	// and is refused.
	thief := newIssuer(srv.URL)
	thief.KID = "key-2"
	if _, err := s.Attest(context.Background(), td, payload("prod", thief.token(t, nil)), noChallenge); !errors.Is(err, attest.ErrRefused) {
		t.Fatalf("token of an unpublished key: %v", err)
	}
	if _, err := s.Attest(context.Background(), td, payload("prod", thief.token(t, nil)), noChallenge); !errors.Is(err, attest.ErrRefused) {
		t.Fatalf("token of an unpublished key: %v", err)
	}
	if fetches != 1 {
		t.Fatalf("%d JWKS fetches, want 1: a refresh waits %s after the last fetch", fetches, refreshInterval)
	}
	// Once the interval has passed, an unknown key makes one more fetch,
	// which finds a key the issuer published since (a rotation).
	defer func(saved func() time.Time) { now = saved }(now)
	now = func() time.Time { return time.Now().Add(refreshInterval + time.Second) }
	iss.KID, iss.Key = thief.KID, thief.Key
	if _, err := s.Attest(context.Background(), td, payload("prod", iss.token(t, nil)), noChallenge); err != nil {
		t.Fatalf("token of a key published since the last fetch: %v", err)
	}
	if fetches != 2 {
		t.Fatalf("%d JWKS fetches, want 2", fetches)
	}
}

func TestOfflineValidationRefusesWhatTheClusterDidNotIssue(t *testing.T) {
	iss := newIssuer("https://oidc.prod.example")
	jwks := filepath.Join(t.TempDir(), "jwks.json")
	raw, _ := json.Marshal(iss.JWKS())
	if err := os.WriteFile(jwks, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	v, err := NewJWKSFileValidator(iss.URL, jwks)
	if err != nil {
		t.Fatal(err)
	}
	s := newServer(t, v)
	forger := newIssuer(iss.URL) // same kid, another key
	for name, tc := range map[string]struct {
		payload []byte
		want    error
		msg     string
	}{
		"expired":        {payload("prod", iss.token(t, func(c *jwt.Claims, _ map[string]any) { c.Expiry = jwt.NewNumericDate(now().Add(-time.Hour)) })), attest.ErrRefused, "expired"},
		"other audience": {payload("prod", iss.token(t, func(c *jwt.Claims, _ map[string]any) { c.Audience = jwt.Audience{"https://kubernetes.default.svc"} })), attest.ErrRefused, "audience"},
		"other issuer":   {payload("prod", iss.token(t, func(c *jwt.Claims, _ map[string]any) { c.Issuer = "https://oidc.dev.example" })), attest.ErrRefused, "issuer"},
		"forged":         {payload("prod", forger.token(t, nil)), attest.ErrRefused, "signature"},
		"no expiry":      {payload("prod", iss.token(t, func(c *jwt.Claims, _ map[string]any) { c.Expiry = nil })), attest.ErrRefused, "no expiry"},
		"not pod-bound":  {payload("prod", iss.token(t, func(_ *jwt.Claims, k map[string]any) { delete(k, "pod") })), attest.ErrRefused, "not bound to a pod"},
		"no node":        {payload("prod", iss.token(t, func(_ *jwt.Claims, k map[string]any) { delete(k, "node") })), attest.ErrRefused, "node"},
		"service account not allowed": {payload("prod", iss.token(t, func(c *jwt.Claims, k map[string]any) {
			c.Subject = "system:serviceaccount:default:default"
			k["namespace"], k["serviceaccount"] = "default", map[string]string{"name": "default"}
		})), attest.ErrRefused, "not allowed"},
		"subject of another account": {payload("prod", iss.token(t, func(c *jwt.Claims, _ map[string]any) { c.Subject = "system:serviceaccount:kube-system:admin" })), attest.ErrRefused, "subject"},
		"unknown cluster":            {payload("dev", iss.token(t, nil)), attest.ErrRefused, "not configured"},
		"not a token":                {payload("prod", "abc.def"), attest.ErrMalformed, "token"},
		"bad cluster name":           {payload("../x", "t"), attest.ErrMalformed, "cluster"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := s.Attest(context.Background(), td, tc.payload, noChallenge)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got %v, want %v naming %q", err, tc.want, tc.msg)
			}
		})
	}
}

func TestTokenReviewValidation(t *testing.T) {
	api := k8spsattest.NewAPIServer(t, "the-agent-token", map[string]string{"topology.kubernetes.io/zone": "eu-west-1a"})
	v, err := NewTokenReviewValidatorFor(&rest.Config{Host: api.URL, BearerToken: k8spsattest.APIToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: api.CAPEM()}})
	if err != nil {
		t.Fatal(err)
	}
	s := newServer(t, v)
	res, err := s.Attest(context.Background(), td, payload("prod", "the-agent-token"), noChallenge)
	if err != nil {
		t.Fatal(err)
	}
	if want := "spiffe://example.org/agent/k8s_psat/prod/" + nodeUID; res.AgentID.String() != want {
		t.Fatalf("agent ID %s", res.AgentID)
	}
	found := false
	for _, sel := range res.Selectors {
		found = found || sel.String() == "k8s_psat:agent_node_label:topology.kubernetes.io/zone:eu-west-1a"
	}
	if !found {
		t.Fatalf("no node label selector in %v", res.Selectors)
	}
	if _, err := s.Attest(context.Background(), td, payload("prod", "a-stolen-or-made-up-token"), noChallenge); !errors.Is(err, attest.ErrRefused) || !strings.Contains(err.Error(), "did not authenticate") {
		t.Fatalf("unauthenticated token: %v", err)
	}
	// The pod the token was issued to is gone (its token outlives it).
	pod := api.Pods[k8spsattest.PodName]
	api.SetPod(nil)
	if _, err := s.Attest(context.Background(), td, payload("prod", "the-agent-token"), noChallenge); !errors.Is(err, attest.ErrRefused) || !strings.Contains(err.Error(), "no longer exists") {
		t.Fatalf("token of a deleted pod: %v", err)
	}
	// A new pod of the same name is not the token's.
	api.SetPod(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace, UID: "00000000-0000-4000-8000-000000000000"}, Spec: pod.Spec})
	if _, err := s.Attest(context.Background(), td, payload("prod", "the-agent-token"), noChallenge); !errors.Is(err, attest.ErrRefused) || !strings.Contains(err.Error(), "not the one") {
		t.Fatalf("token of a replaced pod: %v", err)
	}
	// The API unreachable is the attestor failing, not a refusal.
	api.Close()
	if _, err := s.Attest(context.Background(), td, payload("prod", "the-agent-token"), noChallenge); err == nil || errors.Is(err, attest.ErrRefused) || errors.Is(err, attest.ErrMalformed) {
		t.Fatalf("API down: %v, want a plain error", err)
	}
}

// FuzzParsePayload: no payload panics the parser, and what it accepts is
// within the limits.
func FuzzParsePayload(f *testing.F) {
	f.Add([]byte(`{"cluster":"prod","token":"a.b.c"}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		p, err := ParsePayload(raw)
		if err != nil {
			if !errors.Is(err, attest.ErrMalformed) {
				t.Fatalf("refusal is not ErrMalformed: %v", err)
			}
			return
		}
		if len(p.Token) == 0 || len(p.Token) > MaxToken || !clusterName.MatchString(p.Cluster) {
			t.Fatalf("accepted %+v", p)
		}
	})
}

// FuzzOfflineToken: no token panics offline validation, and none that the
// issuer did not sign is accepted.
func FuzzOfflineToken(f *testing.F) {
	iss := newIssuer("https://oidc.prod.example")
	set := iss.JWKS()
	v := &OfflineValidator{Issuer: iss.URL, keys: func(context.Context, bool) (*jose.JSONWebKeySet, error) { return &set, nil }}
	f.Add("eyJhbGciOiJFUzI1NiJ9.e30.AAAA")
	f.Add("a.b.c")
	f.Fuzz(func(t *testing.T, token string) {
		if _, err := v.Validate(context.Background(), token, DefaultAudience); err == nil {
			t.Fatalf("accepted a token the issuer did not sign: %q", token)
		}
	})
}
