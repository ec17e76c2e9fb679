package ca

import "github.com/spiffe/go-spiffe/v2/spiffeid"

// ServerID is the SPIFFE ID of the server that runs the CA for td. The server
// presents it on the agent API, and agents accept no other.
func ServerID(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromSegments(td, "shortleaf", "server")
}
