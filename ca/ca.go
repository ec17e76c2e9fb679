package ca

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
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

// Journal persists the CA's authorities and bundle sequence as an opaque record.
// LoadCAJournal returns (nil, nil) when nothing was stored yet.
type Journal interface {
	LoadCAJournal(ctx context.Context) ([]byte, error)
	SaveCAJournal(ctx context.Context, record []byte) error
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
	Clock    clock.Clock // default clock.Real
	Logger   *slog.Logger
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
	authorities []*Authority
	bundleSeq   uint64
	revoked     []RevokedCertificate
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

	raw, err := cfg.Journal.LoadCAJournal(ctx)
	if err != nil {
		return nil, fmt.Errorf("ca: load journal: %w", err)
	}
	if raw != nil {
		if err := c.restore(ctx, raw); err != nil {
			return nil, err
		}
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

func (c *CA) restore(ctx context.Context, raw []byte) error {
	rec, err := decodeJournal(raw)
	if err != nil {
		return err
	}
	auths := make([]*Authority, 0, len(rec.Authorities))
	for _, r := range rec.Authorities {
		a, err := fromRecord(r)
		if err != nil {
			return err
		}
		if a.Kind == KindRoot && c.cfg.Upstream != nil {
			a.Signer = c.cfg.Upstream.Signer
		} else {
			if a.Signer, err = c.cfg.Keys.LoadKey(ctx, a.KeyRef); err != nil {
				return fmt.Errorf("ca: load key of authority %s: %w", a.ID, err)
			}
		}
		if !publicKeysEqual(a.Signer.Public(), a.PublicKey) {
			return fmt.Errorf("ca: key of authority %s does not match its record", a.ID)
		}
		auths = append(auths, a)
	}
	c.install(auths, rec.BundleSequence, rec.Revoked)
	return nil
}

// install replaces the authorities and points the signers at the active ones.
func (c *CA) install(auths []*Authority, seq uint64, revoked []RevokedCertificate) {
	c.mu.Lock()
	c.authorities, c.bundleSeq, c.revoked = auths, seq, revoked
	c.journalVersion++ // the CRLs are re-signed
	c.mu.Unlock()
	var inter, jwt *Authority
	for _, a := range auths {
		if a.State != StateActive {
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
		cp.Signer = nil
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
