package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
)

// Bounds on RSA public keys the CA accepts. Below the minimum a key is weak;
// above the maximum every signature check costs an attacker nothing and the
// CA a great deal, so the bound is checked before any signature is verified.
const (
	MinRSABits     = 2048
	MaxRSABits     = 4096
	rsaExponentF4  = 65537
	publicKeyField = "public_key"
)

// CheckPublicKey is the one rule for keys the CA will certify or whose
// signatures it will check: EC P-256 or P-384, Ed25519, or RSA of 2048–4096
// bits with exponent 65537. Anything else is a *RequestError naming
// "public_key". It costs no signature operation, so it runs first.
func CheckPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return requestErr(publicKeyField, "EC curve %s is not allowed (P-256 or P-384)", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if bits := k.N.BitLen(); bits < MinRSABits || bits > MaxRSABits {
			return requestErr(publicKeyField, "RSA key of %d bits is not allowed (%d to %d bits)", bits, MinRSABits, MaxRSABits)
		}
		if k.E != rsaExponentF4 {
			return requestErr(publicKeyField, "RSA exponent %d is not allowed (only 65537)", k.E)
		}
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return requestErr(publicKeyField, "Ed25519 key of %d bytes is malformed", len(k))
		}
	case nil:
		return requestErr(publicKeyField, "is missing")
	default:
		return requestErr(publicKeyField, "unsupported key type %T (EC P-256/P-384, Ed25519 or RSA 2048–4096)", pub)
	}
	return nil
}
