package k8spsat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/shortleaf/shortleaf/attest"
)

// Type is the attestor's name and the type of its selectors.
const Type = "k8s_psat"

// DefaultAudience is the audience the agent's token is projected for.
const DefaultAudience = "shortleaf-server"

// Limits on what an agent may send.
const (
	MaxPayload = 24 << 10
	MaxToken   = 16 << 10
)

var clusterName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`)

// Payload is what the agent sends.
type Payload struct {
	Cluster string `json:"cluster"`
	Token   string `json:"token"`
}

// ParsePayload reads and bounds an agent's payload.
func ParsePayload(raw []byte) (*Payload, error) {
	if len(raw) > MaxPayload {
		return nil, attest.Malformed("k8s_psat payload is %d bytes, more than %d", len(raw), MaxPayload)
	}
	var p Payload
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, attest.Malformed("k8s_psat payload: %v", err)
	}
	switch {
	case !clusterName.MatchString(p.Cluster):
		return nil, attest.Malformed("k8s_psat payload: cluster %q is not a cluster name", truncate(p.Cluster))
	case p.Token == "":
		return nil, attest.Malformed("k8s_psat payload: token is empty")
	case len(p.Token) > MaxToken:
		return nil, attest.Malformed("k8s_psat payload: token is %d bytes, more than %d", len(p.Token), MaxToken)
	}
	return &p, nil
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// Identity is what a validated token says of the agent's pod and node.
type Identity struct {
	Namespace, ServiceAccount string
	PodName, PodUID           string
	NodeName, NodeUID         string
	NodeLabels                map[string]string
}

// Validator checks a token for a cluster: online (TokenReview) or offline
// (the issuer's keys).
type Validator interface {
	Validate(ctx context.Context, token, audience string) (*Identity, error)
}

// Cluster is one cluster whose agents may attest.
type Cluster struct {
	Name     string
	Audience string // default DefaultAudience
	// AllowedServiceAccounts are "namespace:name" of the agents' service
	// accounts; a token of any other is refused.
	AllowedServiceAccounts []string
	Validator              Validator
}

// Server verifies PSAT attestations.
type Server struct {
	clusters map[string]*Cluster
}

// NewServer returns the attestor for clusters.
func NewServer(clusters []*Cluster) (*Server, error) {
	s := &Server{clusters: map[string]*Cluster{}}
	for _, c := range clusters {
		switch {
		case !clusterName.MatchString(c.Name):
			return nil, fmt.Errorf("k8s_psat: cluster name %q is not valid (letters, digits, '.', '_', '-')", c.Name)
		case len(c.AllowedServiceAccounts) == 0:
			return nil, fmt.Errorf("k8s_psat: cluster %s allows no service account", c.Name)
		case c.Validator == nil:
			return nil, fmt.Errorf("k8s_psat: cluster %s has no token validator", c.Name)
		}
		for _, sa := range c.AllowedServiceAccounts {
			if ns, name, ok := strings.Cut(sa, ":"); !ok || ns == "" || name == "" {
				return nil, fmt.Errorf("k8s_psat: cluster %s: service account %q is not namespace:name", c.Name, sa)
			}
		}
		if c.Audience == "" {
			c.Audience = DefaultAudience
		}
		s.clusters[c.Name] = c
	}
	return s, nil
}

// Type implements attest.NodeServer.
func (s *Server) Type() string { return Type }

// Attest implements attest.NodeServer. No challenge is made: a PSAT has no
// key to prove (see the package doc).
func (s *Server) Attest(ctx context.Context, td spiffeid.TrustDomain, payload []byte, _ attest.Challenger) (*attest.NodeResult, error) {
	p, err := ParsePayload(payload)
	if err != nil {
		return nil, err
	}
	c, ok := s.clusters[p.Cluster]
	if !ok {
		names := make([]string, 0, len(s.clusters))
		for n := range s.clusters {
			names = append(names, n)
		}
		sort.Strings(names)
		return nil, attest.Refused("k8s_psat: cluster %q is not configured (configured: %s)", p.Cluster, strings.Join(names, ", "))
	}
	id, err := c.Validator.Validate(ctx, p.Token, c.Audience)
	if err != nil {
		return nil, err
	}
	if sa := id.Namespace + ":" + id.ServiceAccount; !slices.Contains(c.AllowedServiceAccounts, sa) {
		return nil, attest.Refused("k8s_psat: service account %s is not allowed to attest agents in cluster %s", sa, c.Name)
	}
	if id.NodeUID == "" {
		return nil, attest.Refused("k8s_psat: the token does not name the pod's node (Kubernetes 1.30 or later binds it; or validate with the TokenReview API)")
	}
	agentID, err := spiffeid.FromSegments(td, "agent", Type, c.Name, id.NodeUID)
	if err != nil {
		return nil, attest.Refused("k8s_psat: node UID %q cannot be part of an agent ID: %v", truncate(id.NodeUID), err)
	}
	return &attest.NodeResult{AgentID: agentID, Selectors: selectors(c.Name, id)}, nil
}

func selectors(cluster string, id *Identity) []attest.Selector {
	sel := func(v string) attest.Selector { return attest.Selector{Type: Type, Value: v} }
	out := []attest.Selector{sel("cluster:" + cluster), sel("agent_ns:" + id.Namespace), sel("agent_sa:" + id.ServiceAccount)}
	for _, kv := range [][2]string{{"agent_pod_name", id.PodName}, {"agent_pod_uid", id.PodUID}, {"agent_node_name", id.NodeName}, {"agent_node_uid", id.NodeUID}} {
		if kv[1] != "" {
			out = append(out, sel(kv[0]+":"+kv[1]))
		}
	}
	keys := make([]string, 0, len(id.NodeLabels))
	for k := range id.NodeLabels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		out = append(out, sel("agent_node_label:"+k+":"+id.NodeLabels[k]))
	}
	return out
}

// Client is the agent's side: the projected token, read afresh at each
// attestation (the kubelet rotates it).
type Client struct {
	Cluster   string
	TokenPath string
}

// DefaultTokenPath is where the DaemonSet of docs/deploy/kubernetes
// projects the agent's token.
const DefaultTokenPath = "/var/run/secrets/tokens/shortleaf-agent" //nolint:gosec // a path, not a credential

// Type implements attest.NodeClient.
func (c *Client) Type() string { return Type }

// Payload implements attest.NodeClient.
func (c *Client) Payload(context.Context) ([]byte, error) {
	path := c.TokenPath
	if path == "" {
		path = DefaultTokenPath
	}
	tok, err := os.ReadFile(path) //nolint:gosec // the operator-configured token path
	if err != nil {
		return nil, fmt.Errorf("k8s_psat: read the projected token: %w", err)
	}
	return json.Marshal(Payload{Cluster: c.Cluster, Token: strings.TrimSpace(string(tok))})
}

// Answer implements attest.NodeClient; the server makes no PSAT challenge.
func (c *Client) Answer(context.Context, []byte) ([]byte, error) {
	return nil, errors.New("k8s_psat: the server sent a challenge, which this attestor does not make")
}

// now is the clock of the offline validator; tests move it.
var now = time.Now
