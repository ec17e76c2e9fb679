package config

import (
	"github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/attest/x509pop"
	"github.com/shortleaf/shortleaf/pkg/safefile"
)

// NodeAttestorsFile configures the node attestors the server accepts
// besides join tokens (always accepted).
type NodeAttestorsFile struct {
	X509Pop *X509PopServerFile `yaml:"x509pop"`
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
	return out, nil
}

// resolve builds the agent's node attestor; nil when none is configured.
func (f *NodeAttestorAgentFile) resolve() (attest.NodeClient, error) {
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
	if out == nil {
		return nil, fieldErr("node_attestor", "names no attestor (x509pop)")
	}
	return out, nil
}
