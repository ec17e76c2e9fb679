package workloadapi

import (
	"context"
	"slices"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/pkg/uds"
)

// Identity is one registration entry as the agent can serve it: the entry
// and, once the agent has obtained one, its X.509-SVID. Both are shared with
// the agent's own records (an agent may hold 100k), so an identity costs
// two pointers.
type Identity struct {
	*Registration
	// SVID is nil until the agent has obtained one for the entry.
	*SVID
}

// Registration is an entry as the agent holds it.
type Registration struct {
	EntryID   string
	SPIFFEID  spiffeid.ID
	Hint      string
	Selectors []attest.Selector
	// FederatesWith lists the foreign trust domains whose bundles this
	// identity's workloads receive.
	FederatesWith []spiffeid.TrustDomain
}

// SVID is an X.509-SVID with its key.
type SVID struct {
	// LeafDER is the X.509-SVID, DER. IntermediatesDER is the rest of its
	// chain, DER, concatenated, shared by every SVID the same intermediate
	// signed.
	LeafDER          []byte
	IntermediatesDER []byte
	// KeyDER is the unencrypted PKCS#8 private key of the SVID.
	KeyDER []byte
	// Serial identifies the SVID, so streams can tell a renewal.
	Serial string
}

// HasSVID reports whether the agent holds an SVID for the identity.
func (id *Identity) HasSVID() bool { return id.SVID != nil }

// ChainDER is the chain, leaf first, DER, concatenated, as the Workload API
// sends it; nil without an SVID.
func (id *Identity) ChainDER() []byte {
	if id.SVID == nil {
		return nil
	}
	out := make([]byte, 0, len(id.LeafDER)+len(id.IntermediatesDER))
	return append(append(out, id.LeafDER...), id.IntermediatesDER...)
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
	// BySelector, when set, indexes Identities by selector: each identity
	// with selectors is listed (by its place) under one of them. match
	// then looks only at the identities listed under the caller's
	// selectors instead of at every one.
	BySelector map[attest.Selector][]int32
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

// Demand is implemented by a Source that obtains SVIDs only for the
// identities workloads ask for (the agent with x509_svid_cache_max_size):
// Want is told the identities a caller matched each time its fetch looks,
// so what open streams use stays wanted and an SVID not held yet is
// obtained.
type Demand interface {
	Want(ids []*Identity)
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
	matches := func(id *Identity) bool {
		if len(id.Selectors) == 0 {
			return false
		}
		for _, want := range id.Selectors {
			if _, ok := have[want]; !ok {
				return false
			}
		}
		return true
	}
	var out []*Identity
	if s.BySelector == nil {
		for _, id := range s.Identities {
			if matches(id) {
				out = append(out, id)
			}
		}
		return out
	}
	var places []int32
	for sel := range have {
		for _, i := range s.BySelector[sel] {
			if matches(s.Identities[i]) {
				places = append(places, i)
			}
		}
	}
	slices.Sort(places) // the served order
	for _, i := range places {
		out = append(out, s.Identities[i])
	}
	return out
}
