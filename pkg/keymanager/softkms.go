package keymanager

import (
	"context"
	"crypto"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"go.step.sm/crypto/kms/apiv1"
	"go.step.sm/crypto/kms/softkms"
	"go.step.sm/crypto/pemutil"

	"github.com/shortleaf/shortleaf/pkg/safefile"
)

// Config configures the software key manager.
type Config struct {
	// Dir holds the key files.
	Dir string
	// Passphrase encrypts every key file. Empty means unencrypted (dev only).
	Passphrase []byte
}

// Soft keeps CA keys in encrypted PKCS#8 files through softkms.
type Soft struct {
	cfg Config
	kms *softkms.SoftKMS
}

const softPrefix = "softkms:"

var keyNamePattern = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,128}$`)

// New returns a software key manager storing keys in cfg.Dir.
func New(cfg Config) (*Soft, error) {
	if cfg.Dir == "" {
		return nil, errors.New("keymanager: key directory is required")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("keymanager: create key directory: %w", err)
	}
	if _, err := safefile.RemoveTemps(cfg.Dir); err != nil {
		return nil, fmt.Errorf("keymanager: %w", err)
	}
	k, err := softkms.New(context.Background(), apiv1.Options{Type: apiv1.SoftKMS})
	if err != nil {
		return nil, fmt.Errorf("keymanager: softkms: %w", err)
	}
	return &Soft{cfg: cfg, kms: k}, nil
}

// KeyAlgorithm maps a shortleaf key type name to a KMS signature algorithm and
// RSA size.
func KeyAlgorithm(keyType string) (apiv1.SignatureAlgorithm, int, error) {
	switch keyType {
	case "ec-p256", "":
		return apiv1.ECDSAWithSHA256, 0, nil
	case "ec-p384":
		return apiv1.ECDSAWithSHA384, 0, nil
	case "rsa-2048":
		return apiv1.SHA256WithRSA, 2048, nil
	case "rsa-4096":
		return apiv1.SHA256WithRSA, 4096, nil
	default:
		return 0, 0, fmt.Errorf("keymanager: unknown key type %q (ec-p256, ec-p384, rsa-2048, rsa-4096)", keyType)
	}
}

// CreateKey makes a new key, writes it to <dir>/<name>.key (0600, encrypted)
// before returning, and returns its signer and reference. The file is written
// to a temporary name and renamed, so a crash never leaves half a key.
func (s *Soft) CreateKey(_ context.Context, name, keyType string) (crypto.Signer, string, error) {
	if !keyNamePattern.MatchString(name) {
		return nil, "", fmt.Errorf("keymanager: invalid key name %q", name)
	}
	alg, bits, err := KeyAlgorithm(keyType)
	if err != nil {
		return nil, "", err
	}
	resp, err := s.kms.CreateKey(&apiv1.CreateKeyRequest{Name: name, SignatureAlgorithm: alg, Bits: bits})
	if err != nil {
		return nil, "", fmt.Errorf("keymanager: create key: %w", err)
	}
	signer, ok := resp.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, "", fmt.Errorf("keymanager: created key is %T, not a signer", resp.PrivateKey)
	}
	opts := []pemutil.Options{pemutil.WithPKCS8(true)}
	if len(s.cfg.Passphrase) > 0 {
		opts = append(opts, pemutil.WithPassword(s.cfg.Passphrase))
	}
	block, err := pemutil.Serialize(signer, opts...)
	if err != nil {
		return nil, "", fmt.Errorf("keymanager: serialize key: %w", err)
	}
	file := name + ".key"
	if err := safefile.Write(filepath.Join(s.cfg.Dir, file), pem.EncodeToMemory(block)); err != nil {
		return nil, "", err
	}
	return signer, softPrefix + file, nil
}

// LoadKey opens a key created by CreateKey.
func (s *Soft) LoadKey(_ context.Context, keyRef string) (crypto.Signer, error) {
	file, ok := strings.CutPrefix(keyRef, softPrefix)
	if !ok || !keyNamePattern.MatchString(strings.TrimSuffix(file, ".key")) {
		return nil, fmt.Errorf("keymanager: key reference %q is not a softkms reference", keyRef)
	}
	path := filepath.Join(s.cfg.Dir, file)
	if err := safefile.CheckPrivateFile(path); err != nil {
		return nil, fmt.Errorf("keymanager: key %s: %w", keyRef, err)
	}
	req := &apiv1.CreateSignerRequest{SigningKey: path}
	if len(s.cfg.Passphrase) > 0 {
		req.Password = s.cfg.Passphrase
	}
	signer, err := s.kms.CreateSigner(req)
	if err != nil {
		// The wrapped error may name the file but never holds key material.
		return nil, fmt.Errorf("keymanager: open key %s (wrong passphrase?): %w", keyRef, err)
	}
	return signer, nil
}

// ListKeys returns the references of every key file in the directory.
func (s *Soft) ListKeys(_ context.Context) ([]string, error) {
	entries, err := os.ReadDir(s.cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("keymanager: %w", err)
	}
	var refs []string
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".key")
		if ok && e.Type().IsRegular() && keyNamePattern.MatchString(name) {
			refs = append(refs, softPrefix+e.Name())
		}
	}
	return refs, nil
}

// DeleteKey removes a key file once its authority has left the journal.
// A missing file is not an error.
func (s *Soft) DeleteKey(_ context.Context, keyRef string) error {
	file, ok := strings.CutPrefix(keyRef, softPrefix)
	if !ok || !keyNamePattern.MatchString(strings.TrimSuffix(file, ".key")) {
		return fmt.Errorf("keymanager: key reference %q is not a softkms reference", keyRef)
	}
	if err := os.Remove(filepath.Join(s.cfg.Dir, file)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("keymanager: delete key %s: %w", keyRef, err)
	}
	return nil
}

// SealKey encrypts key under the passphrase as PKCS#8 PEM, so that it can be
// kept in the datastore (a root every replica signs with). Without a
// passphrase (dev mode) the PEM is not encrypted.
func (s *Soft) SealKey(_ context.Context, key crypto.Signer) ([]byte, error) {
	opts := []pemutil.Options{pemutil.WithPKCS8(true)}
	if len(s.cfg.Passphrase) > 0 {
		opts = append(opts, pemutil.WithPassword(s.cfg.Passphrase))
	}
	block, err := pemutil.Serialize(key, opts...)
	if err != nil {
		return nil, fmt.Errorf("keymanager: seal key: %w", err)
	}
	return pem.EncodeToMemory(block), nil
}

// UnsealKey opens a key sealed by SealKey with the same passphrase.
func (s *Soft) UnsealKey(_ context.Context, sealed []byte) (crypto.Signer, error) {
	opts := []pemutil.Options{}
	if len(s.cfg.Passphrase) > 0 {
		opts = append(opts, pemutil.WithPassword(s.cfg.Passphrase))
	}
	key, err := pemutil.Parse(sealed, opts...)
	if err != nil {
		// pemutil's errors name no key material.
		return nil, fmt.Errorf("keymanager: unseal key (wrong passphrase?): %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("keymanager: sealed key is %T, not a signer", key)
	}
	return signer, nil
}
