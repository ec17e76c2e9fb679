package entryfeed

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/shortleaf/shortleaf/pkg/datastore"
)

// Source is what the feed needs of the datastore.
type Source interface {
	// EntriesRevision's current is the revision to start watching from.
	EntriesRevision(ctx context.Context, parentID string) (current, parent uint64, err error)
	WatchEntries(ctx context.Context, after uint64, fn func(changes []datastore.EntryChange, revision uint64) error) error
}

// Defaults.
const (
	// DefaultHistory is how many of the latest changes (at least; up to
	// twice as many) the feed keeps for agents that reconnect: enough for a failover in the middle of a
	// registration burst without every agent reading its entries afresh.
	DefaultHistory = 16384
	// DefaultQueue bounds the changes waiting for one subscriber; a
	// subscriber further behind is dropped and resumes from the history.
	DefaultQueue = 4096
)

// Feed is the server's entry change feed. Run it, then Subscribe.
type Feed struct {
	src     Source
	logger  *slog.Logger
	history int
	queue   int

	mu sync.Mutex
	// started is closed once the feed knows the store's revision.
	started chan struct{}
	running bool
	stopped bool
	changes []datastore.EntryChange // the latest, oldest first
	// horizon is the revision after which every change is in changes;
	// latest is the revision the watch has reached.
	horizon, latest uint64
	subs            map[string]map[*Subscription]struct{}
}

// Config tunes a feed; zero values take the defaults.
type Config struct {
	History int
	Queue   int
	Logger  *slog.Logger
}

// New returns a feed on src; it reports nothing until Run starts.
func New(src Source, cfg Config) *Feed {
	if cfg.History <= 0 {
		cfg.History = DefaultHistory
	}
	if cfg.Queue <= 0 {
		cfg.Queue = DefaultQueue
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Feed{src: src, logger: cfg.Logger, history: cfg.History, queue: cfg.Queue,
		started: make(chan struct{}), subs: map[string]map[*Subscription]struct{}{}}
}

// Run watches the store until ctx ends. A broken watch is resumed from the
// revision reached; a watch whose history was compacted starts again from
// the current revision, and every subscriber is told it lost changes.
func (f *Feed) Run(ctx context.Context) error {
	defer f.stop()
	wait := time.Duration(0)
	fresh := true
	for {
		if wait > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
		}
		if fresh {
			current, _, err := f.src.EntriesRevision(ctx, "")
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				wait = nextWait(wait)
				f.logger.Error("entry feed: reading the entries revision failed", slog.Any("error", err), slog.Duration("retry_in", wait))
				continue
			}
			f.restart(current)
			fresh = false
		}
		f.mu.Lock()
		from := f.latest
		f.mu.Unlock()
		err := f.src.WatchEntries(ctx, from, f.publish)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, datastore.ErrCompacted):
			f.logger.Warn("entry feed: the changes since the last revision seen were compacted away; connected agents resume from a fresh read",
				slog.Uint64("revision", from), slog.Any("error", err))
			fresh, wait = true, 0
		default:
			wait = nextWait(wait)
			f.logger.Warn("entry feed: the watch broke; resuming", slog.Uint64("revision", from), slog.Any("error", err), slog.Duration("retry_in", wait))
		}
	}
}

func nextWait(d time.Duration) time.Duration {
	return min(max(2*d, 100*time.Millisecond), 5*time.Second)
}

// restart forgets the history and starts from current; every subscriber
// lost whatever it had not received.
func (f *Feed) restart(current uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.changes, f.horizon, f.latest = nil, current, current
	for _, subs := range f.subs {
		for s := range subs {
			f.loseLocked(s)
		}
	}
	if !f.running {
		f.running = true
		close(f.started)
	}
}

// ErrStopped is Subscribe's error once Run has returned.
var ErrStopped = errors.New("entryfeed: the server is stopping")

// stop drops every subscriber at shutdown; they may not subscribe again.
func (f *Feed) stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopped = true
	if !f.running {
		f.running = true
		close(f.started)
	}
	for _, subs := range f.subs {
		for s := range subs {
			f.loseLocked(s)
		}
	}
}

// publish records a batch of changes and routes each to the subscribers of
// the agents it concerns.
func (f *Feed) publish(changes []datastore.EntryChange, revision uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range changes {
		if c.Revision <= f.latest {
			continue // already seen: a resumed watch overlapping the last
		}
		f.changes = append(f.changes, c)
		f.latest = c.Revision
		f.routeLocked(c.Entry.ParentID, c)
		if c.OldParentID != "" && c.OldParentID != c.Entry.ParentID {
			f.routeLocked(c.OldParentID, c)
		}
	}
	// Trim to the history once it has doubled, not on every batch: a
	// change then costs no shift of the whole history.
	if len(f.changes) >= 2*f.history {
		drop := len(f.changes) - f.history
		f.horizon = f.changes[drop-1].Revision
		f.changes = slices.Clone(f.changes[drop:])
	}
	f.latest = max(f.latest, revision)
	return nil
}

func (f *Feed) routeLocked(parentID string, c datastore.EntryChange) {
	for s := range f.subs[parentID] {
		if s.lost || (parentID != c.Entry.ParentID && s.parents[c.Entry.ParentID]) {
			continue // lost, or given c under its new parent already
		}
		if len(s.queue) >= f.queue {
			f.loseLocked(s)
			continue
		}
		s.queue = append(s.queue, c)
		s.poke()
	}
}

func (f *Feed) loseLocked(s *Subscription) {
	s.lost, s.queue = true, nil
	s.poke()
}

// Parents is the set of parent IDs whose entries a subscriber holds: its
// agent ID, and the node aliases it belongs to.
type Parents map[string]bool

// NewParents is the set of ids.
func NewParents(ids ...string) Parents {
	p := make(Parents, len(ids))
	for _, id := range ids {
		p[id] = true
	}
	return p
}

// Subscribe registers a subscriber for the changes to the entries of
// parents after revision after. With ok, backlog holds the changes after
// `after` the feed still keeps, in order, and the subscription delivers
// every later one. Without ok (after is older than the history, or 0 for a
// subscriber with nothing), the caller must read the entries afresh, at a
// revision of at least from, and skip the subscription's changes up to
// that revision. from is the revision the feed has reached. Subscribe
// waits for Run to start; once Run has returned it fails with ErrStopped.
func (f *Feed) Subscribe(ctx context.Context, parents Parents, after uint64) (s *Subscription, backlog []datastore.EntryChange, from uint64, ok bool, err error) {
	select {
	case <-f.started:
	case <-ctx.Done():
		return nil, nil, 0, false, ctx.Err()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return nil, nil, 0, false, ErrStopped
	}
	s = &Subscription{feed: f, parents: parents, notify: make(chan struct{}, 1)}
	for id := range parents {
		if f.subs[id] == nil {
			f.subs[id] = map[*Subscription]struct{}{}
		}
		f.subs[id][s] = struct{}{}
	}
	if after == 0 || after < f.horizon {
		return s, nil, f.latest, false, nil
	}
	i := sort.Search(len(f.changes), func(i int) bool { return f.changes[i].Revision > after })
	for _, c := range f.changes[i:] {
		if Concerns(c, parents) {
			backlog = append(backlog, c)
		}
	}
	return s, backlog, f.latest, true, nil
}

// Concerns reports whether c changes what a holder of parents' entries holds.
func Concerns(c datastore.EntryChange, parents Parents) bool {
	return parents[c.Entry.ParentID] || (c.OldParentID != "" && parents[c.OldParentID])
}

// Subscription is one agent's stream of changes.
type Subscription struct {
	feed    *Feed
	parents Parents
	notify  chan struct{}
	// Guarded by feed.mu.
	queue []datastore.EntryChange
	lost  bool
}

func (s *Subscription) poke() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// Ready is signalled when changes are waiting or the subscription is lost.
func (s *Subscription) Ready() <-chan struct{} { return s.notify }

// Next takes the changes waiting, in order. lost means the subscriber fell
// behind (or the feed restarted): close it and subscribe again from the
// last revision delivered.
func (s *Subscription) Next() (changes []datastore.EntryChange, lost bool) {
	s.feed.mu.Lock()
	defer s.feed.mu.Unlock()
	changes, s.queue = s.queue, nil
	return changes, s.lost
}

// CaughtUp returns the revision the feed has reached when nothing waits for
// this subscriber: the agent then holds every change up to it.
func (s *Subscription) CaughtUp() (revision uint64, ok bool) {
	s.feed.mu.Lock()
	defer s.feed.mu.Unlock()
	if len(s.queue) > 0 || s.lost {
		return 0, false
	}
	return s.feed.latest, true
}

// Close ends the subscription.
func (s *Subscription) Close() {
	f := s.feed
	f.mu.Lock()
	defer f.mu.Unlock()
	for id := range s.parents {
		if subs := f.subs[id]; subs != nil {
			delete(subs, s)
			if len(subs) == 0 {
				delete(f.subs, id)
			}
		}
	}
}

// Subscribers is how many subscriptions are open.
func (f *Feed) Subscribers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, subs := range f.subs {
		n += len(subs)
	}
	return n
}
