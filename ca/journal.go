package ca

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"sync"
)

// The CA's state is kept in records a Journal stores: one cluster record
// shared by every replica of the trust domain (the roots, the bundle
// sequence, taints and revocations) and one record per replica (its own
// intermediates and JWT keys, which only it writes). Every write compares the
// revisions it read, so two replicas never undo each other's change: the
// loser re-reads and applies its change again.

// Journal persists the CA's records.
type Journal interface {
	// LoadCAJournal returns every record; absent records have Revision 0.
	LoadCAJournal(ctx context.Context) (JournalState, error)
	// SaveCAJournal applies w in one atomic write and returns the revision
	// the written records now carry. A record changed since it was read
	// refuses the whole write with ErrJournalConflict; a leader write made
	// by a replica that no longer leads is refused with ErrNotLeader.
	SaveCAJournal(ctx context.Context, w JournalWrite) (revision int64, err error)
}

// JournalRecord is one stored record and the revision it was read at (0:
// absent).
type JournalRecord struct {
	Data     []byte
	Revision int64
}

// JournalState is every record of a trust domain's CA.
type JournalState struct {
	Cluster  JournalRecord
	Replicas map[string]JournalRecord
	// Live names the replicas that hold their lease now; nil when the store
	// cannot tell (a single server on a local file).
	Live map[string]bool
}

// JournalWrite is one atomic change of the journal.
type JournalWrite struct {
	// Cluster, when set, replaces the cluster record; its Revision is the
	// one read, which must still be current.
	Cluster *JournalRecord
	// Replica, when set, replaces ReplicaID's record, compared likewise.
	ReplicaID string
	Replica   *JournalRecord
	// Prune deletes the records of replicas gone for good, each at the
	// revision read.
	Prune map[string]int64
	// Leader marks a leader duty: refused unless the writer still leads,
	// in LeaderTerm (from Config.Leadership) where the store has terms.
	Leader     bool
	LeaderTerm int64
}

var (
	// ErrJournalConflict means a record changed after it was read.
	ErrJournalConflict = errors.New("ca: the journal changed under this write")
	// ErrNotLeader means a leader duty was written by a replica that no
	// longer leads.
	ErrNotLeader = errors.New("ca: this replica no longer leads the cluster")
)

// DefaultReplicaID names the only replica of a single server.
const DefaultReplicaID = "local"

var replicaIDPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// CheckReplicaID is the rule for replica IDs: 1 to 63 lowercase letters,
// digits, '-' and '_', starting with a letter or digit.
func CheckReplicaID(id string) error {
	if !replicaIDPattern.MatchString(id) {
		return fmt.Errorf("replica ID %q is not 1 to 63 lowercase letters, digits, '-' and '_' starting with a letter or digit", id)
	}
	return nil
}

// clusterRecord is the shared record. Version 1 is the journal of a single
// server from before replicas: it holds every authority, and the first
// replica to load it takes its intermediates and JWT keys as its own.
type clusterRecord struct {
	Version        int                  `json:"version"`
	BundleSequence uint64               `json:"bundle_sequence"`
	Authorities    []authorityRecord    `json:"authorities"`
	Revoked        []RevokedCertificate `json:"revoked,omitempty"`
	// Tainted names authorities an admin tainted, whichever replica owns them.
	Tainted []string `json:"tainted,omitempty"`
	// WrittenBy is the replica that wrote this version of the record, and
	// LeaderTerm the leadership term of a leader duty's write (0 for any
	// other write). The record's history in the datastore thus shows
	// which leader made each cluster change, and that no two did at once.
	WrittenBy  string `json:"written_by,omitempty"`
	LeaderTerm int64  `json:"leader_term,omitempty"`
}

// replicaRecord is one replica's own intermediates and JWT keys.
type replicaRecord struct {
	Version     int               `json:"version"`
	Authorities []authorityRecord `json:"authorities"`
}

const (
	singleServerVersion = 1
	journalVersion      = 2
)

func decodeCluster(b []byte) (*clusterRecord, error) {
	var rec clusterRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("ca: journal: %w", err)
	}
	if rec.Version != journalVersion && rec.Version != singleServerVersion {
		return nil, fmt.Errorf("ca: journal: unsupported version %d", rec.Version)
	}
	return &rec, nil
}

func decodeReplica(id string, b []byte) (*replicaRecord, error) {
	var rec replicaRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("ca: journal of replica %s: %w", id, err)
	}
	if rec.Version != journalVersion {
		return nil, fmt.Errorf("ca: journal of replica %s: unsupported version %d", id, rec.Version)
	}
	for _, r := range rec.Authorities {
		if r.Kind == KindRoot {
			return nil, fmt.Errorf("ca: journal of replica %s: holds root %s; roots belong to the cluster record", id, r.ID)
		}
	}
	return &rec, nil
}

// exportRecord is the whole journal as one document: what `ca drill` reads
// and the admin API exports. ReplicaID is the replica that exported it.
type exportRecord struct {
	ReplicaID string                     `json:"replica_id"`
	Cluster   json.RawMessage            `json:"cluster"`
	Replicas  map[string]json.RawMessage `json:"replicas,omitempty"`
}

// ExportJournal writes state as one document, for `ca drill`.
func ExportJournal(state JournalState, replicaID string) ([]byte, error) {
	if state.Cluster.Data == nil {
		return nil, nil
	}
	rec := exportRecord{ReplicaID: replicaID, Cluster: state.Cluster.Data, Replicas: map[string]json.RawMessage{}}
	for id, r := range state.Replicas {
		rec.Replicas[id] = r.Data
	}
	return json.Marshal(rec)
}

// ImportJournal reads a document written by ExportJournal, or the journal of
// a single server from before replicas, and the replica that exported it.
func ImportJournal(raw []byte) (JournalState, string, error) {
	var probe struct {
		Cluster json.RawMessage `json:"cluster"`
	}
	if err := json.Unmarshal(raw, &probe); err != nil {
		return JournalState{}, "", fmt.Errorf("ca: journal: %w", err)
	}
	if probe.Cluster == nil { // a single server's journal
		return JournalState{Cluster: JournalRecord{Data: raw, Revision: 1}}, DefaultReplicaID, nil
	}
	var rec exportRecord
	if err := json.Unmarshal(raw, &rec); err != nil {
		return JournalState{}, "", fmt.Errorf("ca: journal: %w", err)
	}
	if rec.ReplicaID == "" {
		rec.ReplicaID = DefaultReplicaID
	}
	state := JournalState{Cluster: JournalRecord{Data: rec.Cluster, Revision: 1}, Replicas: map[string]JournalRecord{}}
	for id, r := range rec.Replicas {
		state.Replicas[id] = JournalRecord{Data: r, Revision: 1}
	}
	return state, rec.ReplicaID, nil
}

// MemoryJournal keeps the journal in memory, with the same revision checks
// as a datastore: for tests (several replicas may share one) and for
// `ca drill`, which must never write the real one. Leading, when set, says
// whether a replica still leads: a leader duty written by one that does not
// is refused, as a datastore's fence would.
type MemoryJournal struct {
	mu       sync.Mutex
	revision int64
	state    JournalState
	Leading  func(replicaID string) bool
}

// NewMemoryJournal returns a journal holding state.
func NewMemoryJournal(state JournalState) *MemoryJournal {
	j := &MemoryJournal{}
	j.state = cloneState(state)
	for _, r := range j.state.Replicas {
		j.revision = max(j.revision, r.Revision)
	}
	j.revision = max(j.revision, j.state.Cluster.Revision)
	return j
}

// LoadCAJournal implements Journal.
func (j *MemoryJournal) LoadCAJournal(context.Context) (JournalState, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return cloneState(j.state), nil
}

// SaveCAJournal implements Journal.
func (j *MemoryJournal) SaveCAJournal(_ context.Context, w JournalWrite) (int64, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if w.Leader && j.Leading != nil && !j.Leading(w.ReplicaID) {
		return 0, ErrNotLeader
	}
	if w.Cluster != nil && w.Cluster.Revision != j.state.Cluster.Revision {
		return 0, ErrJournalConflict
	}
	if w.Replica != nil && w.Replica.Revision != j.state.Replicas[w.ReplicaID].Revision {
		return 0, ErrJournalConflict
	}
	for id, rev := range w.Prune {
		if j.state.Replicas[id].Revision != rev {
			return 0, ErrJournalConflict
		}
	}
	j.revision++
	if j.state.Replicas == nil {
		j.state.Replicas = map[string]JournalRecord{}
	}
	if w.Cluster != nil {
		j.state.Cluster = JournalRecord{Data: bytes.Clone(w.Cluster.Data), Revision: j.revision}
	}
	if w.Replica != nil {
		j.state.Replicas[w.ReplicaID] = JournalRecord{Data: bytes.Clone(w.Replica.Data), Revision: j.revision}
	}
	for id := range w.Prune {
		delete(j.state.Replicas, id)
	}
	return j.revision, nil
}

func cloneState(s JournalState) JournalState {
	out := JournalState{Cluster: JournalRecord{Data: bytes.Clone(s.Cluster.Data), Revision: s.Cluster.Revision},
		Replicas: make(map[string]JournalRecord, len(s.Replicas))}
	for id, r := range s.Replicas {
		out.Replicas[id] = JournalRecord{Data: bytes.Clone(r.Data), Revision: r.Revision}
	}
	if s.Live != nil {
		out.Live = maps.Clone(s.Live)
	}
	return out
}
