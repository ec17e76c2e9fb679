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

	"github.com/shortleaf/shortleaf/pkg/safefile"
)

// Files in the agent's data directory, all mode 0600. The key and the SVID
// live in one file, written atomically with the previous version kept, so no
// crash can pair a key with a certificate that is not its own.
const (
	identityFileName = "agent_identity.json"
	// The layout before identityFileName, read once to migrate.
	legacyKeyFileName   = "agent_key.pem"
	legacyStateFileName = "agent_state.json"
)

// persisted is what the agent keeps across restarts besides its key.
type persisted struct {
	SVIDChain      [][]byte `json:"svid_chain"`
	Bundle         [][]byte `json:"bundle"`
	BundleSequence uint64   `json:"bundle_sequence"`
}

// identityFile is the on-disk form: the key (PKCS#8 DER) with its SVID.
type identityFile struct {
	Key []byte `json:"key"`
	persisted
}

type storage struct{ dir string }

// errNoIdentity means the data dir holds no identity at all.
var errNoIdentity = errors.New("agent: no stored identity")

// load returns the stored key, SVID chain and bundle, errNoIdentity when the
// agent has never attested. When the current file is unusable (torn by a
// disk fault, or its key does not match its SVID) the previous one is used
// and fellBack is true.
func (s storage) load() (key crypto.Signer, p *persisted, fellBack bool, err error) {
	path := filepath.Join(s.dir, identityFileName)
	key, p, err = readIdentity(path)
	if err == nil {
		return key, p, false, nil
	}
	prevKey, prevP, prevErr := readIdentity(path + safefile.PreviousSuffix)
	if prevErr == nil {
		return prevKey, prevP, true, nil
	}
	if errors.Is(err, os.ErrNotExist) && errors.Is(prevErr, os.ErrNotExist) {
		return s.loadLegacy()
	}
	return nil, nil, false, fmt.Errorf("agent: stored identity is unusable (%v), and so is the previous one (%v)", err, prevErr) //nolint:errorlint // both are reported
}

func readIdentity(path string) (crypto.Signer, *persisted, error) {
	raw, err := os.ReadFile(path) //nolint:gosec // in the agent's own data dir
	if err != nil {
		return nil, nil, err
	}
	var f identityFile
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, nil, fmt.Errorf("parse %s: %w", filepath.Base(path), err)
	}
	key, err := parseSigner(f.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	if err := checkPair(key, f.SVIDChain); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	return key, &f.persisted, nil
}

// checkPair makes sure key is the private half of the SVID's public key.
func checkPair(key crypto.Signer, chain [][]byte) error {
	if len(chain) == 0 {
		return errors.New("no SVID")
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return fmt.Errorf("SVID: %w", err)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(leaf.PublicKey) {
		return errors.New("the key does not match the SVID")
	}
	return nil
}

func parseSigner(der []byte) (crypto.Signer, error) {
	key, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key is a %T, not a signing key", key)
	}
	return signer, nil
}

// save writes the key with its SVID and bundle in one atomic step.
func (s storage) save(key crypto.Signer, p *persisted) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("agent: marshal key: %w", err)
	}
	raw, err := json.Marshal(identityFile{Key: der, persisted: *p})
	if err != nil {
		return fmt.Errorf("agent: encode state: %w", err)
	}
	if err := safefile.WriteKeepingPrevious(filepath.Join(s.dir, identityFileName), raw); err != nil {
		return fmt.Errorf("agent: save identity: %w", err)
	}
	return nil
}

// loadLegacy reads the two-file layout of earlier versions; the next save
// writes the single file.
func (s storage) loadLegacy() (crypto.Signer, *persisted, bool, error) {
	rawKey, err := os.ReadFile(filepath.Join(s.dir, legacyKeyFileName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, false, errNoIdentity
	}
	if err != nil {
		return nil, nil, false, fmt.Errorf("agent: %w", err)
	}
	block, _ := pem.Decode(rawKey)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, nil, false, fmt.Errorf("agent: %s holds no PKCS#8 private key", legacyKeyFileName)
	}
	key, err := parseSigner(block.Bytes)
	if err != nil {
		return nil, nil, false, fmt.Errorf("agent: %s: %w", legacyKeyFileName, err)
	}
	raw, err := os.ReadFile(filepath.Join(s.dir, legacyStateFileName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, false, errNoIdentity
	}
	if err != nil {
		return nil, nil, false, fmt.Errorf("agent: read state: %w", err)
	}
	var p persisted
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, nil, false, fmt.Errorf("agent: parse %s: %w", legacyStateFileName, err)
	}
	if err := checkPair(key, p.SVIDChain); err != nil {
		return nil, nil, false, fmt.Errorf("agent: %s and %s: %w", legacyKeyFileName, legacyStateFileName, err)
	}
	return key, &p, false, nil
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
