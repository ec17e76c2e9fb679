package workloadapi

import (
	"context"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/pkg/uds"
)

// Identity is one registration entry as the agent can serve it.
type Identity struct {
	EntryID   string
	SPIFFEID  spiffeid.ID
	Hint      string
	Selectors []attest.Selector
	// ChainDER is the DER chain, leaf first, concatenated; empty until the
	// agent has obtained an SVID for this entry.
	ChainDER []byte
	// KeyDER is the unencrypted PKCS#8 private key of the SVID.
	KeyDER []byte
	// Serial identifies the SVID, so streams can tell a renewal.
	Serial string
	// FederatesWith lists the foreign trust domains whose bundles this
	// identity's workloads receive.
	FederatesWith []spiffeid.TrustDomain
}

// ForeignBundle is a federated trust domain's bundle in the forms the
// Workload API sends.
type ForeignBundle struct {
	X509DER []byte // root certificates, DER, concatenated
	JWT     *jwtbundle.Bundle
	JWTJSON []byte
}

// State is an immutable snapshot of what the agent can serve.
type State struct {
	// Ready is false until the agent has synced with the server once.
	Ready       bool
	TrustDomain spiffeid.TrustDomain
	// BundleDER is the trust domain's root certificates, DER, concatenated.
	BundleDER []byte
	// JWTBundle holds the trust domain's JWT signing keys; JWTBundleJSON is
	// it as a JWK Set, as FetchJWTBundles sends it.
	JWTBundle     *jwtbundle.Bundle
	JWTBundleJSON []byte
	Identities    []*Identity
	// Federated holds the bundles of foreign trust domains, by trust domain.
	Federated map[spiffeid.TrustDomain]*ForeignBundle
}

// federatedFor returns the foreign bundles the given identities federate
// with, keyed by trust domain ID ("spiffe://td"), as X.509 DER or JWKS.
func (s *State) federatedFor(ids []*Identity, jwt bool) map[string][]byte {
	out := map[string][]byte{}
	for _, id := range ids {
		for _, td := range id.FederatesWith {
			fb, ok := s.Federated[td]
			if !ok {
				continue
			}
			if jwt {
				if fb.JWTJSON != nil {
					out[td.IDString()] = fb.JWTJSON
				}
			} else if len(fb.X509DER) > 0 {
				out[td.IDString()] = fb.X509DER
			}
		}
	}
	return out
}

// JWTSource obtains JWT-SVIDs for an identity. The agent implements it with
// a cache per (identity, audience).
type JWTSource interface {
	FetchJWTSVID(ctx context.Context, entryID string, audience []string) (string, error)
}

// Source provides the current state and a channel closed at its next change.
type Source interface {
	Current() (*State, <-chan struct{})
}

// Attestor turns a caller's peer credentials into selectors. ctx ends with
// the caller's call.
type Attestor interface {
	Attest(ctx context.Context, cred uds.PeerCred) ([]attest.Selector, error)
}

// match returns the identities whose selectors are all among sels.
func (s *State) match(sels []attest.Selector) []*Identity {
	have := make(map[attest.Selector]struct{}, len(sels))
	for _, sel := range sels {
		have[sel] = struct{}{}
	}
	var out []*Identity
next:
	for _, id := range s.Identities {
		if len(id.Selectors) == 0 {
			continue
		}
		for _, want := range id.Selectors {
			if _, ok := have[want]; !ok {
				continue next
			}
		}
		out = append(out, id)
	}
	return out
}
