package config

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"gopkg.in/yaml.v3"

	"github.com/shortleaf/shortleaf/attest/k8s"
	"github.com/shortleaf/shortleaf/pkg/agent"
	"github.com/shortleaf/shortleaf/pkg/workloadapi"
)

// AgentFile is agent.yaml as written by an operator.
type AgentFile struct {
	ServerAddress     AddressList `yaml:"server_address"`
	TrustDomain       string      `yaml:"trust_domain"`
	TrustBundlePath   string      `yaml:"trust_bundle_path"`
	InsecureBootstrap bool        `yaml:"insecure_bootstrap"`
	JoinToken         string      `yaml:"join_token"`
	DataDir           string      `yaml:"data_dir"`
	SocketPath        string      `yaml:"socket_path"`
	SyncInterval      Duration    `yaml:"sync_interval"`
	SyncDeadline      Duration    `yaml:"sync_deadline"`
	// X509SVIDCacheMaxSize > 0 obtains SVIDs only for entries workloads
	// ask for, keeping that many warm (SPIRE's LRU SVID cache).
	X509SVIDCacheMaxSize int    `yaml:"x509_svid_cache_max_size"`
	MetricsAddress       string `yaml:"metrics_address"`
	LogLevel             string `yaml:"log_level"`
	// WorkloadAPI bounds what local processes can make the agent hold.
	WorkloadAPI *WorkloadAPIFile `yaml:"workload_api"`
	// K8s turns the Kubernetes workload attestor on.
	K8s *K8sFile `yaml:"k8s"`
	// NodeAttestor attests the node instead of a join token.
	NodeAttestor *NodeAttestorAgentFile `yaml:"node_attestor"`
}

// NodeAttestorAgentFile chooses the agent's node attestor: exactly one.
type NodeAttestorAgentFile struct {
	X509Pop *X509PopAgentFile `yaml:"x509pop"`
	K8sPSAT *K8sPSATAgentFile `yaml:"k8s_psat"`
	TPM     *TPMAgentFile     `yaml:"tpm"`
}

// TPMAgentFile configures tpm on the agent.
type TPMAgentFile struct {
	// DevicePath is the TPM; default /dev/tpmrm0.
	DevicePath string `yaml:"device_path"`
	// EKCertPath, when set, is the EK certificate (PEM) to present, for a
	// TPM that does not hold its own.
	EKCertPath string `yaml:"ek_cert_path"`
}

// K8sPSATAgentFile configures k8s_psat on the agent.
type K8sPSATAgentFile struct {
	// Cluster is the cluster's name in the server's config.
	Cluster string `yaml:"cluster"`
	// TokenPath is the projected token; default
	// /var/run/secrets/tokens/shortleaf-agent.
	TokenPath string `yaml:"token_path"`
}

// X509PopAgentFile names the node's certificate and key for x509pop.
type X509PopAgentFile struct {
	// CertificatePath holds the node certificate, then any intermediates.
	CertificatePath string `yaml:"certificate_path"`
	PrivateKeyPath  string `yaml:"private_key_path"`
}

// K8sFile configures the Kubernetes workload attestor: where the kubelet
// is and how to authenticate to it.
type K8sFile struct {
	KubeletURL              string `yaml:"kubelet_url"`
	TokenFile               string `yaml:"token_file"`
	KubeletCAFile           string `yaml:"kubelet_ca_file"`
	SkipKubeletVerification bool   `yaml:"skip_kubelet_verification"`
	ProcRoot                string `yaml:"proc_root"`
}

// AddressList is one host:port or a list of them.
type AddressList []string

// UnmarshalYAML takes a single address or a sequence of addresses.
func (l *AddressList) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		var one string
		if err := n.Decode(&one); err != nil {
			return err
		}
		*l = AddressList{one}
		return nil
	}
	var many []string
	if err := n.Decode(&many); err != nil {
		return fmt.Errorf("line %d: want host:port or a list of them", n.Line)
	}
	*l = many
	return nil
}

// WorkloadAPIFile configures the Workload API's limits.
type WorkloadAPIFile struct {
	MaxConnections        int      `yaml:"max_connections"`
	MaxConnectionsPerUID  int      `yaml:"max_connections_per_uid"`
	IdleTimeout           Duration `yaml:"idle_timeout"`
	MaxExecutableHashSize int64    `yaml:"max_executable_hash_size"`
}

// Agent is the resolved agent config plus what the command itself needs.
type Agent struct {
	Agent       agent.Config
	MetricsAddr string
	LogLevel    slog.Level
}

// LoadAgent reads and validates an agent config file.
func LoadAgent(path string) (Agent, error) {
	var f AgentFile
	if err := loadFile(path, &f); err != nil {
		return Agent{}, err
	}
	return f.Resolve()
}

// ParseAgent is LoadAgent on a reader.
func ParseAgent(r io.Reader) (Agent, error) {
	var f AgentFile
	if err := decodeStrict("agent config", r, &f); err != nil {
		return Agent{}, err
	}
	return f.Resolve()
}

// Resolve validates the file and applies defaults.
func (f *AgentFile) Resolve() (Agent, error) {
	if len(f.ServerAddress) == 0 {
		return Agent{}, fieldErr("server_address", "is required")
	}
	for i, addr := range f.ServerAddress {
		if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
			key := "server_address"
			if len(f.ServerAddress) > 1 {
				key = fmt.Sprintf("server_address[%d]", i)
			}
			return Agent{}, fieldErr(key, "%q is not host:port (e.g. shortleaf-server:8081)", addr)
		}
	}
	if f.TrustDomain == "" {
		return Agent{}, fieldErr("trust_domain", "is required")
	}
	td, err := spiffeid.TrustDomainFromString(f.TrustDomain)
	if err != nil {
		return Agent{}, fieldErr("trust_domain", "%q is not a valid trust domain name", f.TrustDomain)
	}
	if f.DataDir == "" {
		return Agent{}, fieldErr("data_dir", "is required")
	}
	if f.SyncInterval != 0 && (time.Duration(f.SyncInterval) < time.Second || time.Duration(f.SyncInterval) > 10*time.Minute) {
		return Agent{}, fieldErr("sync_interval", "%s is out of range (1s to 10m)", time.Duration(f.SyncInterval))
	}
	if d := time.Duration(f.SyncDeadline); d != 0 && (d < 2*durationOr(f.SyncInterval, agent.DefaultSyncInterval) || d > 24*time.Hour) {
		return Agent{}, fieldErr("sync_deadline", "%s is out of range (twice sync_interval to 24h)", d)
	}
	if k := f.K8s; k != nil {
		switch {
		case k.KubeletURL != "" && !strings.HasPrefix(k.KubeletURL, "https://") && !strings.HasPrefix(k.KubeletURL, "http://"):
			return Agent{}, fieldErr("k8s.kubelet_url", "%q: want https://host:port (or http:// for the read-only port)", k.KubeletURL)
		case k.SkipKubeletVerification && k.KubeletCAFile != "":
			return Agent{}, fieldErr("k8s.skip_kubelet_verification", "cannot be combined with kubelet_ca_file")
		case !strings.HasPrefix(k.KubeletURL, "http://") && k.TokenFile == "":
			return Agent{}, fieldErr("k8s.token_file", "is required for the kubelet's HTTPS port (the agent's service-account token)")
		}
	}
	nodeAttestor, err := f.NodeAttestor.resolve(f.DataDir)
	if err != nil {
		return Agent{}, err
	}
	if nodeAttestor != nil && f.JoinToken != "" {
		return Agent{}, fieldErr("join_token", "cannot be combined with node_attestor (the agent attests with %s)", nodeAttestor.Type())
	}
	if f.X509SVIDCacheMaxSize < 0 {
		return Agent{}, fieldErr("x509_svid_cache_max_size", "%d is negative (0: every entry's SVID is obtained ahead)", f.X509SVIDCacheMaxSize)
	}
	if f.TrustBundlePath != "" && f.InsecureBootstrap {
		return Agent{}, fieldErr("insecure_bootstrap", "cannot be combined with trust_bundle_path")
	}
	level, err := ParseLogLevel(f.LogLevel)
	if err != nil {
		return Agent{}, err
	}
	out := Agent{
		Agent: agent.Config{
			ServerAddrs: f.ServerAddress, TrustDomain: td, InsecureBootstrap: f.InsecureBootstrap,
			JoinToken: f.JoinToken, DataDir: f.DataDir, SocketPath: f.SocketPath, SyncInterval: time.Duration(f.SyncInterval),
			SyncDeadline:         time.Duration(f.SyncDeadline),
			X509SVIDCacheMaxSize: f.X509SVIDCacheMaxSize, NodeAttestor: nodeAttestor,
		},
		MetricsAddr: f.MetricsAddress,
		LogLevel:    level,
	}
	if k := f.K8s; k != nil {
		out.Agent.Kubernetes = &k8s.AttestorConfig{ProcRoot: k.ProcRoot, Kubelet: k8s.KubeletConfig{
			URL: k.KubeletURL, TokenFile: k.TokenFile, CAFile: k.KubeletCAFile, SkipVerify: k.SkipKubeletVerification}}
	}
	if w := f.WorkloadAPI; w != nil {
		for key, v := range map[string]int64{"workload_api.max_connections": int64(w.MaxConnections),
			"workload_api.max_connections_per_uid": int64(w.MaxConnectionsPerUID), "workload_api.max_executable_hash_size": w.MaxExecutableHashSize} {
			if v < 0 {
				return Agent{}, fieldErr(key, "%d is negative", v)
			}
		}
		if d := time.Duration(w.IdleTimeout); d != 0 && d < time.Second {
			return Agent{}, fieldErr("workload_api.idle_timeout", "%s is too short (at least 1s)", d)
		}
		out.Agent.WorkloadAPI = workloadapi.Limits{MaxConnections: w.MaxConnections, MaxConnectionsPerUID: w.MaxConnectionsPerUID, IdleTimeout: time.Duration(w.IdleTimeout)}
		out.Agent.MaxExecutableHashSize = w.MaxExecutableHashSize
	}
	if f.TrustBundlePath != "" {
		out.Agent.TrustBundle, err = ReadPEMCertificates(f.TrustBundlePath)
		if err != nil {
			return Agent{}, fieldErr("trust_bundle_path", "%v", err)
		}
	}
	return out, nil
}

// ReadPEMCertificates reads every CERTIFICATE block of a PEM file.
func ReadPEMCertificates(path string) ([]*x509.Certificate, error) {
	raw, err := os.ReadFile(path) //nolint:gosec // an operator-chosen path
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, raw = pem.Decode(raw)
		if block == nil {
			break
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
	if len(out) == 0 {
		return nil, errNoCerts(path)
	}
	return out, nil
}

type errNoCerts string

func (e errNoCerts) Error() string { return string(e) + " holds no PEM certificates" }
