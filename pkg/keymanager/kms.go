package keymanager

import (
	"context"
	"crypto"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"go.step.sm/crypto/kms"
	"go.step.sm/crypto/kms/apiv1"
	// PKCS#11 needs cgo; without it the scheme reports that it is unavailable.
	_ "go.step.sm/crypto/kms/pkcs11"
)

// KMS keeps CA keys in a key management system named by URI, such as an HSM
// through PKCS#11:
//
//	pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=shortleaf?pin-source=/etc/shortleaf/pin
//
// Keys are generated inside the KMS and never leave it; the key reference
// recorded in the CA journal names the key (id and label), never the PIN.
type KMS struct {
	kms    apiv1.KeyManager
	scheme string
}

// NewKMS opens the KMS named by uri. The URI may carry a PIN; it is never
// logged or returned in an error.
func NewKMS(ctx context.Context, uri string) (*KMS, error) {
	scheme, _, ok := strings.Cut(uri, ":")
	if !ok || scheme != string(apiv1.PKCS11) {
		return nil, errors.New("keymanager: key_manager_uri must be a pkcs11: URI")
	}
	k, err := kms.New(ctx, apiv1.Options{Type: apiv1.PKCS11, URI: uri})
	if err != nil {
		return nil, fmt.Errorf("keymanager: open %s KMS: %s", scheme, redact(err.Error(), uri))
	}
	return &KMS{kms: k, scheme: scheme}, nil
}

// redact removes the URI (which may hold a PIN) from a message.
func redact(msg, uri string) string {
	return strings.ReplaceAll(msg, uri, "<key_manager_uri>")
}

// CreateKey generates a key inside the KMS, labelled name.
func (k *KMS) CreateKey(_ context.Context, name, keyType string) (crypto.Signer, string, error) {
	if !keyNamePattern.MatchString(name) {
		return nil, "", fmt.Errorf("keymanager: invalid key name %q", name)
	}
	alg, bits, err := KeyAlgorithm(keyType)
	if err != nil {
		return nil, "", err
	}
	id := make([]byte, 8)
	if _, err := rand.Read(id); err != nil {
		return nil, "", fmt.Errorf("keymanager: %w", err)
	}
	ref := fmt.Sprintf("%s:id=%s;object=%s", k.scheme, hex.EncodeToString(id), name)
	resp, err := k.kms.CreateKey(&apiv1.CreateKeyRequest{Name: ref, SignatureAlgorithm: alg, Bits: bits})
	if err != nil {
		return nil, "", fmt.Errorf("keymanager: create key %s: %w", name, err)
	}
	signer, err := k.kms.CreateSigner(&resp.CreateSignerRequest)
	if err != nil {
		return nil, "", fmt.Errorf("keymanager: open new key %s: %w", name, err)
	}
	return signer, ref, nil
}

// LoadKey opens a key created by CreateKey.
func (k *KMS) LoadKey(_ context.Context, keyRef string) (crypto.Signer, error) {
	if !strings.HasPrefix(keyRef, k.scheme+":") {
		return nil, fmt.Errorf("keymanager: key reference %q is not a %s reference", keyRef, k.scheme)
	}
	signer, err := k.kms.CreateSigner(&apiv1.CreateSignerRequest{SigningKey: keyRef})
	if err != nil {
		return nil, fmt.Errorf("keymanager: open key %s: %w", keyRef, err)
	}
	return signer, nil
}

// Close releases the KMS session.
func (k *KMS) Close() error { return k.kms.Close() }

// DeleteKey destroys a key in the KMS once its authority has left the journal.
func (k *KMS) DeleteKey(_ context.Context, keyRef string) error {
	d, ok := k.kms.(interface{ DeleteKey(string) error })
	if !ok {
		return nil // the KMS cannot delete; the key stays, unused
	}
	if err := d.DeleteKey(keyRef); err != nil {
		return fmt.Errorf("keymanager: delete key %s: %w", keyRef, err)
	}
	return nil
}
