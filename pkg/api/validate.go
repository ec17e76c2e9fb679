package api

import (
	"errors"
	"regexp"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	"github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/pkg/datastore"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// TTL bounds for X.509-SVIDs.
const (
	MinX509SVIDTTL = time.Minute
	MaxX509SVIDTTL = 24 * time.Hour
	maxHintLength  = 128
	maxDNSNames    = 32
)

var dnsLabel = regexp.MustCompile(`^([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]{0,61}[a-zA-Z0-9])$`)

// parseWorkloadID checks a workload SPIFFE ID: well formed and allowed by
// ca.CheckWorkloadID (in td, with a path, outside reserved namespaces).
func parseWorkloadID(field, s string, td spiffeid.TrustDomain) (spiffeid.ID, error) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return spiffeid.ID{}, invalid(field, "%q is not a valid SPIFFE ID: %v", s, err)
	}
	if err := ca.CheckWorkloadID(field, id, td); err != nil {
		var re *ca.RequestError
		errors.As(err, &re)
		return spiffeid.ID{}, invalid(re.Field, "%s", re.Reason)
	}
	return id, nil
}

// parseParentID checks an entry's parent: an agent ID; the server's ID,
// which makes the entry a node alias; or a workload-shaped ID, a node
// alias's SPIFFE ID, whose entries are served to every agent of the alias.
func parseParentID(field, s string, td spiffeid.TrustDomain) (id spiffeid.ID, alias bool, err error) {
	id, err = spiffeid.FromString(s)
	if err != nil {
		return spiffeid.ID{}, false, invalid(field, "%q is not a valid SPIFFE ID: %v", s, err)
	}
	switch {
	case id == ca.ServerID(td):
		return id, true, nil
	case ca.IsAgentID(id, td):
		return id, false, nil
	case ca.CheckWorkloadID(field, id, td) == nil:
		return id, false, nil
	}
	return spiffeid.ID{}, false, invalid(field, "%q is neither an agent ID of %s (spiffe://%s/agent/...), nor %s (for a node alias), nor a node alias's SPIFFE ID",
		s, td, td, ca.ServerID(td))
}

// nodeTypes lists the node selector types.
func nodeTypes() []string {
	var out []string
	for _, t := range attest.KnownTypes() {
		if attest.IsNodeType(t) {
			out = append(out, t)
		}
	}
	return out
}

// parseAgentID checks an agent SPIFFE ID (spiffe://<td>/agent/...).
func parseAgentID(field, s string, td spiffeid.TrustDomain) (spiffeid.ID, error) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return spiffeid.ID{}, invalid(field, "%q is not a valid SPIFFE ID: %v", s, err)
	}
	if !ca.IsAgentID(id, td) {
		return spiffeid.ID{}, invalid(field, "%q is not an agent ID of %s (spiffe://%s/agent/...)", s, td, td)
	}
	return id, nil
}

// validateTTL checks a TTL in seconds (0 means the default) against the
// fixed range and the CA's max, the longest lifetime it gives in full.
func validateTTL(field string, seconds int32, maxTTL time.Duration) (time.Duration, error) {
	if seconds == 0 {
		return 0, nil
	}
	ttl := time.Duration(seconds) * time.Second
	if ttl < MinX509SVIDTTL || ttl > MaxX509SVIDTTL {
		return 0, invalid(field, "%s is out of range (%s to %s)", ttl, MinX509SVIDTTL, MaxX509SVIDTTL)
	}
	if ttl > maxTTL {
		return 0, invalid(field, "%s is above the server's max_x509_svid_ttl of %s (raise it, with intermediate_ttl at least twice as long)", ttl, maxTTL)
	}
	return ttl, nil
}

func validateDNSNames(field string, names []string) error {
	if len(names) > maxDNSNames {
		return invalid(field, "has %d names, more than %d", len(names), maxDNSNames)
	}
	for _, n := range names {
		if len(n) == 0 || len(n) > 253 {
			return invalid(field, "%q must be 1 to 253 characters", n)
		}
		labels := strings.Split(strings.TrimPrefix(n, "*."), ".")
		for _, l := range labels {
			if !dnsLabel.MatchString(l) {
				return invalid(field, "%q is not a valid DNS name", n)
			}
		}
	}
	return nil
}

// checkEntrySize refuses an entry larger than MaxEntryBytes, naming the
// list that makes it so: such an entry could never be sent to its agent.
func checkEntrySize(in *adminv1.Entry) error {
	size := proto.Size(in)
	if size <= MaxEntryBytes {
		return nil
	}
	field, largest := "entry", 0
	for _, f := range []struct {
		name   string
		values []string
	}{{"entry.selectors", in.GetSelectors()}, {"entry.federates_with", in.GetFederatesWith()}, {"entry.dns_names", in.GetDnsNames()}} {
		n := 0
		for _, v := range f.values {
			n += len(v)
		}
		if n > largest {
			field, largest = f.name, n
		}
	}
	return invalid(field, "makes the entry %d bytes, over the %d an entry may take (its agent receives it in sync messages of at most %d bytes); it holds %d bytes",
		size, MaxEntryBytes, SyncPageBytes, largest)
}

// entryFromProto validates an admin entry and converts it to the domain type.
func entryFromProto(in *adminv1.Entry, td spiffeid.TrustDomain, maxTTL time.Duration) (*datastore.Entry, error) {
	if in == nil {
		return nil, invalid("entry", "is required")
	}
	if err := checkEntrySize(in); err != nil {
		return nil, err
	}
	id, err := parseWorkloadID("entry.spiffe_id", in.GetSpiffeId(), td)
	if err != nil {
		return nil, err
	}
	parent, alias, err := parseParentID("entry.parent_id", in.GetParentId(), td)
	if err != nil {
		return nil, err
	}
	if len(in.GetSelectors()) == 0 {
		return nil, invalid("entry.selectors", "at least one selector is required")
	}
	sels := make([]attest.Selector, 0, len(in.GetSelectors()))
	for _, s := range in.GetSelectors() {
		sel, err := attest.ParseSelector(s)
		if err != nil {
			return nil, invalid("entry.selectors", "%v", err)
		}
		switch node := attest.IsNodeType(sel.Type); {
		case alias && !node:
			return nil, invalid("entry.selectors", "%q is a workload selector; a node alias (parented to %s) matches agents by node selectors (%s)",
				sel, parent, strings.Join(nodeTypes(), ", "))
		case !alias && node:
			return nil, invalid("entry.selectors", "%q is a node selector; it matches agents, so it belongs to a node alias (an entry parented to %s), whose SPIFFE ID is then this entry's parent",
				sel, ca.ServerID(td))
		}
		sels = append(sels, sel)
	}
	if !alias {
		if err := attest.CheckIdentifiesCaller(sels); err != nil {
			return nil, invalid("entry.selectors", "%v", err)
		}
	}
	ttl, err := validateTTL("entry.x509_svid_ttl", in.GetX509SvidTtlSeconds(), maxTTL)
	if err != nil {
		return nil, err
	}
	jwtTTL, err := validateTTL("entry.jwt_svid_ttl", in.GetJwtSvidTtlSeconds(), maxTTL)
	if err != nil {
		return nil, err
	}
	if err := validateDNSNames("entry.dns_names", in.GetDnsNames()); err != nil {
		return nil, err
	}
	for _, name := range in.GetFederatesWith() {
		ftd, err := spiffeid.TrustDomainFromString(name)
		if err != nil || name == "" {
			return nil, invalid("entry.federates_with", "%q is not a valid trust domain name", name)
		}
		if ftd == td {
			return nil, invalid("entry.federates_with", "%q is the entry's own trust domain", name)
		}
	}
	if len(in.GetHint()) > maxHintLength {
		return nil, invalid("entry.hint", "is longer than %d characters", maxHintLength)
	}
	return &datastore.Entry{
		ID:            in.GetId(),
		SPIFFEID:      id.String(),
		ParentID:      parent.String(),
		Selectors:     sels,
		X509SVIDTTL:   ttl,
		JWTSVIDTTL:    jwtTTL,
		FederatesWith: in.GetFederatesWith(),
		DNSNames:      in.GetDnsNames(),
		Hint:          in.GetHint(),
		Admin:         in.GetAdmin(),
	}, nil
}

func entryToProto(e *datastore.Entry) *adminv1.Entry {
	return &adminv1.Entry{
		Id:                 e.ID,
		SpiffeId:           e.SPIFFEID,
		ParentId:           e.ParentID,
		Selectors:          selectorStrings(e.Selectors),
		X509SvidTtlSeconds: int32(e.X509SVIDTTL / time.Second),
		DnsNames:           e.DNSNames,
		Hint:               e.Hint,
		Admin:              e.Admin,
		CreatedAt:          e.CreatedAt.Unix(),
		Revision:           e.Revision,
		JwtSvidTtlSeconds:  int32(e.JWTSVIDTTL / time.Second),
		FederatesWith:      e.FederatesWith,
	}
}

func selectorStrings(sels []attest.Selector) []string {
	out := make([]string, len(sels))
	for i, s := range sels {
		out[i] = s.String()
	}
	return out
}
