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
	IntermediateTTL time.Duration // default 24h
	Keys            KeyManager
	Journal         Journal
	Clock           clock.Clock // default clock.Real
	Logger          *slog.Logger
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
	cfg Config

	renewMu     sync.Mutex // one intermediate renewal at a time
	mu          sync.RWMutex
	authorities []*Authority
	bundleSeq   uint64

	// active is read on every signature without taking mu.
	active atomic.Pointer[activeSigner]
}

// activeSigner is the intermediate the hot path signs with.
type activeSigner struct {
	authority *Authority
	chainTail []*x509.Certificate // the intermediate, appended after each leaf
}

// New loads the CA from its journal, or creates a root and an intermediate on
// first start and records them.
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
	if cfg.Clock == nil {
		cfg.Clock = clock.Real
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	c := &CA{cfg: cfg}

	raw, err := cfg.Journal.LoadCAJournal(ctx)
	if err != nil {
		return nil, fmt.Errorf("ca: load journal: %w", err)
	}
	if raw == nil {
		if err := c.bootstrap(ctx); err != nil {
			return nil, err
		}
	} else if err := c.restore(ctx, raw); err != nil {
		return nil, err
	}
	if err := c.RenewIntermediateIfDue(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// bootstrap creates the first root and intermediate.
func (c *CA) bootstrap(ctx context.Context) error {
	root, err := c.newRoot(ctx)
	if err != nil {
		return err
	}
	c.authorities = []*Authority{root}
	c.bundleSeq = 1
	inter, err := c.newIntermediate(ctx, root)
	if err != nil {
		return err
	}
	inter.State = StateActive
	c.authorities = append(c.authorities, inter)
	if err := c.save(ctx); err != nil {
		return err
	}
	c.setActive(inter)
	c.cfg.Logger.Info("created CA", slog.String("root_id", root.ID), slog.String("intermediate_id", inter.ID),
		slog.Time("root_not_after", root.NotAfter()), slog.Time("intermediate_not_after", inter.NotAfter()))
	return nil
}

func (c *CA) restore(ctx context.Context, raw []byte) error {
	rec, err := decodeJournal(raw)
	if err != nil {
		return err
	}
	c.bundleSeq = rec.BundleSequence
	for _, r := range rec.Authorities {
		cert, err := x509.ParseCertificate(r.CertDER)
		if err != nil {
			return fmt.Errorf("ca: journal: authority %s: %w", r.ID, err)
		}
		signer, err := c.cfg.Keys.LoadKey(ctx, r.KeyRef)
		if err != nil {
			return fmt.Errorf("ca: load key of authority %s: %w", r.ID, err)
		}
		if !publicKeysEqual(signer.Public(), cert.PublicKey) {
			return fmt.Errorf("ca: key of authority %s does not match its certificate", r.ID)
		}
		a := &Authority{ID: r.ID, Kind: r.Kind, State: r.State, Cert: cert, KeyRef: r.KeyRef, ParentID: r.ParentID, Signer: signer}
		c.authorities = append(c.authorities, a)
		if a.Kind == KindIntermediate && a.State == StateActive {
			c.setActive(a)
		}
	}
	return nil
}

// RenewIntermediateIfDue activates a new intermediate when the active one is
// missing or past half of its life. The old one keeps validating the SVIDs it
// signed (the bundle holds only roots, so nothing else changes). The server
// calls it at start and periodically; the full PREPARED → ACTIVE → OLD
// schedule with taint and revoke builds on it.
func (c *CA) RenewIntermediateIfDue(ctx context.Context) error {
	c.renewMu.Lock()
	defer c.renewMu.Unlock()
	now := c.cfg.Clock.Now()
	cur := c.active.Load()
	if cur != nil {
		life := cur.authority.Cert.NotAfter.Sub(cur.authority.Cert.NotBefore)
		if cur.authority.Cert.NotAfter.Sub(now) > life/2 {
			return nil
		}
	}
	root := c.activeRoot()
	if root == nil {
		return errors.New("ca: journal holds no active root")
	}
	if !root.NotAfter().After(now) {
		return fmt.Errorf("ca: root %s expired at %s", root.ID, root.NotAfter().Format(time.RFC3339))
	}
	inter, err := c.newIntermediate(ctx, root)
	if err != nil {
		return err
	}
	inter.State = StateActive
	c.mu.Lock()
	for _, a := range c.authorities {
		if a.Kind == KindIntermediate && a.State == StateActive {
			a.State = StateOld
		}
	}
	c.authorities = append(c.authorities, inter)
	c.mu.Unlock()
	if err := c.save(ctx); err != nil {
		return err
	}
	c.setActive(inter)
	c.cfg.Logger.Info("activated new intermediate", slog.String("intermediate_id", inter.ID), slog.Time("not_after", inter.NotAfter()))
	return nil
}

func (c *CA) activeRoot() *Authority {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, a := range c.authorities {
		if a.Kind == KindRoot && a.State == StateActive {
			return a
		}
	}
	return nil
}

func (c *CA) setActive(a *Authority) {
	c.active.Store(&activeSigner{authority: a, chainTail: []*x509.Certificate{a.Cert}})
}

func (c *CA) save(ctx context.Context) error {
	c.mu.RLock()
	raw, err := encodeJournal(c.bundleSeq, c.authorities)
	c.mu.RUnlock()
	if err != nil {
		return fmt.Errorf("ca: encode journal: %w", err)
	}
	if err := c.cfg.Journal.SaveCAJournal(ctx, raw); err != nil {
		return fmt.Errorf("ca: save journal: %w", err)
	}
	return nil
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

// ActiveIntermediate returns the authority that signs SVIDs now.
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
		if a.Kind == KindRoot {
			roots = append(roots, a.Cert)
		}
	}
	return x509bundle.FromX509Authorities(c.cfg.TrustDomain, roots), c.bundleSeq
}

// CheckSigner proves the active intermediate's key can sign right now, by
// signing a random digest and verifying it. Readiness probes call it.
func (c *CA) CheckSigner() error {
	cur := c.active.Load()
	if cur == nil {
		return ErrNoActiveIntermediate
	}
	if !cur.authority.NotAfter().After(c.cfg.Clock.Now()) {
		return ErrSignerExpired
	}
	return testSignature(cur.authority.Signer)
}
