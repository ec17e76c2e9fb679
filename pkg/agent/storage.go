package agent

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Files in the agent's data directory, all mode 0600.
const (
	keyFileName   = "agent_key.pem"
	stateFileName = "agent_state.json"
)

// persisted is what the agent keeps across restarts besides its key.
type persisted struct {
	SVIDChain      [][]byte `json:"svid_chain"`
	Bundle         [][]byte `json:"bundle"`
	BundleSequence uint64   `json:"bundle_sequence"`
}

type storage struct{ dir string }

func (s storage) loadKey() (crypto.Signer, error) {
	raw, err := os.ReadFile(filepath.Join(s.dir, keyFileName))
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(raw)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("agent: %s holds no PKCS#8 private key", keyFileName)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("agent: parse %s: %w", keyFileName, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("agent: %s holds a %T, not a signing key", keyFileName, key)
	}
	return signer, nil
}

func (s storage) saveKey(key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("agent: marshal key: %w", err)
	}
	return writeFileAtomic(filepath.Join(s.dir, keyFileName), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

// load returns the stored key, SVID chain and bundle; (nil, nil, nil) when
// the agent has never attested.
func (s storage) load() (crypto.Signer, *persisted, error) {
	key, err := s.loadKey()
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	raw, err := os.ReadFile(filepath.Join(s.dir, stateFileName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("agent: read state: %w", err)
	}
	var p persisted
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, nil, fmt.Errorf("agent: parse %s: %w", stateFileName, err)
	}
	return key, &p, nil
}

func (s storage) saveState(p *persisted) error {
	raw, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("agent: encode state: %w", err)
	}
	return writeFileAtomic(filepath.Join(s.dir, stateFileName), raw)
}

func parseCerts(ders [][]byte) ([]*x509.Certificate, error) {
	out := make([]*x509.Certificate, 0, len(ders))
	for _, d := range ders {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// parseNonEmpty is parseCerts that also refuses an empty list.
func parseNonEmpty(ders [][]byte) ([]*x509.Certificate, error) {
	if len(ders) == 0 {
		return nil, errors.New("no certificates")
	}
	return parseCerts(ders)
}

func rawCerts(certs []*x509.Certificate) [][]byte {
	out := make([][]byte, len(certs))
	for i, c := range certs {
		out[i] = c.Raw
	}
	return out
}

// writeFileAtomic writes via a temporary file and rename, mode 0600, so a
// crash leaves the old file or the new one, never half of either.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return fmt.Errorf("agent: write %s: %w", filepath.Base(path), err)
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.Write(data)
	if werr == nil {
		werr = tmp.Chmod(0o600)
	}
	if werr == nil {
		werr = tmp.Sync()
	}
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp.Name(), path)
	}
	if werr != nil {
		return fmt.Errorf("agent: write %s: %w", filepath.Base(path), werr)
	}
	return nil
}
