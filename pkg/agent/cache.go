package agent

import (
	"bytes"
	"container/list"
	"crypto/x509"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/pkg/workloadapi"
)

// entry is a synced registration entry. What the Workload API serves of it
// is its Registration, shared with the served identity.
type entry struct {
	ID string
	workloadapi.Registration
	TTL      time.Duration
	JWTTTL   time.Duration
	DNSNames []string
	Revision int64
	// pos is the entry's place in the served order; guarded by cache.mu.
	pos int
}

// svid is an SVID the agent holds for an entry, kept compact: an agent may
// hold 100k of them. Only the leaf's DER is its own; the rest of the chain
// is shared with every SVID the same intermediate signed, and the few
// fields of the leaf the agent needs are read once, when it arrives, instead
// of keeping the parsed certificate. What the Workload API serves of it is
// its SVID, shared with the served identity.
type svid struct {
	workloadapi.SVID
	Revision int64 // of the entry it was issued for
	Signer   *signer
	NotAfter time.Time
	RenewAt  time.Time
	// Tainted is set once the SVID's signer was reported tainted and its
	// replacement scheduled, so later syncs do not push it back again.
	Tainted bool
}

// signer is the rest of a chain (the intermediates) shared by the SVIDs it
// signed.
type signer struct {
	// KeyID is the signing intermediate's subject key ID: the leaves'
	// authority key ID, what taints and sync reports name.
	KeyID string
	// DER is the intermediates, DER, concatenated.
	DER []byte
}

// cache is the agent's view: entries, SVIDs and the bundle. Every change
// publishes a new immutable workloadapi.State and wakes its watchers.
type cache struct {
	mu        sync.Mutex
	td        spiffeid.TrustDomain
	synced    bool
	entries   map[string]*entry
	svids     map[string]*svid
	bundle    []*x509.Certificate
	bundleSeq uint64
	jwtBundle *jwtbundle.Bundle
	federated map[spiffeid.TrustDomain]*spiffebundle.Bundle
	// selectorPrefixes holds "type:key:" of every selector the entries use.
	selectorPrefixes map[string]bool
	// signers interns the chains' intermediates: one per intermediate seen.
	signers map[string]*signer

	// The served identities in their served order (SPIFFE ID, then entry
	// ID; each entry knows its place), and the selector index: rebuilt when
	// the entries change, not when SVIDs do, so a batch of SVIDs replaces
	// only its own identities.
	identities []*workloadapi.Identity
	bySelector map[attest.Selector][]int32

	// On demand (maxSVIDs above 0): only the entries workloads asked for
	// get SVIDs. wanted holds them with when each was last asked for, most
	// recent first; wake tells the manage loop one is wanted that has none.
	maxSVIDs int
	wanted   *list.List // of *wantedEntry
	wantedAt map[string]*list.Element
	wake     chan<- struct{}
	now      func() time.Time

	state   *workloadapi.State
	changed chan struct{}
}

// wantedEntry is an entry a workload asked for, and when it last did.
type wantedEntry struct {
	id   string
	last time.Time
}

// demandGrace is how long an entry asked for stays wanted even past the
// cache's size: a workload whose stream is open asks again at every change
// of the agent's state, so only entries nobody has asked for in this long
// are let go. Without it, two workloads wanting more than the size between
// them would take each other's SVIDs in turn.
const demandGrace = time.Minute

// onDemand turns on-demand mode on with max SVIDs kept (0: off).
func (c *cache) onDemand(max int, wake chan<- struct{}, now func() time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.maxSVIDs, c.wake, c.now = max, wake, now
	c.wanted, c.wantedAt = list.New(), map[string]*list.Element{}
}

// Want implements workloadapi.Demand: the entries a workload matched are
// the most recently wanted; one without an SVID wakes the manage loop; past
// the size, the least recently wanted that nobody asked for within
// demandGrace are let go, with their SVIDs.
func (c *cache) Want(ids []*workloadapi.Identity) {
	// maxSVIDs is set before the Workload API serves and never changes: in
	// the default mode a fetch costs no lock here.
	if c.maxSVIDs <= 0 {
		return
	}
	c.mu.Lock()
	now := c.now()
	missing := false
	for _, ident := range ids {
		id := ident.EntryID
		if _, ok := c.entries[id]; !ok {
			continue
		}
		if el, ok := c.wantedAt[id]; ok {
			el.Value.(*wantedEntry).last = now
			c.wanted.MoveToFront(el)
			continue
		}
		c.wantedAt[id] = c.wanted.PushFront(&wantedEntry{id: id, last: now})
		if _, held := c.svids[id]; !held {
			missing = true
		}
	}
	var dropped []string
	for c.wanted.Len() > c.maxSVIDs {
		el := c.wanted.Back()
		w := el.Value.(*wantedEntry)
		if now.Sub(w.last) < demandGrace {
			break // the rest are as recent: keep them, past the soft limit
		}
		c.wanted.Remove(el)
		delete(c.wantedAt, w.id)
		if _, held := c.svids[w.id]; held {
			delete(c.svids, w.id)
			dropped = append(dropped, w.id)
		}
	}
	if len(dropped) > 0 {
		c.publish(dropped...)
	}
	c.mu.Unlock()
	if missing {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
}

func newCache(td spiffeid.TrustDomain) *cache {
	c := &cache{td: td, entries: map[string]*entry{}, svids: map[string]*svid{}, signers: map[string]*signer{}, changed: make(chan struct{})}
	c.state = &workloadapi.State{TrustDomain: td}
	return c
}

// internSigner returns the shared signer for a chain's intermediates.
func (c *cache) internSigner(keyID []byte, der []byte) *signer {
	c.mu.Lock()
	defer c.mu.Unlock()
	if sg, ok := c.signers[string(der)]; ok {
		return sg
	}
	if len(c.signers) >= 64 { // rotations leave old ones behind: keep those in use
		c.pruneSignersLocked()
	}
	sg := &signer{KeyID: string(keyID), DER: der}
	c.signers[string(der)] = sg
	return sg
}

func (c *cache) pruneSignersLocked() {
	used := map[*signer]bool{}
	for _, s := range c.svids {
		used[s.Signer] = true
	}
	for k, sg := range c.signers {
		if !used[sg] {
			delete(c.signers, k)
		}
	}
}

// Current implements workloadapi.Source.
func (c *cache) Current() (*workloadapi.State, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state, c.changed
}

// publish makes a new served state and wakes every watcher. Callers hold mu.
// The identities of entries in changedSVIDs are made anew; the others are
// shared with the previous state (states are immutable).
func (c *cache) publish(changedSVIDs ...string) {
	var bundleDER bytes.Buffer
	for _, cert := range c.bundle {
		bundleDER.Write(cert.Raw)
	}
	st := &workloadapi.State{Ready: c.synced, TrustDomain: c.td, BundleDER: bundleDER.Bytes(), JWTBundle: c.jwtBundle, BySelector: c.bySelector}
	if c.jwtBundle != nil {
		st.JWTBundleJSON, _ = c.jwtBundle.Marshal()
	}
	if len(c.federated) > 0 {
		st.Federated = make(map[spiffeid.TrustDomain]*workloadapi.ForeignBundle, len(c.federated))
		for td, b := range c.federated {
			var der bytes.Buffer
			for _, cert := range b.X509Authorities() {
				der.Write(cert.Raw)
			}
			fb := &workloadapi.ForeignBundle{X509DER: der.Bytes(), JWT: b.JWTBundle()}
			if len(b.JWTAuthorities()) > 0 {
				fb.JWTJSON, _ = fb.JWT.Marshal()
			}
			st.Federated[td] = fb
		}
	}
	if len(changedSVIDs) > 0 {
		c.identities = slices.Clone(c.identities)
		for _, id := range changedSVIDs {
			if e, ok := c.entries[id]; ok {
				c.identities[e.pos] = c.identityLocked(e)
			}
		}
	}
	st.Identities = c.identities
	c.state = st
	close(c.changed)
	c.changed = make(chan struct{})
}

// identityLocked is what the Workload API serves of an entry.
func (c *cache) identityLocked(e *entry) *workloadapi.Identity {
	id := &workloadapi.Identity{Registration: &e.Registration}
	if s, ok := c.svids[e.ID]; ok && s.Revision == e.Revision {
		id.SVID = &s.SVID
	}
	return id
}

// indexLocked rebuilds the served order, the positions and the selector
// index from the entries. Each identity is indexed under one of its
// selectors, the one fewest entries use: a workload's candidates are the
// identities indexed under its own selectors, and each matches only if all
// of its selectors are the workload's.
func (c *cache) indexLocked() {
	order := make([]*entry, 0, len(c.entries))
	uses := map[attest.Selector]int{}
	for _, e := range c.entries {
		order = append(order, e)
		for _, sel := range e.Selectors {
			uses[sel]++
		}
	}
	// A stable order: go-spiffe's default picker takes the first SVID, and
	// hints are deduplicated first come, first served.
	slices.SortFunc(order, func(a, b *entry) int {
		if c := strings.Compare(a.SPIFFEID.String(), b.SPIFFEID.String()); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	c.identities = make([]*workloadapi.Identity, len(order))
	c.bySelector = map[attest.Selector][]int32{}
	for i, e := range order {
		c.identities[i] = c.identityLocked(e)
		e.pos = i
		if len(e.Selectors) == 0 {
			continue // never served
		}
		key := e.Selectors[0]
		for _, sel := range e.Selectors[1:] {
			if uses[sel] < uses[key] {
				key = sel
			}
		}
		c.bySelector[key] = append(c.bySelector[key], int32(i)) //nolint:gosec // fewer than 2^31 entries
	}
}

// setEntries replaces the entries held, dropping the SVIDs of entries that
// are gone.
func (c *cache) setEntries(entries map[string]*entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	changed := len(entries) != len(c.entries)
	for id, e := range entries {
		old, ok := c.entries[id]
		if !ok || old.Revision != e.Revision {
			changed = true
			break
		}
		e.pos = old.pos // the same entry read again: the same place
	}
	for id := range c.svids {
		if _, ok := entries[id]; !ok {
			delete(c.svids, id)
		}
	}
	for id, el := range c.wantedAt {
		if _, ok := entries[id]; !ok {
			c.wanted.Remove(el)
			delete(c.wantedAt, id)
		}
	}
	c.entries = entries
	c.selectorPrefixes = selectorPrefixes(entries)
	if changed {
		c.indexLocked()
		c.publish()
	}
}

// setState replaces the bundle, the JWT bundle and the federated bundles
// from a sync answer; the first one makes the cache ready.
func (c *cache) setState(bundle []*x509.Certificate, seq uint64, jwt *jwtbundle.Bundle,
	federated map[spiffeid.TrustDomain]*spiffebundle.Bundle) {
	c.mu.Lock()
	defer c.mu.Unlock()
	changed := !c.synced || seq != c.bundleSeq || !jwt.Equal(c.jwtBundle) ||
		!maps.EqualFunc(federated, c.federated, (*spiffebundle.Bundle).Equal)
	c.jwtBundle, c.federated = jwt, federated
	c.bundle, c.bundleSeq, c.synced = bundle, seq, true
	if changed {
		c.publish()
	}
}

func selectorPrefixes(entries map[string]*entry) map[string]bool {
	out := map[string]bool{}
	for _, e := range entries {
		for _, s := range e.Selectors {
			if key, _, ok := strings.Cut(s.Value, ":"); ok {
				out[s.Type+":"+key+":"] = true
			}
		}
	}
	return out
}

// executableSelectors reports whether an entry held uses unix:path and
// unix:sha256 selectors: the Workload API reads /proc (and hashes) only then.
func (c *cache) executableSelectors() (path, hash bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.selectorPrefixes["unix:path:"], c.selectorPrefixes["unix:sha256:"]
}

// setBundle replaces the bundle (bootstrap, or loaded from disk).
func (c *cache) setBundle(bundle []*x509.Certificate, seq uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.bundle, c.bundleSeq = bundle, seq
	c.publish()
}

func (c *cache) getBundle() ([]*x509.Certificate, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bundle, c.bundleSeq
}

// renewCoalesce is how far ahead due looks: an SVID whose renewal comes
// within it is renewed now, with the others. Renewal times are spread by
// jitter; without this, 100k SVIDs would wake the agent every few
// milliseconds, each time for a scan of every entry. A second early is
// nothing against a renewal at half of a lifetime of at least a minute.
const renewCoalesce = time.Second

// due lists the entries that need an SVID now (none yet, entry changed, or
// past their renewal time, or within renewCoalesce of it) — those without a
// valid SVID first, then the soonest to expire, so a backlog after an outage
// serves the most urgent first — and the earliest later renewal time.
func (c *cache) due(now time.Time) (due []*entry, next time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	horizon := now.Add(renewCoalesce)
	var expiry map[string]time.Time
	for id, e := range c.entries {
		if c.maxSVIDs > 0 && c.wantedAt[id] == nil {
			continue // on demand: nobody asked for it
		}
		s, ok := c.svids[id]
		if !ok || s.Revision != e.Revision || !horizon.Before(s.RenewAt) {
			due = append(due, e)
			if ok {
				if expiry == nil {
					expiry = map[string]time.Time{}
				}
				expiry[id] = s.NotAfter
			}
			continue
		}
		if next.IsZero() || s.RenewAt.Before(next) {
			next = s.RenewAt
		}
	}
	slices.SortFunc(due, func(a, b *entry) int {
		ea, eb := expiry[a.ID], expiry[b.ID] // zero (no SVID) sorts first
		if c := ea.Compare(eb); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return due, next
}

// setSVIDs stores freshly issued SVIDs and publishes them once.
func (c *cache) setSVIDs(issued map[string]*svid) {
	if len(issued) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	changed := make([]string, 0, len(issued))
	for id, s := range issued {
		if _, ok := c.entries[id]; ok {
			c.svids[id] = s
			changed = append(changed, id)
		}
	}
	c.publish(changed...)
}

// signerKeyIDs lists the distinct authority key IDs of the SVIDs held.
func (c *cache) signerKeyIDs() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	seen := map[string]bool{}
	var out [][]byte
	for _, s := range c.svids {
		if aki := s.Signer.KeyID; aki != "" && !seen[aki] {
			seen[aki] = true
			out = append(out, []byte(aki))
		}
	}
	return out
}

// replaceTainted schedules the replacement of every SVID signed by a tainted
// key at a random moment within window, so a taint does not flood the server.
func (c *cache) replaceTainted(tainted map[string]bool, now time.Time, window time.Duration) int {
	if len(tainted) == 0 {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, s := range c.svids {
		if s.Tainted || !tainted[s.Signer.KeyID] {
			continue
		}
		s.Tainted = true
		s.RenewAt = TaintedRenewAt(now, s.RenewAt, window)
		n++
	}
	return n
}

// entriesSnapshot copies the entry map (the entries themselves are immutable).
func (c *cache) entriesSnapshot() map[string]*entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil {
		return map[string]*entry{}
	}
	return maps.Clone(c.entries)
}

// svidCounts returns how many SVIDs are cached and how many of them have
// expired at now.
func (c *cache) svidCounts(now time.Time) (cached, expired int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.svids {
		if !now.Before(s.NotAfter) {
			expired++
		}
	}
	return len(c.svids), expired
}

// unserved counts the entries the agent serves (on demand: those asked
// for) without a valid SVID: none yet (or none for the entry's current
// revision), or one past its NotAfter; first names one of them.
func (c *cache) unserved(now time.Time) (missing, expired int, first string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, e := range c.entries {
		if c.maxSVIDs > 0 && c.wantedAt[id] == nil {
			continue
		}
		switch s, ok := c.svids[id]; {
		case !ok || s.Revision != e.Revision:
			missing++
		case !now.Before(s.NotAfter):
			expired++
		default:
			continue
		}
		if first == "" || e.SPIFFEID.String() < first {
			first = e.SPIFFEID.String()
		}
	}
	return missing, expired, first
}

func (c *cache) lookup(id string) (*entry, *svid) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.entries[id], c.svids[id]
}

// lookupSigner returns the interned signer for these intermediates, or nil.
func (c *cache) lookupSigner(der []byte) *signer {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.signers[string(der)]
}
