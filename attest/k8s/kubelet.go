package k8s

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/shortleaf/shortleaf/attest"
)

// KubeletConfig says how to reach the node's kubelet.
type KubeletConfig struct {
	// URL is the kubelet: its HTTPS port (https://127.0.0.1:10250, the
	// default) with TokenFile, or its read-only port (http://…:10255)
	// where a cluster still enables it.
	URL string
	// TokenFile holds the bearer token the kubelet checks (the agent's
	// projected service-account token). It is read again for every
	// request: projected tokens rotate.
	TokenFile string
	// CAFile holds the roots of the kubelet's serving certificate.
	// SkipVerify accepts any certificate instead: kubelets often serve a
	// self-signed one (SPIRE's skip_kubelet_verification).
	CAFile     string
	SkipVerify bool
	// Retry is how often ContainerSelectors asks again while a new pod is
	// not yet in the kubelet's list, and RetryFor for how long (defaults
	// 250ms and 5s).
	Retry, RetryFor time.Duration
}

// DefaultKubeletURL is the kubelet's HTTPS port on the node.
const DefaultKubeletURL = "https://127.0.0.1:10250"

// Kubelet reads the node's pod list from the kubelet.
type Kubelet struct {
	cfg    KubeletConfig
	client *http.Client
}

// NewKubelet checks cfg and returns a client.
func NewKubelet(cfg KubeletConfig) (*Kubelet, error) {
	if cfg.URL == "" {
		cfg.URL = DefaultKubeletURL
	}
	if cfg.Retry <= 0 {
		cfg.Retry = 250 * time.Millisecond
	}
	if cfg.RetryFor <= 0 {
		cfg.RetryFor = 5 * time.Second
	}
	cfg.URL = strings.TrimSuffix(cfg.URL, "/")
	tr := &http.Transport{TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12}, ResponseHeaderTimeout: 10 * time.Second}
	switch {
	case strings.HasPrefix(cfg.URL, "http://"):
	case !strings.HasPrefix(cfg.URL, "https://"):
		return nil, fmt.Errorf("kubelet url %q: want https://host:port (or http:// for the read-only port)", cfg.URL)
	case cfg.SkipVerify:
		tr.TLSClientConfig.InsecureSkipVerify = true //nolint:gosec // the operator's choice for self-signed kubelet certificates
	case cfg.CAFile != "":
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("kubelet ca file: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("kubelet ca file %s: no PEM certificate", cfg.CAFile)
		}
		tr.TLSClientConfig.RootCAs = roots
	}
	return &Kubelet{cfg: cfg, client: &http.Client{Transport: tr, Timeout: 15 * time.Second}}, nil
}

// Pods returns the kubelet's pod list.
func (k *Kubelet) Pods(ctx context.Context) (*corev1.PodList, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.cfg.URL+"/pods", nil)
	if err != nil {
		return nil, err
	}
	if k.cfg.TokenFile != "" {
		token, err := os.ReadFile(k.cfg.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("kubelet token file: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	}
	resp, err := k.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("kubelet: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		// The body is not echoed: it is the kubelet's, of unknown size.
		return nil, fmt.Errorf("kubelet: GET /pods: %s", resp.Status)
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxPodList+1))
	if err != nil {
		return nil, fmt.Errorf("kubelet: read /pods: %w", err)
	}
	return ParsePodList(raw)
}

// ErrNotListed means the container's pod (or the container) did not appear
// in the kubelet's list within RetryFor.
var ErrNotListed = errors.New("k8s: the container is not in the kubelet's pod list")

// ContainerSelectors returns the k8s selectors of container c, asking the
// kubelet again every Retry for up to RetryFor while its pod or container is
// not listed yet (a workload may call as soon as it starts).
func (k *Kubelet) ContainerSelectors(ctx context.Context, c Container) ([]attest.Selector, error) {
	retryCtx, cancel := context.WithTimeout(ctx, k.cfg.RetryFor)
	defer cancel()
	notListed := fmt.Errorf("%w (pod %s, container %s)", ErrNotListed, c.PodUID, short(c.ContainerID))
	for {
		pods, err := k.Pods(retryCtx)
		if err != nil {
			if retryCtx.Err() != nil && ctx.Err() == nil {
				return nil, notListed // the time to wait ran out during a request
			}
			return nil, err
		}
		if sels, ok := Selectors(pods, c); ok {
			return sels, nil
		}
		select {
		case <-retryCtx.Done():
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, notListed
		case <-time.After(k.cfg.Retry):
		}
	}
}
