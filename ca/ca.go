package ca

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/shortleaf/shortleaf/pkg/clock"
)

// KeyManager creates and loads CA keys. It is the KMS seam: softkms files by
// default, an HSM by URI.
type KeyManager interface {
	CreateKey(ctx context.Context, name, keyType string) (signer crypto.Signer, keyRef string, err error)
	LoadKey(ctx context.Context, keyRef string) (crypto.Signer, error)
}

// KeyDeleter is an optional ability of a KeyManager: destroying the key of an
// authority that has left the journal.
type KeyDeleter interface {
	DeleteKey(ctx context.Context, keyRef string) error
}

// KeyLister is an optional ability of a KeyManager: listing the keys it
// holds, so that keys no authority names (left by a crash between creating a
// key and saving the journal) are destroyed at start.
type KeyLister interface {
	ListKeys(ctx context.Context) ([]string, error)
}

// KeySealer is an optional ability of a KeyManager whose keys live on one
// machine (softkms files): a root's key is sealed (encrypted under the key
// passphrase) into the cluster record, so that every replica holding the
// passphrase can sign its own intermediates with it.
type KeySealer interface {
	SealKey(ctx context.Context, key crypto.Signer) ([]byte, error)
	UnsealKey(ctx context.Context, sealed []byte) (crypto.Signer, error)
}

// Config configures a CA.
type Config struct {
	TrustDomain     spiffeid.TrustDomain
	KeyType         string        // ec-p256 (default), ec-p384, rsa-2048
	RootTTL         time.Duration // default 1 year
	IntermediateTTL time.Duration // default 24h; also the life of JWT keys
	// MaxSVIDTTL is the longest lifetime the CA will be asked to sign; every
	// SVID up to it gets its full lifetime. Default IntermediateTTL / 4.
	MaxSVIDTTL time.Duration
	// RootPrepareBefore is how long before the active root's expiry its
	// successor is prepared; default DefaultRootPrepareBefore(RootTTL).
	RootPrepareBefore time.Duration
	// RootGate lists what still lacks a prepared root (lagging live agents,
	// federated consumers still owed refresh hints); the root activates only
	// when it lists nothing. nil: nothing to wait for.
	RootGate RootGate
	// RootGateLead is the least time RootGate needs to pass after a
	// prepare; RootPrepareBefore must leave room for it.
	RootGateLead time.Duration
	// Upstream, when set, signs the intermediates instead of a self-signed
	// root; root rotation is then the upstream CA's business.
	Upstream *Upstream
	Keys     KeyManager
	Journal  Journal
	// ReplicaID names this replica: it owns, and alone signs with, the
	// intermediates and JWT keys recorded under it. Default DefaultReplicaID.
	ReplicaID string
	// Leadership reports whether this replica leads the cluster now, and
	// in which term (where the journal's store has terms, else 0): only the
	// leader runs the scheduled cluster duties (root rotation, the gate,
	// pruning), and its writes are fenced by the term. nil: a single
	// server, which always leads.
	Leadership func() (term int64, leads bool)
	Clock      clock.Clock // default clock.Real
	Logger     *slog.Logger
	// OnTransition, if set, is told of every state change, for metrics.
	OnTransition func(Transition)
}

// RootGate lists what must still receive the prepared root (published at
// prepared.BundleSequence) before it may sign. Entries name agents or
// consumers; they are shown to operators.
type RootGate func(ctx context.Context, prepared Authority) (blockers []string)

// Upstream is an existing CA that signs shortleaf's intermediates.
type Upstream struct {
	// Chain is the upstream signing certificate first, then any certificates
	// up to and including its root.
	Chain  []*x509.Certificate
	Signer crypto.Signer
}

// Defaults for Config.
const (
	DefaultKeyType         = "ec-p256"
	DefaultRootTTL         = 365 * 24 * time.Hour
	DefaultIntermediateTTL = 24 * time.Hour
	// Backdate is how far NotBefore is set in the past to absorb clock skew.
	Backdate = 30 * time.Second
)

// CA signs SVIDs with its active intermediate and publishes its roots.
type CA struct {
	cfg          Config
	schedule     Schedule
	rootSchedule RootSchedule

	writeMu     sync.Mutex // one change of authorities at a time
	mu          sync.RWMutex
	authorities []*Authority // the roots and every replica's authorities
	bundleSeq   uint64
	revoked     []RevokedCertificate
	tainted     []string // the cluster record's taints
	// base is the journal as last read or written: the revisions a write
	// compares and the records it is diffed against.
	base JournalState
	// upgrade is set when the loaded records must be rewritten (a single
	// server's journal to split, a root key to seal, an authority revoked by
	// another replica to drop); pendingGone are keys to destroy once the
	// rewrite no longer names them.
	upgrade     bool
	pendingGone []string
	// journalVersion counts installs; the CRL cache is keyed on it.
	journalVersion uint64
	crls           crlCache

	// active and activeJWT are read on every signature without taking mu.
	active    atomic.Pointer[activeSigner]
	activeJWT atomic.Pointer[Authority]

	// gate is what the last check of the propagation gate found.
	gate atomic.Pointer[GateStatus]
}

// activeSigner is the intermediate the hot path signs with.
type activeSigner struct {
	authority *Authority
	chainTail []*x509.Certificate // the intermediate (and any upstream chain), appended after each leaf
}

// New loads the CA from its journal, or creates a root, an intermediate and a
// JWT key on first start and records them, then brings the schedule up to
// date (a long stop may have left keys to rotate).
func New(ctx context.Context, cfg Config) (*CA, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("ca: trust domain is required")
	}
	if cfg.Keys == nil || cfg.Journal == nil {
		return nil, errors.New("ca: a key manager and a journal are required")
	}
	if cfg.ReplicaID == "" {
		cfg.ReplicaID = DefaultReplicaID
	}
	if err := CheckReplicaID(cfg.ReplicaID); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	if cfg.KeyType == "" {
		cfg.KeyType = DefaultKeyType
	}
	if cfg.RootTTL == 0 {
		cfg.RootTTL = DefaultRootTTL
	}
	if cfg.IntermediateTTL == 0 {
		cfg.IntermediateTTL = DefaultIntermediateTTL
	}
	if cfg.MaxSVIDTTL == 0 {
		cfg.MaxSVIDTTL = cfg.IntermediateTTL / 4
	}
	if cfg.RootPrepareBefore == 0 {
		cfg.RootPrepareBefore = DefaultRootPrepareBefore(cfg.RootTTL)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Upstream != nil && (len(cfg.Upstream.Chain) == 0 || cfg.Upstream.Signer == nil) {
		return nil, errors.New("ca: upstream authority needs a certificate chain and a key")
	}
	c := &CA{cfg: cfg, schedule: Schedule{TTL: cfg.IntermediateTTL, MaxSignedTTL: cfg.MaxSVIDTTL},
		rootSchedule: RootSchedule{TTL: cfg.RootTTL, PrepareBefore: cfg.RootPrepareBefore,
			IntermediateTTL: cfg.IntermediateTTL, MaxSVIDTTL: cfg.MaxSVIDTTL, GateLead: cfg.RootGateLead}}
	if err := c.schedule.Validate(); err != nil {
		return nil, err
	}
	if cfg.Upstream == nil {
		if err := c.rootSchedule.Validate(); err != nil {
			return nil, err
		}
	}

	state, err := cfg.Journal.LoadCAJournal(ctx)
	if err != nil {
		return nil, fmt.Errorf("ca: load journal: %w", err)
	}
	if err := c.restore(ctx, state); err != nil {
		return nil, err
	}
	if err := c.Rotate(ctx); err != nil {
		return nil, err
	}
	c.destroyOrphanKeys(ctx)
	return c, nil
}

// destroyOrphanKeys deletes the keys the key manager holds that no authority
// in the (just saved) journal names. Run once at start, under no lock: no
// other change can be under way yet.
func (c *CA) destroyOrphanKeys(ctx context.Context) {
	lister, ok := c.cfg.Keys.(KeyLister)
	deleter, ok2 := c.cfg.Keys.(KeyDeleter)
	if !ok || !ok2 {
		return
	}
	refs, err := lister.ListKeys(ctx)
	if err != nil {
		c.cfg.Logger.WarnContext(ctx, "could not list CA keys to remove orphans", slog.Any("error", err))
		return
	}
	named := map[string]bool{}
	for _, a := range c.Authorities() {
		named[a.KeyRef] = true
	}
	for _, ref := range refs {
		if named[ref] {
			continue
		}
		if err := deleter.DeleteKey(ctx, ref); err != nil {
			c.cfg.Logger.WarnContext(ctx, "could not delete an orphaned CA key", slog.String("key_ref", ref), slog.Any("error", err))
			continue
		}
		c.cfg.Logger.InfoContext(ctx, "deleted a CA key no authority names (left by a crash)", slog.String("key_ref", ref))
	}
}

// restore installs the authorities of state. Signers already loaded are
// kept; the others are loaded from the key manager (this replica's own keys
// and the roots) or left nil (other replicas' keys, which only they use).
func (c *CA) restore(ctx context.Context, state JournalState) error {
	cluster := &clusterRecord{Version: journalVersion}
	if state.Cluster.Data != nil {
		var err error
		if cluster, err = decodeCluster(state.Cluster.Data); err != nil {
			return err
		}
	}
	me := c.cfg.ReplicaID
	upgrade := false
	type owned struct {
		replica string
		rec     authorityRecord
	}
	var records []owned
	for _, r := range cluster.Authorities {
		switch {
		case r.Kind == KindRoot:
			records = append(records, owned{"", r})
		case cluster.Version != singleServerVersion:
			return fmt.Errorf("ca: journal: the cluster record holds %s %s; only roots belong there", r.Kind, r.ID)
		case state.Replicas[me].Data == nil:
			// A single server's journal: its intermediates and JWT keys
			// become this replica's, and the journal is rewritten split.
			records = append(records, owned{me, r})
			upgrade = true
		}
	}
	if cluster.Version == singleServerVersion {
		upgrade = true
	}
	for id, r := range state.Replicas {
		rec, err := decodeReplica(id, r.Data)
		if err != nil {
			return err
		}
		for _, a := range rec.Authorities {
			records = append(records, owned{id, a})
		}
	}
	revoked := map[string]bool{}
	for _, r := range cluster.Revoked {
		revoked[r.AuthorityID] = true
	}
	tainted := map[string]bool{}
	for _, id := range cluster.Tainted {
		tainted[id] = true
	}
	loaded := map[string]*Authority{}
	c.mu.RLock()
	for _, a := range c.authorities {
		loaded[a.ID] = a
	}
	c.mu.RUnlock()
	var pendingGone []string
	auths := make([]*Authority, 0, len(records))
	for _, o := range records {
		a, err := fromRecord(o.rec)
		if err != nil {
			return err
		}
		a.Replica = o.replica
		if revoked[a.ID] {
			// Revoked through another replica: it has left the bundle; the
			// owner drops it from its record and destroys its key.
			if a.Replica == me {
				pendingGone = append(pendingGone, a.KeyRef)
				upgrade = true
			}
			continue
		}
		a.Tainted = a.Tainted || tainted[a.ID]
		if a.Replica == me || a.Kind == KindRoot {
			if prev := loaded[a.ID]; prev != nil && prev.Signer != nil && publicKeysEqual(prev.Signer.Public(), a.PublicKey) {
				a.Signer = prev.Signer
			} else if a.Signer, err = c.loadSigner(ctx, a); err != nil {
				return err
			}
			if !publicKeysEqual(a.Signer.Public(), a.PublicKey) {
				return fmt.Errorf("ca: key of authority %s does not match its record", a.ID)
			}
			sealed, err := c.sealRoot(ctx, a)
			if err != nil {
				return err
			}
			if sealed != "" {
				pendingGone = append(pendingGone, sealed)
				upgrade = true
			}
		}
		auths = append(auths, a)
	}
	c.install(auths, cluster.BundleSequence, cluster.Revoked, cluster.Tainted, state)
	c.upgrade, c.pendingGone = c.upgrade || upgrade, append(c.pendingGone, pendingGone...)
	return nil
}

// loadSigner opens the key of a: the upstream CA's, a sealed root's, or the
// key manager's.
func (c *CA) loadSigner(ctx context.Context, a *Authority) (crypto.Signer, error) {
	switch {
	case a.Kind == KindRoot && c.cfg.Upstream != nil:
		return c.cfg.Upstream.Signer, nil
	case a.KeyRef == sealedKeyRef:
		sealer, ok := c.cfg.Keys.(KeySealer)
		if !ok {
			return nil, fmt.Errorf("ca: root %s has its key sealed in the journal, and this key manager cannot open it: "+
				"replicas that share a root must keep keys alike (every replica on softkms with the same passphrase, or on the same KMS)", a.ID)
		}
		s, err := sealer.UnsealKey(ctx, a.sealedKey)
		if err != nil {
			return nil, fmt.Errorf("ca: open the sealed key of root %s (is the key passphrase the one the other replicas use?): %w", a.ID, err)
		}
		return s, nil
	}
	s, err := c.cfg.Keys.LoadKey(ctx, a.KeyRef)
	if err != nil {
		if a.Kind == KindRoot {
			return nil, fmt.Errorf("ca: load key of root %s: %w (a root created before replicas is sealed into the journal by the server that holds its key: start that one first)", a.ID, err)
		}
		return nil, fmt.Errorf("ca: load key of authority %s: %w", a.ID, err)
	}
	return s, nil
}

// sealRoot seals a root's key into its record when the key manager keeps
// keys on this machine, so every replica can use it. It returns the key
// reference the sealed copy replaces ("" if nothing changed); that key is
// destroyed once the journal no longer names it.
func (c *CA) sealRoot(ctx context.Context, a *Authority) (string, error) {
	sealer, ok := c.cfg.Keys.(KeySealer)
	if !ok || a.Kind != KindRoot || a.KeyRef == upstreamKeyRef || a.KeyRef == sealedKeyRef || c.cfg.Upstream != nil {
		return "", nil
	}
	sealed, err := sealer.SealKey(ctx, a.Signer)
	if err != nil {
		return "", fmt.Errorf("ca: seal the key of root %s: %w", a.ID, err)
	}
	prev := a.KeyRef
	a.KeyRef, a.sealedKey = sealedKeyRef, sealed
	return prev, nil
}

// sealedKeyRef is the key reference of a root whose key is sealed in the journal.
const sealedKeyRef = "sealed"

// refresh re-reads the journal and installs it if another replica (or
// another process) changed it since it was last read or written.
func (c *CA) refresh(ctx context.Context) error {
	state, err := c.cfg.Journal.LoadCAJournal(ctx)
	if err != nil {
		return fmt.Errorf("ca: load journal: %w", err)
	}
	c.mu.RLock()
	same := sameRevisions(c.base, state)
	c.mu.RUnlock()
	if !same {
		return c.restore(ctx, state)
	}
	c.mu.Lock()
	c.base.Live = state.Live
	c.mu.Unlock()
	return nil
}

func sameRevisions(a, b JournalState) bool {
	if a.Cluster.Revision != b.Cluster.Revision || len(a.Replicas) != len(b.Replicas) {
		return false
	}
	for id, r := range a.Replicas {
		if b.Replicas[id].Revision != r.Revision {
			return false
		}
	}
	return true
}

// install replaces the authorities and points the signers at this
// replica's active ones.
func (c *CA) install(auths []*Authority, seq uint64, revoked []RevokedCertificate, tainted []string, base JournalState) {
	// One order whatever the records' order: roots, then each replica's
	// authorities in the order they were made.
	slices.SortStableFunc(auths, func(a, b *Authority) int {
		if ra, rb := a.Kind == KindRoot, b.Kind == KindRoot; ra != rb {
			if ra {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Replica, b.Replica)
	})
	c.mu.Lock()
	c.authorities, c.bundleSeq, c.revoked, c.tainted, c.base = auths, seq, revoked, tainted, base
	c.journalVersion++ // the CRLs are re-signed
	c.mu.Unlock()
	var inter, jwt *Authority
	for _, a := range auths {
		if a.State != StateActive || a.Replica != c.cfg.ReplicaID {
			continue
		}
		switch a.Kind {
		case KindIntermediate:
			inter = a
		case KindJWT:
			jwt = a
		}
	}
	if inter == nil {
		c.active.Store(nil)
	} else {
		tail := []*x509.Certificate{inter.Cert}
		if c.cfg.Upstream != nil {
			// Intermediates chain to the upstream signing certificate; send it
			// along so verifiers that hold only the upstream root can build the path.
			tail = append(tail, c.upstreamIntermediates()...)
		}
		c.active.Store(&activeSigner{authority: inter, chainTail: tail})
	}
	c.activeJWT.Store(jwt)
}

// mine reports whether a is this replica's to rotate: its own
// intermediates and JWT keys, and the shared roots.
func (c *CA) mine(a *Authority) bool {
	return a.Kind == KindRoot || a.Replica == c.cfg.ReplicaID
}

// findOwn is the first authority of kind in state that is this replica's
// (any root), or nil.
func (c *CA) findOwn(auths []*Authority, kind Kind, state State) *Authority {
	for _, a := range auths {
		if a.Kind == kind && a.State == state && c.mine(a) {
			return a
		}
	}
	return nil
}

// ReplicaID names this replica.
func (c *CA) ReplicaID() string { return c.cfg.ReplicaID }

// ReplicaStatus is one replica as the journal knows it.
type ReplicaStatus struct {
	ID string
	// Live: it holds its lease now. Unknown (false) on a single server's store.
	Live bool
	// Authorities counts its intermediates and JWT keys.
	Authorities int
}

// Replicas lists the replicas that have a record in the journal, this one
// first.
func (c *CA) Replicas() []ReplicaStatus {
	c.mu.RLock()
	defer c.mu.RUnlock()
	counts := map[string]int{c.cfg.ReplicaID: 0}
	for id := range c.base.Replicas {
		if _, ok := counts[id]; !ok {
			counts[id] = 0 // a record with no authority left
		}
	}
	for _, a := range c.authorities {
		if a.Replica != "" {
			counts[a.Replica]++
		}
	}
	out := []ReplicaStatus{{ID: c.cfg.ReplicaID, Live: true, Authorities: counts[c.cfg.ReplicaID]}}
	for id, n := range counts {
		if id != c.cfg.ReplicaID {
			out = append(out, ReplicaStatus{ID: id, Live: c.base.Live[id], Authorities: n})
		}
	}
	slices.SortFunc(out[1:], func(a, b ReplicaStatus) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Leads reports whether this replica runs the cluster duties now.
func (c *CA) Leads() bool {
	_, leads := c.leadership()
	return leads
}

func (c *CA) leadership() (term int64, leads bool) {
	if c.cfg.Leadership == nil {
		return 0, true
	}
	return c.cfg.Leadership()
}

// upstreamIntermediates is the upstream chain without its self-signed root.
func (c *CA) upstreamIntermediates() []*x509.Certificate {
	var out []*x509.Certificate
	for _, cert := range c.cfg.Upstream.Chain {
		if !isSelfSigned(cert) {
			out = append(out, cert)
		}
	}
	return out
}

// TrustDomain is the trust domain the CA signs for.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.cfg.TrustDomain }

// Authorities returns a snapshot of every authority (without signers).
func (c *CA) Authorities() []Authority {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]Authority, 0, len(c.authorities))
	for _, a := range c.authorities {
		cp := *a
		cp.Signer, cp.sealedKey = nil, nil
		out = append(out, cp)
	}
	return out
}

// ActiveIntermediate returns the certificate that signs SVIDs now.
func (c *CA) ActiveIntermediate() (*x509.Certificate, error) {
	cur := c.active.Load()
	if cur == nil {
		return nil, ErrNoActiveIntermediate
	}
	return cur.authority.Cert, nil
}

// Bundle returns the trust bundle (every root) and its sequence number.
func (c *CA) Bundle() (*x509bundle.Bundle, uint64) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var roots []*x509.Certificate
	for _, a := range c.authorities {
		switch {
		case a.Kind != KindRoot:
		case a.KeyRef == upstreamKeyRef:
			roots = append(roots, c.upstreamRoots()...)
		default:
			roots = append(roots, a.Cert)
		}
	}
	return x509bundle.FromX509Authorities(c.cfg.TrustDomain, roots), c.bundleSeq
}

// upstreamRoots are the self-signed certificates of the upstream chain (the
// last certificate if none is self-signed): what verifiers must trust.
func (c *CA) upstreamRoots() []*x509.Certificate {
	var out []*x509.Certificate
	for _, cert := range c.cfg.Upstream.Chain {
		if isSelfSigned(cert) {
			out = append(out, cert)
		}
	}
	if len(out) == 0 {
		out = append(out, c.cfg.Upstream.Chain[len(c.cfg.Upstream.Chain)-1])
	}
	return out
}

// TaintedKeyIDs returns the key IDs of tainted intermediates: agents replace
// every SVID whose authority key ID is among them.
func (c *CA) TaintedKeyIDs() [][]byte {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out [][]byte
	for _, a := range c.authorities {
		if a.Tainted && a.Cert != nil {
			out = append(out, a.Cert.SubjectKeyId)
		}
	}
	return out
}

// CheckSigner proves the active intermediate's key can sign right now, by
// signing a random digest and verifying it. Readiness probes call it.
func (c *CA) CheckSigner() error {
	cur := c.active.Load()
	if cur == nil {
		return ErrNoActiveIntermediate
	}
	if !cur.authority.NotAfter.After(c.cfg.Clock.Now()) {
		return ErrSignerExpired
	}
	return testSignature(cur.authority.Signer)
}
