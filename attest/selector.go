package attest

import (
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
)

// Selector is one attested fact: Type names the attestor ("unix"), Value is
// "key:value" ("uid:1000").
type Selector struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

func (s Selector) String() string { return s.Type + ":" + s.Value }

// knownKeys lists, per selector type, the keys an attestor can produce and how
// each value must look. A selector outside this table can never match, so
// registering one is an error.
var knownKeys = map[string]map[string]*regexp.Regexp{
	"unix": {
		"uid":    regexp.MustCompile(`^[0-9]{1,10}$`),
		"gid":    regexp.MustCompile(`^[0-9]{1,10}$`),
		"user":   regexp.MustCompile(`^[a-zA-Z0-9._][a-zA-Z0-9._-]{0,63}\$?$`),
		"group":  regexp.MustCompile(`^[a-zA-Z0-9._][a-zA-Z0-9._-]{0,63}$`),
		"path":   regexp.MustCompile(`^/[^\x00]*$`),
		"sha256": regexp.MustCompile(`^[0-9a-f]{64}$`),
	},
	// Node selectors, from node attestors; entries use them as node
	// aliases (see IsNodeType).
	"join_token": {
		"id": regexp.MustCompile(`^[0-9a-f]{1,64}$`),
	},
	"x509pop": {
		"subject":      regexp.MustCompile(`^cn:[^\x00-\x1f]+$`),
		"ca":           regexp.MustCompile(`^fingerprint:[0-9a-f]{40}$`),
		"serialnumber": regexp.MustCompile(`^[0-9a-f]{1,40}$`),
	},
	"tpm": {
		"pub_hash": regexp.MustCompile(`^[0-9a-f]{64}$`),
	},
	"k8s_psat": {
		"cluster":          regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`),
		"agent_ns":         regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`),
		"agent_sa":         regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`),
		"agent_pod_name":   regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`),
		"agent_pod_uid":    regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`),
		"agent_node_name":  regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`),
		"agent_node_uid":   regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`),
		"agent_node_label": regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9./_-]{0,316}:([a-zA-Z0-9]([a-zA-Z0-9._-]{0,61}[a-zA-Z0-9])?)?$`),
	},
	// Kubernetes workloads (attest/k8s); names as the API allows them.
	"k8s": {
		"ns":              regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`),
		"sa":              regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`),
		"pod-name":        regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`),
		"pod-uid":         regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`),
		"node-name":       regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`),
		"pod-label":       regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9./_-]{0,316}:([a-zA-Z0-9]([a-zA-Z0-9._-]{0,61}[a-zA-Z0-9])?)?$`),
		"container-name":  regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`),
		"container-image": regexp.MustCompile(`^\S+$`), // the length is bounded for every selector
	},
}

// maxSelectorValue bounds a selector value (PATH_MAX).
const maxSelectorValue = 4096

// ParseSelector parses "type:key:value" and checks that the type and key are
// known and the value well formed.
func ParseSelector(s string) (Selector, error) {
	typ, value, ok := strings.Cut(s, ":")
	if !ok || typ == "" || value == "" {
		return Selector{}, fmt.Errorf("selector %q: want type:key:value", s)
	}
	sel := Selector{Type: typ, Value: value}
	return sel, sel.Validate()
}

// Validate checks a selector against the known types and keys.
func (s Selector) Validate() error {
	keys, ok := knownKeys[s.Type]
	if !ok {
		return fmt.Errorf("selector %q: unknown type %q (known: %s)", s, s.Type, strings.Join(KnownTypes(), ", "))
	}
	key, value, ok := strings.Cut(s.Value, ":")
	if !ok {
		return fmt.Errorf("selector %q: want type:key:value", s)
	}
	if len(value) > maxSelectorValue {
		// Named by its start: an error that echoes kilobytes helps no one.
		return fmt.Errorf("selector %q…: value is %d bytes, longer than %d", s.Type+":"+key+":"+value[:32], len(value), maxSelectorValue)
	}
	pattern, ok := keys[key]
	if !ok {
		return fmt.Errorf("selector %q: unknown key %q for type %q", s, key, s.Type)
	}
	if !pattern.MatchString(value) {
		return fmt.Errorf("selector %q: malformed value for %s:%s", s, s.Type, key)
	}
	return nil
}

// KnownTypes returns the selector types an entry may use, sorted.
func KnownTypes() []string { return slices.Sorted(maps.Keys(knownKeys)) }

// nodeTypes are the selector types node attestors produce. An entry uses
// them only as a node alias (parented to the server): an agent matches
// workloads by workload selectors (unix, k8s), never by these.
var nodeTypes = map[string]bool{"join_token": true, "x509pop": true, "tpm": true, "k8s_psat": true}

// IsNodeType reports whether typ is a node selector type.
func IsNodeType(typ string) bool { return nodeTypes[typ] }

// Subset reports whether every selector in want is among have.
func Subset(want, have []Selector) bool {
	if len(want) == 0 {
		return false
	}
	set := make(map[Selector]struct{}, len(have))
	for _, s := range have {
		set[s] = struct{}{}
	}
	for _, s := range want {
		if _, ok := set[s]; !ok {
			return false
		}
	}
	return true
}

// CheckIdentifiesCaller refuses a selector set made only of unix:path and
// unix:sha256: those name a file, and any user on the node can run a copy of
// it, so on their own they would hand the identity to every user. Adding a
// uid, gid, user or group selector ties the identity to an account.
func CheckIdentifiesCaller(sels []Selector) error {
	for _, s := range sels {
		key, _, _ := strings.Cut(s.Value, ":")
		if s.Type != "unix" || (key != "path" && key != "sha256") {
			return nil
		}
	}
	return errors.New("unix:path and unix:sha256 alone do not identify a caller (any user can run a copy of the file); add unix:uid, unix:gid, unix:user or unix:group")
}
