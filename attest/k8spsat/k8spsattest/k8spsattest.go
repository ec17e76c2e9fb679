// Package k8spsattest stands in for a Kubernetes cluster in tests of the
// k8s_psat attestor: a service-account token issuer with its JWKS and OIDC
// discovery, and an API server with the few endpoints the attestor calls
// (TokenReview, GET pod, GET node), speaking k8s.io/api objects. Kubernetes
// binaries are not needed.
package k8spsattest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// The agent pod and node the fakes describe.
const (
	Namespace      = "shortleaf"
	ServiceAccount = "shortleaf-agent"
	PodName        = "shortleaf-agent-x7k2p"
	PodUID         = "5f0e1c2a-3b4d-4e5f-8a9b-0c1d2e3f4a5b"
	NodeName       = "node-1"
	NodeUID        = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
	// APIToken is the bearer token the fake API server accepts from the
	// shortleaf server.
	APIToken = "server-sa-token" //nolint:gosec // a test value
)

// Issuer signs service-account tokens.
type Issuer struct {
	URL string
	Key *ecdsa.PrivateKey
	KID string
}

// NewIssuer returns an issuer named url with a fresh P-256 key.
func NewIssuer(url string) *Issuer {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	return &Issuer{URL: url, Key: key, KID: "key-1"}
}

// JWKS is the issuer's public key set.
func (i *Issuer) JWKS() jose.JSONWebKeySet {
	return jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &i.Key.PublicKey, KeyID: i.KID, Algorithm: "ES256", Use: "sig"}}}
}

// Token is a projected token of the agent pod for audience, as the kubelet
// gets it, issued at now, changed by mutate (nil: none).
func (i *Issuer) Token(t testing.TB, audience string, now time.Time, mutate func(std *jwt.Claims, k8s map[string]any)) string {
	t.Helper()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: i.Key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", i.KID))
	if err != nil {
		t.Fatal(err)
	}
	std := &jwt.Claims{Issuer: i.URL, Subject: "system:serviceaccount:" + Namespace + ":" + ServiceAccount, Audience: jwt.Audience{audience},
		Expiry: jwt.NewNumericDate(now.Add(time.Hour)), IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now)}
	k8s := map[string]any{
		"namespace":      Namespace,
		"serviceaccount": map[string]string{"name": ServiceAccount, "uid": "1"},
		"pod":            map[string]string{"name": PodName, "uid": PodUID},
		"node":           map[string]string{"name": NodeName, "uid": NodeUID},
	}
	if mutate != nil {
		mutate(std, k8s)
	}
	tok, err := jwt.Signed(signer).Claims(std).Claims(map[string]any{"kubernetes.io": k8s}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// APIServer is a fake Kubernetes API server over HTTPS.
type APIServer struct {
	*httptest.Server
	mu sync.Mutex
	// Valid is the agent token TokenReview authenticates.
	valid string
	Pods  map[string]*corev1.Pod
	Node  *corev1.Node
}

// NewAPIServer serves TokenReview (authenticating valid), the agent pod on
// node NodeName and that node, labelled labels.
func NewAPIServer(t testing.TB, valid string, labels map[string]string) *APIServer {
	a := &APIServer{valid: valid,
		Pods: map[string]*corev1.Pod{PodName: {TypeMeta: metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"},
			ObjectMeta: metav1.ObjectMeta{Name: PodName, Namespace: Namespace, UID: types.UID(PodUID)}, Spec: corev1.PodSpec{NodeName: NodeName}}},
		Node: &corev1.Node{TypeMeta: metav1.TypeMeta{Kind: "Node", APIVersion: "v1"}, ObjectMeta: metav1.ObjectMeta{Name: NodeName, UID: types.UID(NodeUID), Labels: labels}},
	}
	a.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { a.serve(t, w, r) }))
	t.Cleanup(a.Close)
	return a
}

// CAPEM is the server's certificate, PEM, for the client's trust.
func (a *APIServer) CAPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.Certificate().Raw})
}

// SetPod replaces (or, with nil, deletes) the agent pod.
func (a *APIServer) SetPod(p *corev1.Pod) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if p == nil {
		delete(a.Pods, PodName)
		return
	}
	a.Pods[PodName] = p
}

func (a *APIServer) serve(t testing.TB, w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+APIToken {
		http.Error(w, "Unauthorized", http.StatusUnauthorized)
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/apis/authentication.k8s.io/v1/tokenreviews":
		var tr authnv1.TokenReview
		if err := json.NewDecoder(r.Body).Decode(&tr); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		tr.Kind, tr.APIVersion = "TokenReview", "authentication.k8s.io/v1"
		if tr.Spec.Token == a.valid {
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, Audiences: tr.Spec.Audiences, User: authnv1.UserInfo{
				Username: "system:serviceaccount:" + Namespace + ":" + ServiceAccount,
				Extra: map[string]authnv1.ExtraValue{"authentication.kubernetes.io/pod-name": {PodName},
					"authentication.kubernetes.io/pod-uid": {PodUID}}}}
		} else {
			tr.Status = authnv1.TokenReviewStatus{Error: "invalid bearer token"}
		}
		_ = json.NewEncoder(w).Encode(&tr)
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/api/v1/namespaces/"+Namespace+"/pods/"):
		pod, ok := a.Pods[strings.TrimPrefix(r.URL.Path, "/api/v1/namespaces/"+Namespace+"/pods/")]
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			_ = json.NewEncoder(w).Encode(&metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: "Failure", Reason: metav1.StatusReasonNotFound, Code: 404})
			return
		}
		_ = json.NewEncoder(w).Encode(pod)
	case r.Method == http.MethodGet && r.URL.Path == "/api/v1/nodes/"+a.Node.Name:
		_ = json.NewEncoder(w).Encode(a.Node)
	default:
		t.Errorf("unexpected Kubernetes API call %s %s", r.Method, r.URL.Path)
		http.NotFound(w, r)
	}
}
