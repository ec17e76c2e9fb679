package ca

import (
	"crypto/x509"
	"encoding/asn1"
	"errors"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// MaxCSRSize bounds a DER CSR; a P-256 CSR with a SPIFFE ID is a few hundred bytes.
const MaxCSRSize = 8 << 10

var oidExtensionSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// ParseX509SVIDCSR parses a DER CSR for an X.509-SVID, checks its signature and
// that it asks for nothing beyond want: at most one URI SAN, equal to want, no
// other SANs and no other extensions. Every failure is a *RequestError naming
// the field at fault.
func ParseX509SVIDCSR(der []byte, want spiffeid.ID) (*x509.CertificateRequest, error) {
	if len(der) == 0 {
		return nil, requestErr("csr", "is empty")
	}
	if len(der) > MaxCSRSize {
		return nil, requestErr("csr", "is %d bytes, larger than the limit of %d", len(der), MaxCSRSize)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, requestErr("csr", "malformed: %v", err)
	}
	// The key's bounds first: they cost nothing, while a signature check on
	// an oversized RSA key costs the CA milliseconds per request.
	if err := checkCSRKey(csr); err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, requestErr("csr.signature", "does not verify: %v", err)
	}
	switch len(csr.URIs) {
	case 0:
	case 1:
		got, err := spiffeid.FromURI(csr.URIs[0])
		if err != nil {
			return nil, requestErr("csr.uri_sans", "%q is not a valid SPIFFE ID: %v", csr.URIs[0], err)
		}
		if got != want {
			return nil, requestErr("csr.uri_sans", "asks for %q, not the requested SPIFFE ID %q", got, want)
		}
	default:
		return nil, requestErr("csr.uri_sans", "has %d URI SANs; an X.509-SVID has exactly one", len(csr.URIs))
	}
	if len(csr.DNSNames) > 0 || len(csr.EmailAddresses) > 0 || len(csr.IPAddresses) > 0 {
		return nil, requestErr("csr.sans", "asks for DNS, email or IP SANs; they come from the registration entry only")
	}
	for _, ext := range csr.Extensions {
		if !ext.Id.Equal(oidExtensionSubjectAltName) {
			return nil, requestErr("csr.extensions", "asks for extension %s; only subjectAltName is allowed", ext.Id)
		}
	}
	return csr, nil
}

func checkCSRKey(csr *x509.CertificateRequest) error {
	if err := CheckPublicKey(csr.PublicKey); err != nil {
		var re *RequestError
		if errors.As(err, &re) {
			return requestErr("csr.public_key", "%s", re.Reason)
		}
		return err
	}
	return nil
}
