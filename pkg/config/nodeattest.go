package config

import (
	"crypto/x509"
	"fmt"
	"maps"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/attest/k8spsat"
	"github.com/shortleaf/shortleaf/attest/tpm"
	"github.com/shortleaf/shortleaf/attest/x509pop"
	"github.com/shortleaf/shortleaf/pkg/safefile"
)

// NodeAttestorsFile configures the node attestors the server accepts
// besides join tokens (always accepted).
type NodeAttestorsFile struct {
	X509Pop *X509PopServerFile `yaml:"x509pop"`
	K8sPSAT *K8sPSATServerFile `yaml:"k8s_psat"`
	TPM     *TPMServerFile     `yaml:"tpm"`
}

// TPMServerFile configures tpm on the server: which endorsement keys are
// trusted, by their manufacturer's CA or by their public key's hash.
type TPMServerFile struct {
	EKCABundlePath  string   `yaml:"ek_ca_bundle_path"`
	EKHashAllowList []string `yaml:"ek_hash_allow_list"`
}

// K8sPSATServerFile configures k8s_psat on the server: the clusters whose
// agents may attest, by name.
type K8sPSATServerFile struct {
	Clusters map[string]*K8sPSATClusterFile `yaml:"clusters"`
}

// K8sPSATClusterFile is one cluster. Tokens are validated with its
// TokenReview API (kube_config_file, or the cluster the server runs in),
// or offline with jwks_file or issuer_url (OIDC discovery).
type K8sPSATClusterFile struct {
	ServiceAccountAllowList []string `yaml:"service_account_allow_list"`
	Audience                string   `yaml:"audience"`
	KubeConfigFile          string   `yaml:"kube_config_file"`
	JWKSFile                string   `yaml:"jwks_file"`
	Issuer                  string   `yaml:"issuer"`
	IssuerURL               string   `yaml:"issuer_url"`
}

// X509PopServerFile configures x509pop on the server.
type X509PopServerFile struct {
	// CABundlePath holds the PEM CA certificates node certificates must
	// chain to.
	CABundlePath string `yaml:"ca_bundle_path"`
}

// resolve builds the configured attestors, by type.
func (f *NodeAttestorsFile) resolve() (map[string]attest.NodeServer, error) {
	out := map[string]attest.NodeServer{}
	if f == nil {
		return out, nil
	}
	if p := f.X509Pop; p != nil {
		if p.CABundlePath == "" {
			return nil, fieldErr("node_attestors.x509pop.ca_bundle_path", "is required")
		}
		cas, err := ReadPEMCertificates(p.CABundlePath)
		if err != nil {
			return nil, fieldErr("node_attestors.x509pop.ca_bundle_path", "%v", err)
		}
		s, err := x509pop.NewServer(cas, nil)
		if err != nil {
			return nil, fieldErr("node_attestors.x509pop.ca_bundle_path", "%v", err)
		}
		out[x509pop.Type] = s
	}
	if p := f.TPM; p != nil {
		var cas []*x509.Certificate
		if p.EKCABundlePath != "" {
			var err error
			if cas, err = ReadPEMCertificates(p.EKCABundlePath); err != nil {
				return nil, fieldErr("node_attestors.tpm.ek_ca_bundle_path", "%v", err)
			}
		}
		for i, h := range p.EKHashAllowList {
			if !ekHash.MatchString(h) {
				return nil, fieldErr(fmt.Sprintf("node_attestors.tpm.ek_hash_allow_list[%d]", i), "%q is not a hex SHA-256 (64 lowercase hex digits)", h)
			}
		}
		s, err := tpm.NewServer(cas, p.EKHashAllowList, nil)
		if err != nil {
			return nil, fieldErr("node_attestors.tpm", "%v", err)
		}
		out[tpm.Type] = s
	}
	if p := f.K8sPSAT; p != nil {
		s, err := p.resolve()
		if err != nil {
			return nil, err
		}
		out[k8spsat.Type] = s
	}
	return out, nil
}

func (f *K8sPSATServerFile) resolve() (*k8spsat.Server, error) {
	if len(f.Clusters) == 0 {
		return nil, fieldErr("node_attestors.k8s_psat.clusters", "names no cluster")
	}
	var clusters []*k8spsat.Cluster
	for _, name := range slices.Sorted(maps.Keys(f.Clusters)) {
		c, key := f.Clusters[name], "node_attestors.k8s_psat.clusters."+name
		if c == nil {
			return nil, fieldErr(key, "is empty (service_account_allow_list is required)")
		}
		if len(c.ServiceAccountAllowList) == 0 {
			return nil, fieldErr(key+".service_account_allow_list", "is required (namespace:name of the agents' service account)")
		}
		var v k8spsat.Validator
		var err error
		switch {
		case c.JWKSFile != "" && c.IssuerURL != "":
			return nil, fieldErr(key+".jwks_file", "cannot be combined with issuer_url")
		case (c.JWKSFile != "" || c.IssuerURL != "") && c.KubeConfigFile != "":
			return nil, fieldErr(key+".kube_config_file", "cannot be combined with offline validation (jwks_file, issuer_url)")
		case c.JWKSFile != "":
			if c.Issuer == "" {
				return nil, fieldErr(key+".issuer", "is required with jwks_file (the iss claim of the cluster's tokens)")
			}
			if v, err = k8spsat.NewJWKSFileValidator(c.Issuer, c.JWKSFile); err != nil {
				return nil, fieldErr(key+".jwks_file", "%v", err)
			}
		case c.IssuerURL != "":
			if !strings.HasPrefix(c.IssuerURL, "https://") {
				return nil, fieldErr(key+".issuer_url", "%q: want https://", c.IssuerURL)
			}
			v = k8spsat.NewDiscoveryValidator(c.IssuerURL, nil)
		default:
			if v, err = k8spsat.NewTokenReviewValidator(c.KubeConfigFile); err != nil {
				return nil, fieldErr(key+".kube_config_file", "%v (empty: the cluster the server runs in)", err)
			}
		}
		clusters = append(clusters, &k8spsat.Cluster{Name: name, Audience: c.Audience, AllowedServiceAccounts: c.ServiceAccountAllowList, Validator: v})
	}
	s, err := k8spsat.NewServer(clusters)
	if err != nil {
		return nil, fieldErr("node_attestors.k8s_psat", "%v", err)
	}
	return s, nil
}

// resolve builds the agent's node attestor; nil when none is configured.
func (f *NodeAttestorAgentFile) resolve(dataDir string) (attest.NodeClient, error) {
	if f == nil {
		return nil, nil
	}
	var out attest.NodeClient
	if p := f.X509Pop; p != nil {
		switch {
		case p.CertificatePath == "":
			return nil, fieldErr("node_attestor.x509pop.certificate_path", "is required")
		case p.PrivateKeyPath == "":
			return nil, fieldErr("node_attestor.x509pop.private_key_path", "is required")
		}
		if _, err := ReadPEMCertificates(p.CertificatePath); err != nil {
			return nil, fieldErr("node_attestor.x509pop.certificate_path", "%v", err)
		}
		if err := safefile.CheckPrivateFile(p.PrivateKeyPath); err != nil {
			return nil, fieldErr("node_attestor.x509pop.private_key_path", "%v", err)
		}
		out = &x509pop.FileClient{CertPath: p.CertificatePath, KeyPath: p.PrivateKeyPath}
	}
	if p := f.K8sPSAT; p != nil {
		if out != nil {
			return nil, fieldErr("node_attestor", "names more than one attestor")
		}
		if p.Cluster == "" {
			return nil, fieldErr("node_attestor.k8s_psat.cluster", "is required (the cluster's name in the server's k8s_psat config)")
		}
		out = &k8spsat.Client{Cluster: p.Cluster, TokenPath: p.TokenPath}
	}
	if p := f.TPM; p != nil {
		if out != nil {
			return nil, fieldErr("node_attestor", "names more than one attestor")
		}
		c := &tpm.Client{Open: tpm.OpenDevice(p.DevicePath, filepath.Join(dataDir, "tpm"))}
		if p.EKCertPath != "" {
			certs, err := ReadPEMCertificates(p.EKCertPath)
			if err != nil {
				return nil, fieldErr("node_attestor.tpm.ek_cert_path", "%v", err)
			}
			c.EKCert = certs[0]
		}
		out = c
	}
	if out == nil {
		return nil, fieldErr("node_attestor", "names no attestor (x509pop, k8s_psat, tpm)")
	}
	return out, nil
}

var ekHash = regexp.MustCompile(`^[0-9a-f]{64}$`)
