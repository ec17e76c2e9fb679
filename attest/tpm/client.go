package tpm

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	steptpm "go.step.sm/crypto/tpm"
	"go.step.sm/crypto/tpm/storage"
)

// errNoEK means the TPM reports no endorsement key.
var errNoEK = errors.New("tpm: the TPM has no endorsement key")

func wrap(op string, err error) error { return fmt.Errorf("tpm: %s: %w", op, err) }

// The names of the agent's AK, and of the key it attested (whose
// certification by the AK carries the server's nonce), in the TPM's key
// store.
const (
	akName  = "shortleaf-agent"
	keyName = "shortleaf-agent-nonce"
)

// Client is the agent's side: a TPM, opened per attestation.
type Client struct {
	// Open opens the TPM (a device, or the simulator in tests).
	Open func() (*steptpm.TPM, error)
	// EKCert, when set, is sent instead of the TPM's own EK certificate
	// (for TPMs whose certificate is not in their NV memory).
	EKCert *x509.Certificate
	ak     *steptpm.AK
	key    *steptpm.Key
}

// Type implements attest.NodeClient.
func (c *Client) Type() string { return Type }

// Payload implements attest.NodeClient: the EK and the AK's parameters,
// the AK made on first use and kept in the TPM's key store.
func (c *Client) Payload(ctx context.Context) ([]byte, error) {
	t, err := c.Open()
	if err != nil {
		return nil, wrap("open", err)
	}
	eks, err := t.GetEKs(ctx)
	if err != nil {
		return nil, wrap("read the endorsement keys", err)
	}
	if len(eks) == 0 {
		return nil, errNoEK
	}
	ek := eks[0]
	ak, err := t.GetAK(ctx, akName)
	if err != nil {
		if ak, err = t.CreateAK(ctx, akName); err != nil {
			return nil, wrap("create the attestation key", err)
		}
	}
	params, err := ak.AttestationParameters(ctx)
	if err != nil {
		return nil, wrap("the attestation key's parameters", err)
	}
	key, err := t.GetKey(ctx, keyName)
	if err != nil || key.AttestedBy() != akName {
		if err == nil {
			_ = t.DeleteKey(ctx, keyName)
		}
		if key, err = t.AttestKey(ctx, akName, keyName, steptpm.AttestKeyConfig{Algorithm: "ECDSA", Size: 256, QualifyingData: []byte("shortleaf")}); err != nil {
			return nil, wrap("create the key the AK attests", err)
		}
	}
	c.ak, c.key = ak, key
	p := Payload{AK: AKParameters{Public: params.Public, CreateData: params.CreateData, CreateAttestation: params.CreateAttestation, CreateSignature: params.CreateSignature}}
	switch {
	case c.EKCert != nil:
		p.EKCert = c.EKCert.Raw
	case ek.Certificate() != nil:
		p.EKCert = ek.Certificate().Raw
	default:
		if p.EKPublic, err = x509.MarshalPKIXPublicKey(ek.Public()); err != nil {
			return nil, wrap("the endorsement key", err)
		}
	}
	return json.Marshal(p)
}

// Answer implements attest.NodeClient: the TPM activates the credential.
func (c *Client) Answer(ctx context.Context, challenge []byte) ([]byte, error) {
	if c.ak == nil {
		return nil, errors.New("tpm: challenge before payload")
	}
	var ch Challenge
	if err := json.Unmarshal(challenge, &ch); err != nil {
		return nil, wrap("read the challenge", err)
	}
	secret, err := c.ak.ActivateCredential(ctx, steptpm.EncryptedCredential{Credential: ch.Credential, Secret: ch.Secret})
	if err != nil {
		return nil, wrap("activate the credential", err)
	}
	cert, err := c.key.Recertify(ctx, steptpm.RecertifyConfig{QualifyingData: ch.Nonce})
	if err != nil {
		return nil, wrap("have the AK sign the nonce", err)
	}
	return json.Marshal(Response{Secret: secret, Certification: AKParameters{Public: cert.Public, CreateData: cert.CreateData, //nolint:gosec // the one-time activation secret is the answer the server asked for
		CreateAttestation: cert.CreateAttestation, CreateSignature: cert.CreateSignature}})
}

// DefaultDevice is the kernel's TPM resource manager.
const DefaultDevice = "/dev/tpmrm0"

// OpenDevice opens the TPM at device (DefaultDevice when ""), keeping the
// AK's blobs in keyDir.
func OpenDevice(device, keyDir string) func() (*steptpm.TPM, error) {
	if device == "" {
		device = DefaultDevice
	}
	return func() (*steptpm.TPM, error) {
		if err := os.MkdirAll(keyDir, 0o700); err != nil {
			return nil, err
		}
		return steptpm.New(steptpm.WithDeviceName(device), steptpm.WithStore(storage.NewDirstore(keyDir)))
	}
}
