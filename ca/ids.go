package ca

import (
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The namespaces inside a trust domain that belong to shortleaf itself. This
// file is the one owner of those rules: the admin API, the agent API and the
// agent all ask here.
const (
	// AgentPathPrefix holds agent IDs (spiffe://<td>/agent/<attestor>/<id>).
	AgentPathPrefix = "/agent/"
	// reservedPath holds the server's own identities; no entry and no
	// minted SVID may claim anything under it.
	reservedPath = "/shortleaf"
)

// ServerID is the SPIFFE ID of the server that runs the CA for td. The server
// presents it on the agent API, and agents accept no other.
func ServerID(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromSegments(td, "shortleaf", "server")
}

// IsAgentID reports whether id is an agent ID of td.
func IsAgentID(id spiffeid.ID, td spiffeid.TrustDomain) bool {
	return id.TrustDomain() == td && strings.HasPrefix(id.Path(), AgentPathPrefix)
}

// CheckWorkloadID is the rule for IDs that registration entries and minted
// SVIDs may carry: in td, with a path, outside the agent namespace and
// outside the namespace reserved for shortleaf's own identities. A refusal
// is a *RequestError naming field.
func CheckWorkloadID(field string, id spiffeid.ID, td spiffeid.TrustDomain) error {
	switch path := id.Path(); {
	case id.TrustDomain() != td:
		return requestErr(field, "%q is not in trust domain %q", id, td)
	case path == "":
		return requestErr(field, "%q has no path; workload IDs need one", id)
	case strings.HasPrefix(path, AgentPathPrefix):
		return requestErr(field, "%q is in %s, which is reserved for agents", id, AgentPathPrefix)
	case path == reservedPath || strings.HasPrefix(path, reservedPath+"/"):
		return requestErr(field, "%q is in %s/, which is reserved for shortleaf's own identities (the server's)", id, reservedPath)
	}
	return nil
}
