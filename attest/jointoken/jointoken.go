package jointoken

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Type is the attestation type recorded for agents attested this way.
const Type = "join_token"

var (
	idPattern     = regexp.MustCompile(`^[0-9a-f]{16}$`)
	secretPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`)
)

// ErrMalformed means a token does not have the "<id>.<secret>" shape.
var ErrMalformed = errors.New("jointoken: token is malformed (want <id>.<secret>)")

// Token is a freshly generated join token.
type Token struct {
	ID         string
	Secret     string // shown to the admin once
	SecretHash []byte // what the server stores
}

// String is the full token an agent presents.
func (t Token) String() string { return t.ID + "." + t.Secret }

// Generate makes a new random token.
func Generate() (Token, error) {
	id := make([]byte, 8)
	secret := make([]byte, 32)
	if _, err := rand.Read(id); err != nil {
		return Token{}, fmt.Errorf("jointoken: %w", err)
	}
	if _, err := rand.Read(secret); err != nil {
		return Token{}, fmt.Errorf("jointoken: %w", err)
	}
	s := base64.RawURLEncoding.EncodeToString(secret)
	return Token{ID: hex.EncodeToString(id), Secret: s, SecretHash: Hash(s)}, nil
}

// Hash is the stored form of a secret.
func Hash(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// Parse splits a presented token into its ID and the hash of its secret.
func Parse(token string) (id string, secretHash []byte, err error) {
	id, secret, ok := strings.Cut(token, ".")
	if !ok || !idPattern.MatchString(id) || !secretPattern.MatchString(secret) {
		return "", nil, ErrMalformed
	}
	return id, Hash(secret), nil
}

// AgentID is the SPIFFE ID of the agent attested with token ID id.
func AgentID(td spiffeid.TrustDomain, id string) (spiffeid.ID, error) {
	return spiffeid.FromSegments(td, "agent", Type, id)
}
