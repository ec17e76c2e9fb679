package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Record is one audited event. The caller fills in what happened; the log
// adds Seq, Replica, Prev and Hash when it writes the record.
type Record struct {
	// Seq numbers the records of one replica's chain from 1, with no gaps.
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	Replica string    `json:"replica,omitempty"`
	// Actor is who asked: an agent's SPIFFE ID, "admin uid=<uid> user=<name>"
	// on the admin socket, "server" for the server's own work, or the peer
	// address of a node that is not yet an agent.
	Actor  string `json:"actor"`
	Action string `json:"action"`
	// Object is what the action was on: an entry ID, an agent ID, a trust
	// domain, an authority ID.
	Object string `json:"object,omitempty"`
	Result string `json:"result"`
	// Reason says why a request was refused or failed.
	Reason string `json:"reason,omitempty"`

	// For certificates and tokens: whose identity, which serial (hex) or
	// token expiry, and the key that signed it (X.509 subject key ID in hex,
	// or JWT kid).
	SPIFFEID    string    `json:"spiffe_id,omitempty"`
	Serial      string    `json:"serial,omitempty"`
	SignerKeyID string    `json:"signer_key_id,omitempty"`
	NotBefore   time.Time `json:"not_before,omitzero"`
	NotAfter    time.Time `json:"not_after,omitzero"`

	// Details holds what else identifies the event (the attestor, an entry's
	// SPIFFE ID). Never a secret.
	Details map[string]string `json:"details,omitempty"`

	// Checkpoint is set on the log's own signed checkpoints.
	Checkpoint *Checkpoint `json:"checkpoint,omitempty"`

	// Prev is the Hash of the record before this one in the chain.
	Prev string `json:"prev"`
	// Hash is the SHA-256 of the record's line up to (not including) the
	// hash field: see encode.
	Hash string `json:"hash,omitempty"`
}

// Checkpoint is the CA's signature over the chain's head: everything up to
// and including record Seq, whose hash is Head.
type Checkpoint struct {
	Seq  uint64 `json:"seq"`
	Head string `json:"head"`
	// Interval is how often the log writes checkpoints, so a verifier knows
	// when the next one was due.
	Interval Duration `json:"interval"`
	// Final marks the checkpoint written when the log was closed.
	Final bool `json:"final,omitempty"`
	// Signature over CheckpointMessage, by the first certificate of Chain
	// (the active intermediate), DER certificates base64.
	Signature []byte   `json:"signature,omitempty"`
	Chain     [][]byte `json:"chain,omitempty"`
}

// Duration is a time.Duration written as Go duration text ("1m0s").
type Duration time.Duration

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	*d = Duration(v)
	return err
}

// Results.
const (
	ResultOK      = "ok"
	ResultDenied  = "denied"
	ResultInvalid = "invalid"
	ResultError   = "error"
)

// Actions. Admin calls are recorded as "admin.<Method>" (admin.CreateEntry).
const (
	ActionX509SVIDIssue    = "x509svid.issue"
	ActionJWTSVIDIssue     = "jwtsvid.issue"
	ActionAgentAttest      = "agent.attest"
	ActionAgentRenew       = "agent.renew"
	ActionCATransition     = "ca.transition"
	ActionBundle           = "ca.bundle"
	ActionLogOpened        = "audit.opened"
	ActionLogCheckpoint    = "audit.checkpoint"
	ActionLogRetention     = "audit.retention"
	ActionAttestSuppressed = "agent.attest.suppressed"
)

// DetailRoots is the detail of a ca.bundle record that lists the bundle's
// root certificates (base64 DER, space-separated).
const DetailRoots = "roots"

// ActorServer is the actor of the server's own work (rotation, the log).
const ActorServer = "server"

// genesis is the Prev of the first record of a chain.
var genesis = hex.EncodeToString(make([]byte, sha256.Size))

// hashField ends every line: `,"hash":"<64 hex>"}`.
const (
	hashFieldPrefix = `,"hash":"`
	hashFieldLen    = len(hashFieldPrefix) + 2*sha256.Size + len(`"}`)
)

// encode marshals r (without its Hash) and returns the line to write, hash
// field and newline included, with the hash it carries. The hash covers the
// exact bytes before the hash field, so a verifier checks it without
// re-encoding the record.
func encode(r *Record) (line []byte, hash string, err error) {
	r.Hash = ""
	body, err := json.Marshal(r)
	if err != nil {
		return nil, "", fmt.Errorf("audit: encode record: %w", err)
	}
	sum := sha256.Sum256(body)
	hash = hex.EncodeToString(sum[:])
	line = make([]byte, 0, len(body)+hashFieldLen)
	line = append(line, body[:len(body)-1]...)
	line = append(line, hashFieldPrefix...)
	line = append(line, hash...)
	line = append(line, `"}`...)
	line = append(line, '\n')
	return line, hash, nil
}

// errAltered says a line's hash does not match its content.
var errAltered = errors.New("its hash does not match its content (the record was altered)")

// decode parses one line (without its newline) and checks that its hash
// covers its content.
func decode(line []byte) (Record, error) {
	var r Record
	if err := json.Unmarshal(line, &r); err != nil {
		return r, fmt.Errorf("not a JSON record: %w", err)
	}
	n := len(line) - hashFieldLen
	if n <= 0 || !bytes.Equal(line[n:n+len(hashFieldPrefix)], []byte(hashFieldPrefix)) {
		return r, errors.New("it does not end with its hash field")
	}
	body := make([]byte, 0, n+1)
	body = append(append(body, line[:n]...), '}')
	sum := sha256.Sum256(body)
	if hex.EncodeToString(sum[:]) != r.Hash {
		return r, errAltered
	}
	return r, nil
}

// CheckpointMessage is what a checkpoint's signature covers.
func CheckpointMessage(replica string, c *Checkpoint, at time.Time) []byte {
	return fmt.Appendf(nil, "shortleaf audit checkpoint v1\nreplica=%s\nseq=%d\nhead=%s\ntime=%s\nfinal=%t\n",
		replica, c.Seq, c.Head, at.UTC().Format(time.RFC3339Nano), c.Final)
}
