package k8spsat

import (
	"context"
	"fmt"
	"slices"
	"strings"

	authnv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	authnclient "k8s.io/client-go/kubernetes/typed/authentication/v1"
	coreclient "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/shortleaf/shortleaf/attest"
)

// TokenReviewValidator validates tokens with the cluster's TokenReview API
// and reads the token's pod and its node: a token of a pod that no longer
// exists is refused, and the node's UID and labels come from the cluster.
type TokenReviewValidator struct {
	auth authnclient.AuthenticationV1Interface
	core coreclient.CoreV1Interface
}

// NewTokenReviewValidator uses the cluster of kubeconfig, or the cluster
// the server runs in when kubeconfig is "". The server's identity needs
// create on tokenreviews and get on pods and nodes.
func NewTokenReviewValidator(kubeconfig string) (*TokenReviewValidator, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	if err != nil {
		return nil, err
	}
	return NewTokenReviewValidatorFor(cfg)
}

// NewTokenReviewValidatorFor uses the cluster of cfg. It speaks JSON,
// which every API server accepts.
func NewTokenReviewValidatorFor(cfg *rest.Config) (*TokenReviewValidator, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.ContentType, cfg.AcceptContentTypes = "application/json", "application/json"
	auth, err := authnclient.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	core, err := coreclient.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &TokenReviewValidator{auth: auth, core: core}, nil
}

// The TokenReview's extra fields naming a projected token's pod.
const (
	extraPodName = "authentication.kubernetes.io/pod-name"
	extraPodUID  = "authentication.kubernetes.io/pod-uid"
)

// Validate implements Validator.
func (v *TokenReviewValidator) Validate(ctx context.Context, token, audience string) (*Identity, error) {
	tr, err := v.auth.TokenReviews().Create(ctx, &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{audience}}}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("TokenReview: %w", err)
	}
	st := tr.Status
	if !st.Authenticated {
		return nil, attest.Refused("k8s_psat: the cluster did not authenticate the token: %s", truncate(st.Error))
	}
	if !slices.Contains(st.Audiences, audience) {
		return nil, attest.Refused("k8s_psat: the token is not for audience %q", audience)
	}
	rest, ok := strings.CutPrefix(st.User.Username, "system:serviceaccount:")
	ns, sa, ok2 := strings.Cut(rest, ":")
	if !ok || !ok2 {
		return nil, attest.Refused("k8s_psat: the token is not a service account's (user %q)", truncate(st.User.Username))
	}
	podName, podUID := first(st.User.Extra[extraPodName]), first(st.User.Extra[extraPodUID])
	if podName == "" || podUID == "" {
		return nil, attest.Refused("k8s_psat: the token is not bound to a pod (want a projected service-account token)")
	}
	pod, err := v.core.Pods(ns).Get(ctx, podName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil, attest.Refused("k8s_psat: pod %s/%s no longer exists", ns, podName)
	case err != nil:
		return nil, fmt.Errorf("get pod %s/%s: %w", ns, podName, err)
	case string(pod.UID) != podUID:
		return nil, attest.Refused("k8s_psat: pod %s/%s is not the one the token was issued to (UID %s, token for %s)", ns, podName, pod.UID, podUID)
	case pod.Spec.NodeName == "":
		return nil, attest.Refused("k8s_psat: pod %s/%s is not scheduled on a node", ns, podName)
	}
	node, err := v.core.Nodes().Get(ctx, pod.Spec.NodeName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get node %s: %w", pod.Spec.NodeName, err)
	}
	return &Identity{Namespace: ns, ServiceAccount: sa, PodName: podName, PodUID: podUID,
		NodeName: node.Name, NodeUID: string(node.UID), NodeLabels: node.Labels}, nil
}

func first(v authnv1.ExtraValue) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}
