package federation

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/shortleaf/shortleaf/pkg/clock"
	"github.com/shortleaf/shortleaf/pkg/datastore"
)

// Refresh timing.
const (
	// DefaultRefreshHint is used when a bundle carries none.
	DefaultRefreshHint = 5 * time.Minute
	// MinRefresh bounds how often one endpoint is polled.
	MinRefresh = time.Second
	// retryAfterFailure is the longest wait after a failed fetch.
	retryAfterFailure = 30 * time.Second
)

// Store is what the poller needs of the datastore.
type Store interface {
	ListFederations(ctx context.Context) ([]*datastore.Federation, error)
	GetFederation(ctx context.Context, td string) (*datastore.Federation, error)
	GetFederatedBundle(ctx context.Context, td string) ([]byte, error)
	RecordFederationRefresh(ctx context.Context, read *datastore.Federation, bundle []byte, at time.Time, fetchErr string) error
}

// Poller refreshes every foreign bundle at its refresh hint. Each
// relationship is fetched on its own goroutine, so an endpoint that hangs
// until the fetch timeout delays only itself; a relationship is never
// fetched twice at once.
type Poller struct {
	store    Store
	clock    clock.Clock
	log      *slog.Logger
	mu       sync.Mutex
	next     map[string]time.Time
	inFlight map[string]bool
	again    map[string]bool // scheduled while in flight
	fetches  sync.WaitGroup
	kick     chan struct{}
	tick     time.Duration
	fetchF   func(context.Context, Relationship, *spiffebundle.Bundle) (*spiffebundle.Bundle, error)
}

// NewPoller returns a poller over store.
func NewPoller(store Store, clk clock.Clock, log *slog.Logger) *Poller {
	if clk == nil {
		clk = clock.Real
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Poller{store: store, clock: clk, log: log, next: map[string]time.Time{}, inFlight: map[string]bool{}, again: map[string]bool{},
		kick: make(chan struct{}, 1), tick: time.Second, fetchF: Fetch}
}

// Run polls until ctx is done, then waits for the fetches in flight (they
// end with ctx).
func (p *Poller) Run(ctx context.Context) error {
	defer p.fetches.Wait()
	for {
		p.pollDue(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-p.kick:
		case <-p.clock.After(p.tick):
		}
	}
}

// Schedule asks for td to be fetched at once (after a create or update);
// if a fetch of td is in flight, once more as soon as it ends.
func (p *Poller) Schedule(td string) {
	p.mu.Lock()
	delete(p.next, td)
	if p.inFlight[td] {
		p.again[td] = true
	}
	p.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

func (p *Poller) pollDue(ctx context.Context) {
	feds, err := p.store.ListFederations(ctx)
	if err != nil {
		p.log.ErrorContext(ctx, "federation: list relationships", slog.Any("error", err))
		return
	}
	now := p.clock.Now()
	for _, f := range feds {
		p.mu.Lock()
		due := !p.inFlight[f.TrustDomain] && !now.Before(p.next[f.TrustDomain])
		if due {
			p.inFlight[f.TrustDomain] = true
		}
		p.mu.Unlock()
		if !due {
			continue
		}
		p.fetches.Add(1)
		go func() {
			defer p.fetches.Done()
			_ = p.refresh(ctx, f)
			p.mu.Lock()
			delete(p.inFlight, f.TrustDomain)
			if p.again[f.TrustDomain] {
				delete(p.again, f.TrustDomain)
				delete(p.next, f.TrustDomain)
			}
			p.mu.Unlock()
		}()
	}
}

// Refresh fetches td's bundle now and reports the outcome.
func (p *Poller) Refresh(ctx context.Context, td string) error {
	f, err := p.store.GetFederation(ctx, td)
	if err != nil {
		return err
	}
	return p.refresh(ctx, f)
}

func (p *Poller) refresh(ctx context.Context, f *datastore.Federation) error {
	now := p.clock.Now()
	rel, err := RelationshipOf(f)
	if err != nil {
		return p.failed(ctx, f, now, err)
	}
	var held *spiffebundle.Bundle
	if raw, err := p.store.GetFederatedBundle(ctx, f.TrustDomain); err == nil {
		held, _ = spiffebundle.Parse(rel.TrustDomain, raw)
	}
	b, err := p.fetchF(ctx, rel, held)
	if err == nil && held != nil {
		if seqOld, okOld := held.SequenceNumber(); okOld {
			if seqNew, okNew := b.SequenceNumber(); okNew && seqNew < seqOld {
				err = fmt.Errorf("federation: %s: bundle sequence went back from %d to %d", f.TrustDomain, seqOld, seqNew)
			}
		}
	}
	if err != nil {
		return p.failed(ctx, f, now, err)
	}
	raw, err := b.Marshal()
	if err != nil {
		return p.failed(ctx, f, now, err)
	}
	changed := held == nil || !held.Equal(b)
	if !changed {
		raw = nil // nothing new to store
	}
	if err := p.store.RecordFederationRefresh(ctx, f, raw, now, ""); err != nil {
		if errors.Is(err, datastore.ErrChanged) {
			// Updated while this fetch ran: its result belongs to the old
			// settings. Fetch again with the new ones at the next tick.
			p.mu.Lock()
			p.next[f.TrustDomain] = now
			p.mu.Unlock()
			return fmt.Errorf("federation: %s: the relationship changed during the fetch; fetching again", f.TrustDomain)
		}
		if errors.Is(err, datastore.ErrNotFound) {
			return nil // deleted meanwhile
		}
		return p.failed(ctx, f, now, err)
	}
	if changed {
		p.log.InfoContext(ctx, "federated bundle updated", slog.String("trust_domain", f.TrustDomain))
	}
	hint, ok := b.RefreshHint()
	if !ok || hint <= 0 {
		hint = DefaultRefreshHint
	}
	p.mu.Lock()
	p.next[f.TrustDomain] = now.Add(max(hint, MinRefresh))
	p.mu.Unlock()
	return nil
}

// failed records the error and keeps the last good bundle.
func (p *Poller) failed(ctx context.Context, f *datastore.Federation, now time.Time, err error) error {
	p.log.WarnContext(ctx, "federated bundle refresh failed; keeping the last good bundle", slog.String("trust_domain", f.TrustDomain), slog.Any("error", err))
	if perr := p.store.RecordFederationRefresh(ctx, f, nil, now, err.Error()); perr != nil &&
		!errors.Is(perr, datastore.ErrNotFound) && !errors.Is(perr, datastore.ErrChanged) {
		p.log.ErrorContext(ctx, "federation: record failure", slog.Any("error", perr))
	}
	p.mu.Lock()
	p.next[f.TrustDomain] = now.Add(retryAfterFailure)
	p.mu.Unlock()
	return err
}

// RelationshipOf turns a stored relationship into a fetchable one.
func RelationshipOf(f *datastore.Federation) (Relationship, error) {
	td, err := spiffeid.TrustDomainFromString(f.TrustDomain)
	if err != nil {
		return Relationship{}, fmt.Errorf("trust_domain: %w", err)
	}
	rel := Relationship{TrustDomain: td, URL: f.URL, Profile: f.Profile}
	if f.EndpointSPIFFEID != "" {
		if rel.EndpointID, err = spiffeid.FromString(f.EndpointSPIFFEID); err != nil {
			return Relationship{}, fmt.Errorf("endpoint_spiffe_id: %w", err)
		}
	}
	if rel.WebRoots, err = ParsePEMCertificates(f.WebRootsPEM); err != nil {
		return Relationship{}, fmt.Errorf("web_roots: %w", err)
	}
	return rel, rel.Validate()
}
