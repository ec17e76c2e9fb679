package drill

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/pkg/agent"
	"github.com/shortleaf/shortleaf/pkg/api"
	"github.com/shortleaf/shortleaf/pkg/clock"
	"github.com/shortleaf/shortleaf/pkg/datastore"
)

// Config is what to drill: the operator's CA settings and journal, and the
// simulated fleet.
type Config struct {
	// CA is the operator's CA config. Keys, Journal, Clock, RootGate,
	// RootGateLead, Logger and OnTransition are the drill's own.
	CA ca.Config
	// Journal is the current CA journal as ca.ExportJournal writes it (read,
	// never written); nil drills a first start.
	Journal []byte
	// Start is when the drill begins; default the real time now.
	Start time.Time
	// Duration is how long to drill; default DefaultDuration.
	Duration time.Duration
	// Step is the simulated clock's tick and the resolution of every check; default 5s.
	Step time.Duration
	// Agents is the number of simulated agents; default 2. Each holds an
	// X.509-SVID of WorkloadTTL and one of AgentSVIDTTL.
	Agents                    int
	WorkloadTTL, AgentSVIDTTL time.Duration
	// SyncInterval is how often agents sync; default 5s.
	SyncInterval time.Duration
	// AgentLiveness and BundleRefreshHint are the server's: they shape the
	// propagation gate. With a refresh hint, a federated consumer fetches
	// the bundle at that interval and verifies every SVID too.
	AgentLiveness, BundleRefreshHint time.Duration
	// Outages take agents offline: they neither sync, renew nor serve.
	Outages []Outage
	// FastForward skips the quiet spans between CA transitions (renewing
	// every SVID as the agents would have); the checks still run at every
	// step of every span in which anything changes.
	FastForward bool
	// BeforeStep, if set, runs at every step before the CA rotates: scripted
	// admin operations in tests. It disables FastForward.
	BeforeStep func(*Drill)
}

// Outage is a span during which an agent is offline, as offsets from Start.
type Outage struct {
	Agent    int
	From, To time.Duration
}

// Defaults.
const (
	DefaultStep         = 5 * time.Second
	DefaultSyncInterval = 5 * time.Second
	DefaultAgents       = 2
	// margin after the next root expiry that DefaultDuration adds
	pastRootExpiry = 7 * 24 * time.Hour
)

// DefaultDuration runs past the active root's expiry (by a week), so a
// drill always covers the next root rotation.
func DefaultDuration(start, rootNotAfter time.Time) time.Duration {
	return rootNotAfter.Sub(start) + pastRootExpiry
}

// Event is one line of the timeline.
type Event struct {
	At          time.Time `json:"at"`
	Day         float64   `json:"day"`
	Kind        string    `json:"kind"` // root, intermediate, jwt, agent
	AuthorityID string    `json:"authority_id,omitempty"`
	What        string    `json:"what"`
}

// Violation is a moment where the promise broke: a workload would have been
// hurt.
type Violation struct {
	At     time.Time `json:"at"`
	Day    float64   `json:"day"`
	Reason string    `json:"reason"`
}

// Report is what a drill found.
type Report struct {
	Start      time.Time   `json:"start"`
	End        time.Time   `json:"end"`
	Timeline   []Event     `json:"timeline"`
	Violations []Violation `json:"violations"`
	// SVIDsSigned counts renewals; Verifications distinct chain/bundle
	// checks; FastForwards quiet spans skipped.
	SVIDsSigned   int `json:"svids_signed"`
	Verifications int `json:"verifications"`
	FastForwards  int `json:"fast_forwards"`
	RootRotations int `json:"root_rotations"`
}

// OK reports whether the drill found no violation.
func (r *Report) OK() bool { return len(r.Violations) == 0 }

type svid struct {
	id      spiffeid.ID
	ttl     time.Duration
	key     crypto.Signer
	chain   []*x509.Certificate
	renewAt time.Time
	tainted bool
}

type simAgent struct {
	id       string
	bundle   *x509bundle.Bundle
	seq      uint64
	rootsKey string
	nextSync time.Time
	lastSeen time.Time
	offline  bool
	svids    []*svid
}

// consumer is a federated trust domain polling the bundle endpoint.
type consumer struct {
	bundle   *x509bundle.Bundle
	rootsKey string
	next     time.Time
}

// Drill is a drill in progress; BeforeStep hooks use it.
type Drill struct {
	cfg      Config
	CA       *ca.CA
	Clock    *clock.Fake
	agents   []*simAgent
	consumer *consumer
	verified map[string]bool
	report   Report
	failed   bool
	// deadline of the root that an activation supersedes, noted before rotating
	rootDeadline time.Time
	mu           sync.Mutex // guards report.Timeline against OnTransition
}

// Run drills cfg and returns the report. An error means the drill itself
// could not run (a journal it cannot read); everything the CA does wrong is
// a violation in the report, including a config the CA refuses.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	d, err := newDrill(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if d.failed {
		return &d.report, nil
	}
	d.run(ctx)
	return &d.report, nil
}

func newDrill(ctx context.Context, cfg Config) (*Drill, error) {
	if cfg.Start.IsZero() {
		cfg.Start = time.Now().UTC().Truncate(time.Second)
	}
	if cfg.Step == 0 {
		cfg.Step = DefaultStep
	}
	if cfg.SyncInterval == 0 {
		cfg.SyncInterval = DefaultSyncInterval
	}
	if cfg.Agents == 0 {
		cfg.Agents = DefaultAgents
	}
	if cfg.CA.MaxSVIDTTL == 0 {
		cfg.CA.MaxSVIDTTL = max(cfg.WorkloadTTL, cfg.AgentSVIDTTL)
	}
	if cfg.WorkloadTTL == 0 {
		cfg.WorkloadTTL = cfg.CA.MaxSVIDTTL
	}
	if cfg.AgentSVIDTTL == 0 {
		cfg.AgentSVIDTTL = cfg.CA.MaxSVIDTTL
	}
	if cfg.BeforeStep != nil {
		cfg.FastForward = false
	}
	clk := clock.NewFake(cfg.Start)
	d := &Drill{cfg: cfg, Clock: clk, verified: map[string]bool{}, report: Report{Start: cfg.Start}}
	for i := range cfg.Agents {
		a := &simAgent{id: fmt.Sprintf("spiffe://%s/agent/drill/%d", cfg.CA.TrustDomain.Name(), i),
			nextSync: cfg.Start.Add(time.Duration(i) * time.Second), lastSeen: cfg.Start}
		for _, spec := range []struct {
			path string
			ttl  time.Duration
		}{{fmt.Sprintf("/drill/workload/%d", i), cfg.WorkloadTTL}, {fmt.Sprintf("/agent/drill/%d", i), cfg.AgentSVIDTTL}} {
			key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				return nil, err
			}
			a.svids = append(a.svids, &svid{id: spiffeid.RequireFromPath(cfg.CA.TrustDomain, spec.path), ttl: spec.ttl, key: key})
		}
		d.agents = append(d.agents, a)
	}
	if cfg.BundleRefreshHint > 0 {
		d.consumer = &consumer{next: cfg.Start}
	}

	keys := &memoryKeys{}
	caCfg := cfg.CA
	caCfg.Keys, caCfg.Clock, caCfg.KeyType = keys, clk, "ec-p256" // stand-ins: the schedule does not depend on the key type
	caCfg.Logger = slog.New(slog.DiscardHandler)
	gate := &api.PropagationGate{Agents: d, Clock: clk, AgentLiveness: cfg.AgentLiveness, BundleRefreshHint: cfg.BundleRefreshHint}
	caCfg.RootGate, caCfg.RootGateLead = gate.Blockers, gate.Lead()
	caCfg.OnTransition = d.onTransition
	if caCfg.Upstream != nil {
		up, err := standInUpstream(caCfg.Upstream)
		if err != nil {
			return nil, err
		}
		caCfg.Upstream = up
	}
	journal := &ca.MemoryJournal{}
	if cfg.Journal != nil {
		// The drill runs as the replica that exported the journal; other
		// replicas' keys stay as they are until the leader prunes them.
		state, replicaID, err := ca.ImportJournal(cfg.Journal)
		if err != nil {
			return nil, fmt.Errorf("drill: %w", err)
		}
		if state, err = ca.StandInJournal(ctx, state, cfg.CA.TrustDomain, keys, "ec-p256", caCfg.Upstream); err != nil {
			return nil, fmt.Errorf("drill: %w", err)
		}
		journal = ca.NewMemoryJournal(state)
		caCfg.ReplicaID = replicaID
	}
	caCfg.Journal = journal
	c, err := ca.New(ctx, caCfg)
	if err != nil {
		d.violate("the CA refuses to start: %v", err)
		return d, nil
	}
	d.CA = c
	if d.cfg.Duration == 0 {
		d.cfg.Duration = DefaultDuration(cfg.Start, c.RootRotation().RootNotAfter)
	}
	return d, nil
}

// ListAgents is the simulated fleet as the propagation gate sees it.
func (d *Drill) ListAgents(context.Context) ([]*datastore.Agent, error) {
	out := make([]*datastore.Agent, 0, len(d.agents))
	for _, a := range d.agents {
		out = append(out, &datastore.Agent{SPIFFEID: a.id, LastSeen: a.lastSeen, BundleSequence: a.seq})
	}
	return out, nil
}

func (d *Drill) day(t time.Time) float64 { return t.Sub(d.cfg.Start).Hours() / 24 }

func (d *Drill) violate(format string, args ...any) {
	now := d.Clock.Now()
	d.report.Violations = append(d.report.Violations, Violation{At: now, Day: d.day(now), Reason: fmt.Sprintf(format, args...)})
	d.failed = true
}

func (d *Drill) note(kind, id, what string) {
	now := d.Clock.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.report.Timeline = append(d.report.Timeline, Event{At: now, Day: d.day(now), Kind: kind, AuthorityID: id, What: what})
}

func (d *Drill) onTransition(t ca.Transition) {
	d.note(string(t.Kind), t.AuthorityID, t.What)
	if t.Kind != ca.KindRoot {
		return
	}
	switch t.What {
	case "activated_forced":
		d.violate("root %s was activated WITHOUT the propagation gate (it did not pass before the old root's last moment): consumers that lack it would not verify its SVIDs", t.AuthorityID)
	case "activated":
		if d.CA == nil { // the first root, at a first start
			return
		}
		d.report.RootRotations++
		if !d.rootDeadline.IsZero() && t.At.After(d.rootDeadline) {
			d.violate("root %s took over %s after the old root's deadline (%s): the last intermediates were cut short; raise root_prepare_before",
				t.AuthorityID, t.At.Sub(d.rootDeadline).Round(time.Second), d.rootDeadline.Format(time.RFC3339))
		}
	}
}

func (d *Drill) run(ctx context.Context) {
	end := d.cfg.Start.Add(d.cfg.Duration)
	for _, a := range d.agents {
		d.sync(a)
		for _, sv := range a.svids {
			d.renew(a, sv)
		}
	}
	for !d.failed && d.Clock.Now().Before(end) {
		if d.cfg.FastForward {
			d.fastForward(ctx, end)
			if d.failed {
				break
			}
		}
		d.Clock.Add(min(d.cfg.Step, end.Sub(d.Clock.Now())))
		d.step(ctx)
	}
	d.report.End = d.Clock.Now()
	d.report.Verifications = len(d.verified)
}

func (d *Drill) step(ctx context.Context) {
	now := d.Clock.Now()
	if d.cfg.BeforeStep != nil {
		d.cfg.BeforeStep(d)
	}
	d.rootDeadline = d.CA.RootRotation().Deadline
	if err := d.CA.Rotate(ctx); err != nil {
		d.violate("the CA could not rotate: %v", err)
		return
	}
	d.applyOutages(now)
	for _, a := range d.agents {
		if a.offline {
			continue
		}
		if !now.Before(a.nextSync) {
			d.sync(a)
		}
		for _, sv := range a.svids {
			if !now.Before(sv.renewAt) {
				d.renew(a, sv)
			}
		}
	}
	if c := d.consumer; c != nil && !now.Before(c.next) {
		c.bundle, _ = d.CA.Bundle()
		c.rootsKey = rootsKey(c.bundle)
		c.next = now.Add(d.cfg.BundleRefreshHint)
	}
	d.check()
}

// applyOutages takes agents offline and back as the outages say.
func (d *Drill) applyOutages(now time.Time) {
	for i, a := range d.agents {
		off := false
		for _, o := range d.cfg.Outages {
			at := now.Sub(d.cfg.Start)
			if o.Agent == i && at >= o.From && at < o.To {
				off = true
			}
		}
		if off == a.offline {
			continue
		}
		a.offline = off
		if off {
			d.note("agent", a.id, "offline")
			continue
		}
		d.note("agent", a.id, "back online")
		a.nextSync = now // it syncs before it serves or renews
	}
}

// sync is what an agent learns from the server: the bundle and the tainted keys.
func (d *Drill) sync(a *simAgent) {
	now := d.Clock.Now()
	a.bundle, a.seq = d.CA.Bundle()
	a.rootsKey = rootsKey(a.bundle)
	a.lastSeen = now
	tainted := map[string]bool{}
	for _, id := range d.CA.TaintedKeyIDs() {
		tainted[string(id)] = true
	}
	for _, sv := range a.svids {
		if sv.chain != nil && !sv.tainted && tainted[string(sv.chain[0].AuthorityKeyId)] {
			sv.tainted = true
			sv.renewAt = agent.TaintedRenewAt(now, sv.renewAt, d.cfg.SyncInterval)
		}
	}
	a.nextSync = now.Add(d.cfg.SyncInterval)
}

// renew obtains a fresh SVID from the CA and checks what it must be.
func (d *Drill) renew(a *simAgent, sv *svid) {
	now := d.Clock.Now()
	chain, err := d.CA.SignX509SVID(ca.X509SVIDParams{PublicKey: sv.key.Public(), SPIFFEID: sv.id, TTL: sv.ttl})
	if err != nil {
		d.violate("%s could not renew %s: %v", a.id, sv.id, err)
		return
	}
	d.report.SVIDsSigned++
	leaf := chain[0]
	if !leaf.NotAfter.Equal(now.Add(sv.ttl)) {
		d.violate("%s got a lifetime cut to %s (want its full TTL %s)", sv.id, leaf.NotAfter.Sub(now).Round(time.Second), sv.ttl)
	}
	if leaf.NotAfter.After(chain[1].NotAfter) {
		d.violate("%s (until %s) outlives its signer (until %s)", sv.id, leaf.NotAfter, chain[1].NotAfter)
	}
	sv.chain, sv.tainted = chain, false
	sv.renewAt = agent.RenewAt(now, leaf.NotAfter)
}

// check is the invariant at this instant: every SVID an online agent serves
// is valid now and verifies against the bundle every online agent and the
// federated consumer holds. A chain verifies the same for every SVID its
// intermediate signed, so each (intermediate, bundle) pair is verified once
// by go-spiffe; leaf validity and issuer are checked every time.
func (d *Drill) check() {
	now := d.Clock.Now()
	type verifier struct {
		name     string
		bundle   *x509bundle.Bundle
		rootsKey string
	}
	var verifiers []verifier
	for _, a := range d.agents {
		if !a.offline {
			verifiers = append(verifiers, verifier{a.id, a.bundle, a.rootsKey})
		}
	}
	if c := d.consumer; c != nil && c.bundle != nil {
		verifiers = append(verifiers, verifier{"a federated consumer of the bundle endpoint", c.bundle, c.rootsKey})
	}
	for _, holder := range d.agents {
		if holder.offline {
			continue
		}
		for _, sv := range holder.svids {
			if len(sv.chain) < 2 {
				continue
			}
			for _, c := range sv.chain {
				if now.Before(c.NotBefore) || !now.Before(c.NotAfter) {
					d.violate("%s serves %s with a certificate valid only %s to %s", holder.id, sv.id, c.NotBefore.Format(time.RFC3339), c.NotAfter.Format(time.RFC3339))
					return
				}
			}
			leaf, inter := sv.chain[0], sv.chain[1]
			if string(leaf.AuthorityKeyId) != string(inter.SubjectKeyId) || string(leaf.RawIssuer) != string(inter.RawSubject) {
				d.violate("%s's SVID %s is not issued by the intermediate it is chained with", holder.id, sv.id)
				return
			}
			for _, v := range verifiers {
				key := inter.SerialNumber.String() + v.rootsKey
				if d.verified[key] {
					continue
				}
				if _, _, err := x509svid.Verify(sv.chain, v.bundle, x509svid.WithTime(now)); err != nil {
					d.violate("%s's SVID %s does not verify at %s: %v", holder.id, sv.id, v.name, err)
					return
				}
				d.verified[key] = true
			}
		}
	}
}

// fastForward skips to shortly before the CA's next transition when it is
// far enough away that nothing can happen in between: the same intermediate
// signs every renewal and the bundle does not change, so the agents' state
// at the end of the span is as if they had renewed along the way.
func (d *Drill) fastForward(ctx context.Context, end time.Time) {
	now := d.Clock.Now()
	next := d.CA.NextEvent()
	for _, o := range d.cfg.Outages {
		for _, at := range []time.Time{d.cfg.Start.Add(o.From), d.cfg.Start.Add(o.To)} {
			if at.After(now) && at.Before(next) {
				next = at
			}
		}
	}
	if end.Before(next) {
		next = end
	}
	// SVIDs alive at the transition were issued within a max TTL of it.
	lead := d.cfg.CA.MaxSVIDTTL + 2*d.cfg.SyncInterval + 2*d.cfg.Step
	if d.consumer != nil {
		lead += d.cfg.BundleRefreshHint
	}
	target := next.Add(-lead)
	// Land on the step grid, so a drill with and without fast-forward calls
	// Rotate at the same instants and sees the same transitions.
	target = d.cfg.Start.Add(target.Sub(d.cfg.Start).Truncate(d.cfg.Step))
	if target.Sub(now) < lead {
		return
	}
	d.Clock.Add(target.Sub(now))
	if err := d.CA.Rotate(ctx); err != nil {
		d.violate("the CA could not rotate: %v", err)
		return
	}
	d.report.FastForwards++
	for _, a := range d.agents {
		if a.offline {
			continue
		}
		d.sync(a)
		for _, sv := range a.svids {
			d.renew(a, sv)
		}
	}
	if c := d.consumer; c != nil {
		c.bundle, _ = d.CA.Bundle()
		c.rootsKey = rootsKey(c.bundle)
		c.next = target.Add(d.cfg.BundleRefreshHint)
	}
	d.check()
}

func rootsKey(b *x509bundle.Bundle) string {
	h := sha256.New()
	for _, r := range b.X509Authorities() {
		h.Write(r.Raw)
	}
	return string(h.Sum(nil))
}

// InUse lists the online agents holding an SVID signed by keyID (hex): the
// revoke check.
func (d *Drill) InUse(keyID string) []string {
	var out []string
	for _, a := range d.agents {
		for _, sv := range a.svids {
			if len(sv.chain) > 0 && fmt.Sprintf("%x", sv.chain[0].AuthorityKeyId) == keyID {
				out = append(out, a.id)
			}
		}
	}
	return out
}

// Violate records a violation found by a BeforeStep hook.
func (d *Drill) Violate(format string, args ...any) { d.violate(format, args...) }

// memoryKeys is a KeyManager of stand-in keys held only in memory.
type memoryKeys struct {
	mu   sync.Mutex
	keys map[string]crypto.Signer
}

func (m *memoryKeys) CreateKey(_ context.Context, name, _ string) (crypto.Signer, string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, "", err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.keys == nil {
		m.keys = map[string]crypto.Signer{}
	}
	ref := fmt.Sprintf("memory:%s:%d", name, len(m.keys))
	m.keys[ref] = key
	return key, ref, nil
}

func (m *memoryKeys) LoadKey(_ context.Context, ref string) (crypto.Signer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if k, ok := m.keys[ref]; ok {
		return k, nil
	}
	return nil, errors.New("drill: no such stand-in key " + ref)
}
