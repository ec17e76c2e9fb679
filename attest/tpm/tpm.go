package tpm

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"slices"
	"time"

	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/smallstep/go-attestation/attest"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	sl "github.com/shortleaf/shortleaf/attest"
)

// Type is the attestor's name and the type of its selectors.
const Type = "tpm"

// MaxPayload bounds the payload (an EK certificate and the AK's
// parameters take a few KiB).
const MaxPayload = 24 << 10

// Payload is what the agent sends first.
type Payload struct {
	// EKCert is the EK certificate (DER), when the TPM holds one.
	EKCert []byte `json:"ek_cert,omitempty"`
	// EKPublic is the EK public key (PKIX DER), sent when there is no
	// certificate; it must then be allowed by its hash.
	EKPublic []byte `json:"ek_public,omitempty"`
	// AK holds the attestation key's TPM structures.
	AK AKParameters `json:"ak"`
}

// AKParameters are the AK's TPMT_PUBLIC and its creation data, attestation
// and signature, as the TPM produced them.
type AKParameters struct {
	Public            []byte `json:"public"`
	CreateData        []byte `json:"create_data"`
	CreateAttestation []byte `json:"create_attestation"`
	CreateSignature   []byte `json:"create_signature"`
}

// Challenge is the credential to activate and the nonce the AK signs.
type Challenge struct {
	Credential []byte `json:"credential"`
	Secret     []byte `json:"secret"`
	Nonce      []byte `json:"nonce"`
}

// Response is the activated credential's secret and a TPM2_Certify, by the
// AK, of a key the AK attested, with the nonce as its qualifying data: the
// AK's signature over the nonce.
type Response struct {
	Secret        []byte       `json:"secret"`
	Certification AKParameters `json:"certification"`
}

// ParsePayload reads and bounds an agent's payload.
func ParsePayload(raw []byte) (*Payload, error) {
	if len(raw) > MaxPayload {
		return nil, sl.Malformed("tpm payload is %d bytes, more than %d", len(raw), MaxPayload)
	}
	var p Payload
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, sl.Malformed("tpm payload: %v", err)
	}
	switch {
	case len(p.EKCert) == 0 && len(p.EKPublic) == 0:
		return nil, sl.Malformed("tpm payload: neither ek_cert nor ek_public is set")
	case len(p.AK.Public) == 0 || len(p.AK.CreateData) == 0 || len(p.AK.CreateAttestation) == 0 || len(p.AK.CreateSignature) == 0:
		return nil, sl.Malformed("tpm payload: the ak parameters are incomplete")
	}
	return &p, nil
}

// PubHash is the hex SHA-256 of a public key's PKIX DER: the EK's identity.
func PubHash(pub any) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// Server verifies TPM attestations.
type Server struct {
	manufacturers *x509.CertPool // nil: no EK certificate is trusted by its chain
	allowed       []string       // EK public key hashes allowed without a chain
	now           func() time.Time
}

// NewServer returns the attestor trusting EK certificates issued by
// manufacturerCAs and EKs whose public key hash is in allowedHashes.
func NewServer(manufacturerCAs []*x509.Certificate, allowedHashes []string, now func() time.Time) (*Server, error) {
	if len(manufacturerCAs) == 0 && len(allowedHashes) == 0 {
		return nil, errors.New("tpm: neither manufacturer CAs nor allowed EK hashes are configured; no TPM could attest")
	}
	s := &Server{allowed: allowedHashes, now: now}
	if len(manufacturerCAs) > 0 {
		s.manufacturers = x509.NewCertPool()
		for _, c := range manufacturerCAs {
			s.manufacturers.AddCert(c)
		}
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s, nil
}

// Type implements attest.NodeServer.
func (s *Server) Type() string { return Type }

// oidSubjectAltName is the SAN extension, which EK certificates mark
// critical with a directory name (TPM manufacturer, model, version) that
// Go does not handle.
var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// ekPublic checks the EK: by its certificate's chain, or by its hash.
func (s *Server) ekPublic(p *Payload) (pub any, hash string, err error) {
	if len(p.EKCert) > 0 {
		cert, err := x509.ParseCertificate(p.EKCert)
		if err != nil {
			return nil, "", sl.Malformed("tpm payload: ek_cert: %v", err)
		}
		if hash, err = PubHash(cert.PublicKey); err != nil {
			return nil, "", sl.Malformed("tpm payload: ek_cert key: %v", err)
		}
		if slices.Contains(s.allowed, hash) {
			return cert.PublicKey, hash, nil
		}
		if s.manufacturers == nil {
			return nil, "", sl.Refused("tpm: EK %s is not allowed and no manufacturer CA is configured", hash)
		}
		cert.UnhandledCriticalExtensions = slices.DeleteFunc(slices.Clone(cert.UnhandledCriticalExtensions),
			func(o asn1.ObjectIdentifier) bool { return o.Equal(oidSubjectAltName) })
		if _, err := cert.Verify(x509.VerifyOptions{Roots: s.manufacturers, CurrentTime: s.now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			return nil, "", sl.Refused("tpm: EK certificate %s does not verify against the manufacturer CAs: %v", cert.SerialNumber.Text(16), err)
		}
		return cert.PublicKey, hash, nil
	}
	pub, err = x509.ParsePKIXPublicKey(p.EKPublic)
	if err != nil {
		return nil, "", sl.Malformed("tpm payload: ek_public: %v", err)
	}
	if hash, err = PubHash(pub); err != nil {
		return nil, "", sl.Malformed("tpm payload: ek_public: %v", err)
	}
	if !slices.Contains(s.allowed, hash) {
		return nil, "", sl.Refused("tpm: EK %s has no certificate and is not in the allow list", hash)
	}
	return pub, hash, nil
}

// Attest implements attest.NodeServer.
func (s *Server) Attest(ctx context.Context, td spiffeid.TrustDomain, payload []byte, challenge sl.Challenger) (*sl.NodeResult, error) {
	p, err := ParsePayload(payload)
	if err != nil {
		return nil, err
	}
	ekPub, hash, err := s.ekPublic(p)
	if err != nil {
		return nil, err
	}
	// Generate checks that the AK is a restricted signing key whose
	// creation the TPM attested, and encrypts a fresh secret to the EK,
	// bound to the AK's name.
	activation := attest.ActivationParameters{TPMVersion: attest.TPMVersion20, EK: ekPub, AK: attest.AttestationParameters{
		Public: p.AK.Public, CreateData: p.AK.CreateData, CreateAttestation: p.AK.CreateAttestation, CreateSignature: p.AK.CreateSignature}}
	secret, cred, err := activation.Generate()
	if err != nil {
		return nil, sl.Refused("tpm: the AK is not a TPM-made attestation key: %v", err)
	}
	nonce, err := sl.NewNonce()
	if err != nil {
		return nil, err
	}
	resp, err := sl.Ask[Response](ctx, challenge, Challenge{Credential: cred.Credential, Secret: cred.Secret, Nonce: nonce}, "tpm challenge response")
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare(resp.Secret, secret) != 1 {
		return nil, sl.Refused("tpm: the credential was not activated by the TPM of EK %s with this AK", hash)
	}
	if err := checkNonceSigned(p.AK.Public, resp.Certification, nonce); err != nil {
		return nil, sl.Refused("tpm: the AK did not sign the nonce: %v", err)
	}
	id, err := spiffeid.FromSegments(td, "agent", Type, hash)
	if err != nil {
		return nil, err
	}
	return &sl.NodeResult{AgentID: id, Selectors: []sl.Selector{{Type: Type, Value: "pub_hash:" + hash}}}, nil
}

// checkNonceSigned checks a TPM2_Certify made by the AK (akPublic, a
// TPMT_PUBLIC): signed by the AK, over a TPM-made key, with nonce as its
// qualifying data.
func checkNonceSigned(akPublic []byte, c AKParameters, nonce []byte) error {
	ak, err := attest.ParseAKPublic(attest.TPMVersion20, akPublic)
	if err != nil {
		return err
	}
	cert := attest.CertificationParameters{Public: c.Public, CreateData: c.CreateData, CreateAttestation: c.CreateAttestation, CreateSignature: c.CreateSignature}
	if err := cert.Verify(attest.VerifyOpts{Public: ak.Public, Hash: ak.Hash}); err != nil {
		return err
	}
	att, err := tpm2.DecodeAttestationData(c.CreateAttestation)
	if err != nil {
		return err
	}
	if subtle.ConstantTimeCompare(att.ExtraData, nonce) != 1 {
		return errors.New("the certification is for another nonce")
	}
	return nil
}
