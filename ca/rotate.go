package ca

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"
)

// change is a set of authority transitions built on a copy and installed only
// once the journal holding it is saved: a failed save changes nothing.
type change struct {
	c       *CA
	now     time.Time
	auths   []*Authority
	seq     uint64
	revoked []RevokedCertificate
	tainted []string
	base    JournalState
	events  []Transition
	// leader: this replica leads (in leaderTerm), so the cluster duties are
	// its to run; leaderDuty: one of them changed something, so the write
	// is fenced by the term and stamped with it.
	leader, leaderDuty bool
	leaderTerm         int64
	// force saves the records even without a transition (an upgrade).
	force bool
	// gone are the keys of authorities removed by this change; they are
	// destroyed only after the journal no longer names them.
	gone []string
	// created are the root keys made by this change, destroyed if the
	// write is refused.
	created []string
	// made are the intermediate and JWT keys made (or taken from spares)
	// by this change; spares are those of earlier attempts of the same
	// update whose writes were refused, for this attempt to use.
	made   []madeKey
	spares *[]madeKey
	// prune are the records of replicas gone for good, at the revision read.
	prune map[string]int64
}

// maxJournalConflicts bounds how often a change is rebuilt on a fresh read
// after another replica's write got in first.
const maxJournalConflicts = 8

// update applies fn to a fresh copy of the authorities and saves the result;
// if another replica wrote the journal in the meantime, it re-reads and
// applies fn again.
//
// Keys made for an attempt whose write was refused are kept for the next
// attempt rather than made again: making a key can take far longer than a
// write (a passphrase's key derivation, an HSM), and a replica that made
// new keys on every attempt would lose every race to replicas that write
// the shared record more often. Those left unused are destroyed at the end.
func (c *CA) update(ctx context.Context, fn func(ch *change) error) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	var spares []madeKey
	defer func() {
		for _, k := range spares {
			c.destroyKey(ctx, k.ref, "a key made for a change another replica's write refused")
		}
	}()
	for attempt := 1; ; attempt++ {
		if err := c.refresh(ctx); err != nil {
			return err
		}
		ch := c.begin()
		ch.spares = &spares
		err := fn(ch)
		saving := err == nil
		if saving {
			err = ch.commit(ctx)
		}
		if err != nil && (!saving || errors.Is(err, ErrJournalConflict) || errors.Is(err, ErrNotLeader)) {
			// Not saved, or refused: nothing this attempt made is named by
			// the journal. (Another error of the save may hide a write that
			// landed: its keys stay, and the sweep at start removes them if
			// it did not.)
			spares = append(spares, ch.made...)
			ch.destroy(ctx, ch.created, "a key made for a change another replica's write refused")
		}
		// A deposed leader's write is not retried: its duties are the new
		// leader's now, and the next rotation runs without them.
		if attempt == maxJournalConflicts || !errors.Is(err, ErrJournalConflict) {
			return err
		}
	}
}

// madeKey is a key made for an intermediate or a JWT key.
type madeKey struct {
	kind   Kind
	id     string
	signer crypto.Signer
	ref    string
}

// newKey makes a key for an authority of kind, or takes one an earlier
// attempt made and could not use.
func (ch *change) newKey(ctx context.Context, kind Kind) (madeKey, error) {
	if ch.spares != nil {
		for i, k := range *ch.spares {
			if k.kind == kind {
				*ch.spares = slices.Delete(*ch.spares, i, i+1)
				ch.made = append(ch.made, k)
				return k, nil
			}
		}
	}
	id := newAuthorityID()
	signer, ref, err := ch.c.cfg.Keys.CreateKey(ctx, string(kind)+"-"+id, ch.c.cfg.KeyType)
	if err != nil {
		return madeKey{}, fmt.Errorf("ca: create %s key: %w", kind, err)
	}
	k := madeKey{kind: kind, id: id, signer: signer, ref: ref}
	ch.made = append(ch.made, k)
	return k, nil
}

// Transition is one change of an authority's state, as told to OnTransition.
type Transition struct {
	Kind Kind
	// AuthorityID names the authority; What is the transition (prepared,
	// activated, activated_forced, superseded, tainted, revoked, removed, retired, dropped…).
	AuthorityID, What string
	At                time.Time
}

// updateWith is update for a change that yields a result: the one of the
// attempt that was saved.
func updateWith[T any](ctx context.Context, c *CA, fn func(ch *change) (T, error)) (T, error) {
	var out T
	err := c.update(ctx, func(ch *change) error {
		var err error
		out, err = fn(ch)
		return err
	})
	if err != nil {
		var zero T
		return zero, err
	}
	return out, nil
}

func (c *CA) begin() *change {
	c.mu.RLock()
	defer c.mu.RUnlock()
	ch := &change{c: c, now: c.cfg.Clock.Now(), seq: c.bundleSeq, revoked: slices.Clone(c.revoked), tainted: slices.Clone(c.tainted),
		base: c.base, force: c.upgrade, gone: slices.Clone(c.pendingGone), prune: map[string]int64{}}
	ch.leaderTerm, ch.leader = c.leadership()
	for _, a := range c.authorities {
		ch.auths = append(ch.auths, a.clone())
	}
	return ch
}

// find is this replica's authority of kind in state (or the root), or nil.
func (ch *change) find(kind Kind, state State) *Authority {
	return ch.c.findOwn(ch.auths, kind, state)
}

func (ch *change) byID(id string) *Authority {
	for _, a := range ch.auths {
		if a.ID == id {
			return a
		}
	}
	return nil
}

func (ch *change) note(a *Authority, what string) {
	ch.events = append(ch.events, Transition{Kind: a.Kind, AuthorityID: a.ID, What: what, At: ch.now})
}

// bumpBundle raises the bundle sequence: the set of published keys changed.
func (ch *change) bumpBundle() uint64 {
	ch.seq++
	return ch.seq
}

func (ch *change) remove(a *Authority, what string) {
	kept := ch.auths[:0]
	for _, x := range ch.auths {
		if x != a {
			kept = append(kept, x)
		}
	}
	ch.auths = kept
	if ch.c.mine(a) && a.KeyRef != upstreamKeyRef && a.KeyRef != sealedKeyRef {
		ch.gone = append(ch.gone, a.KeyRef)
	}
	if a.Kind != KindIntermediate {
		ch.bumpBundle() // roots and JWT keys are published; intermediates are not
	}
	ch.note(a, what)
}

// records encodes the cluster record and this replica's record. The cluster
// record is nil when its content is what was read: only its stamp (who
// wrote it) would change. A leader duty always writes it, stamped with the
// term, so every leader write shows in the record's history.
func (ch *change) records() (cluster, replica []byte, err error) {
	crec := clusterRecord{Version: journalVersion, BundleSequence: ch.seq, Revoked: ch.revoked, Tainted: ch.tainted}
	rrec := replicaRecord{Version: journalVersion, Authorities: []authorityRecord{}}
	me := ch.c.cfg.ReplicaID
	for _, a := range ch.auths {
		if a.Kind != KindRoot && a.Replica != me {
			continue
		}
		r, err := toRecord(a)
		if err != nil {
			return nil, nil, err
		}
		if a.Kind == KindRoot {
			crec.Authorities = append(crec.Authorities, r)
		} else {
			rrec.Authorities = append(rrec.Authorities, r)
		}
	}
	if replica, err = json.Marshal(rrec); err != nil {
		return nil, nil, err
	}
	if !ch.leaderDuty && !ch.clusterChanged(crec) {
		return nil, replica, nil
	}
	crec.WrittenBy = me
	if ch.leaderDuty {
		crec.LeaderTerm = ch.leaderTerm
	}
	cluster, err = json.Marshal(crec)
	return cluster, replica, err
}

// clusterChanged reports whether crec differs from the cluster record read,
// setting aside who wrote either.
func (ch *change) clusterChanged(crec clusterRecord) bool {
	if len(ch.base.Cluster.Data) == 0 {
		return true
	}
	read, err := decodeCluster(ch.base.Cluster.Data)
	if err != nil {
		return true
	}
	read.WrittenBy, read.LeaderTerm = "", 0
	a, errA := json.Marshal(read)
	b, errB := json.Marshal(crec)
	return errA != nil || errB != nil || !bytes.Equal(a, b)
}

// commit saves the records that changed, then installs the new authorities.
func (ch *change) commit(ctx context.Context) error {
	if len(ch.events) == 0 && !ch.force && len(ch.prune) == 0 {
		return nil
	}
	c, me := ch.c, ch.c.cfg.ReplicaID
	cluster, replica, err := ch.records()
	if err != nil {
		return fmt.Errorf("ca: encode journal: %w", err)
	}
	w := JournalWrite{ReplicaID: me, Leader: ch.leaderDuty, LeaderTerm: ch.leaderTerm, Prune: ch.prune}
	if cluster != nil {
		w.Cluster = &JournalRecord{Data: cluster, Revision: ch.base.Cluster.Revision}
	}
	if !bytes.Equal(replica, ch.base.Replicas[me].Data) {
		w.Replica = &JournalRecord{Data: replica, Revision: ch.base.Replicas[me].Revision}
	}
	base := cloneState(ch.base)
	if w.Cluster != nil || w.Replica != nil || len(w.Prune) > 0 {
		rev, err := c.cfg.Journal.SaveCAJournal(ctx, w)
		if err != nil {
			return fmt.Errorf("ca: save journal: %w", err)
		}
		if w.Cluster != nil {
			base.Cluster = JournalRecord{Data: cluster, Revision: rev}
		}
		if w.Replica != nil {
			base.Replicas[me] = JournalRecord{Data: replica, Revision: rev}
		}
		for id := range w.Prune {
			delete(base.Replicas, id)
		}
	}
	c.install(ch.auths, ch.seq, ch.revoked, ch.tainted, base)
	c.upgrade, c.pendingGone = false, nil
	ch.destroy(ctx, ch.gone, "a removed authority's key")
	for _, e := range ch.events {
		c.cfg.Logger.InfoContext(ctx, "CA authority "+e.What, slog.String("kind", string(e.Kind)), slog.String("authority_id", e.AuthorityID),
			slog.String("replica_id", me), slog.Uint64("bundle_sequence", ch.seq))
		if c.cfg.OnTransition != nil {
			c.cfg.OnTransition(e)
		}
	}
	return nil
}

// destroy deletes keys no record names.
func (ch *change) destroy(ctx context.Context, refs []string, what string) {
	for _, ref := range refs {
		ch.c.destroyKey(ctx, ref, what)
	}
}

func (c *CA) destroyKey(ctx context.Context, ref, what string) {
	d, ok := c.cfg.Keys.(KeyDeleter)
	if !ok {
		return
	}
	if err := d.DeleteKey(ctx, ref); err != nil {
		// Harmless: an unreferenced key is never loaded again.
		c.cfg.Logger.WarnContext(ctx, "could not delete "+what, slog.String("key_ref", ref), slog.Any("error", err))
	}
}

// prepare creates the next key of kind (not yet signing) and publishes it.
func (ch *change) prepare(ctx context.Context, kind Kind) (*Authority, error) {
	var a *Authority
	var err error
	switch kind {
	case KindIntermediate:
		root := ch.find(KindRoot, StateActive)
		if root == nil {
			return nil, ErrNoActiveRoot
		}
		if !root.NotAfter.After(ch.now) {
			return nil, fmt.Errorf("ca: root %s expired at %s", root.ID, root.NotAfter.Format(time.RFC3339))
		}
		if NotYetValid(root, ch.now) {
			return nil, fmt.Errorf("ca: root %s is not valid before %s and the clock says %s: the clock stepped back; fix the clock (a new root would have to reach every agent first)",
				root.ID, root.NotBefore.Format(time.RFC3339), ch.now.Format(time.RFC3339))
		}
		var key madeKey
		if key, err = ch.newKey(ctx, kind); err == nil {
			a, err = ch.c.newIntermediate(key, root, ch.now)
		}
	case KindJWT:
		var key madeKey
		if key, err = ch.newKey(ctx, kind); err == nil {
			a, err = ch.c.newJWTKey(key, ch.now)
		}
		if err == nil {
			a.BundleSequence = ch.bumpBundle()
		}
	default:
		return nil, fmt.Errorf("ca: %s keys do not rotate on a schedule", kind)
	}
	if err != nil {
		return nil, err
	}
	a.Replica = ch.c.cfg.ReplicaID
	ch.auths = append(ch.auths, a)
	ch.note(a, "prepared")
	return a, nil
}

// activate makes next the active key of its kind; the active one becomes old.
func (ch *change) activate(next *Authority) {
	if cur := ch.find(next.Kind, StateActive); cur != nil {
		cur.State = StateOld
		ch.note(cur, "superseded")
	}
	next.State = StateActive
	ch.note(next, "activated")
}

// Rotate applies every scheduled transition that is due: old keys past their
// life are removed, the successor of each active key is prepared at its
// prepare time and activated at its activation time, and a missing or
// unusable active key is replaced at once (after a long stop). It is cheap
// when nothing is due; the server calls it every few seconds.
func (c *CA) Rotate(ctx context.Context) error {
	return c.update(ctx, func(ch *change) error {
		if ch.find(KindRoot, StateActive) == nil {
			// Any replica may make the first root: if two race, one write
			// wins and the other adopts its root.
			if err := ch.bootstrapRoot(ctx); err != nil {
				return err
			}
		}
		if err := ch.leaderDuties(func() error { return ch.rotateRoot(ctx) }); err != nil {
			return err
		}
		for _, kind := range []Kind{KindIntermediate, KindJWT} {
			if err := ch.rotateKind(ctx, kind); err != nil {
				return err
			}
		}
		return ch.leaderDuties(func() error {
			ch.retireRoot()
			ch.pruneRevoked()
			ch.pruneReplicas()
			return nil
		})
	})
}

// leaderDuties runs cluster duties if this replica leads; a write that
// holds any of their changes is fenced by the leadership.
func (ch *change) leaderDuties(duties func() error) error {
	if !ch.leader {
		return nil
	}
	before, force := len(ch.events), ch.force
	err := duties()
	if len(ch.events) > before || ch.force != force {
		ch.leaderDuty = true
	}
	return err
}

func (ch *change) bootstrapRoot(ctx context.Context) error {
	var root *Authority
	if ch.c.cfg.Upstream != nil {
		root = ch.c.upstreamRoot()
	} else {
		var err error
		if root, err = ch.newRoot(ctx); err != nil {
			return err
		}
	}
	root.BundleSequence = ch.bumpBundle()
	ch.auths = append(ch.auths, root)
	ch.note(root, "activated")
	return nil
}

// newRoot makes a root key, sealed into the journal where the key manager
// keeps keys on this machine.
func (ch *change) newRoot(ctx context.Context) (*Authority, error) {
	root, err := ch.c.newRoot(ctx, ch.now)
	if err != nil {
		return nil, err
	}
	ch.created = append(ch.created, root.KeyRef)
	unsealed, err := ch.c.sealRoot(ctx, root)
	if err != nil {
		return nil, err
	}
	if unsealed != "" {
		ch.gone = append(ch.gone, unsealed) // only the sealed copy is kept
	}
	return root, nil
}

func (ch *change) rotateKind(ctx context.Context, kind Kind) error {
	if err := ch.advance(ctx, kind); err != nil {
		return err
	}
	// Removal last, so a key retired just now (after a long stop) that has
	// already expired goes at once. Only this replica's own: another's old
	// keys leave with its own write (or its pruning, once it is gone).
	s := ch.c.schedule
	for _, a := range append([]*Authority(nil), ch.auths...) {
		if a.Kind == kind && a.State == StateOld && ch.c.mine(a) && !ch.now.Before(s.RemoveAt(a)) {
			ch.remove(a, "removed")
		}
	}
	return nil
}

func (ch *change) advance(ctx context.Context, kind Kind) error {
	s := ch.c.schedule
	active := ch.find(kind, StateActive)
	prepared := ch.find(kind, StatePrepared)
	if root := ch.find(KindRoot, StateActive); kind == KindIntermediate && root != nil {
		// Another replica activated a new root: this replica's intermediates
		// chain to the old one, so a new one takes over at once.
		if prepared != nil && prepared.ParentID != root.ID {
			ch.remove(prepared, "dropped")
			prepared = nil
		}
		if active != nil && active.ParentID != root.ID {
			next, err := ch.prepare(ctx, kind)
			if err != nil {
				return err
			}
			ch.activate(next)
			ch.note(next, "activated_after_root_change")
			return nil
		}
	}
	if prepared != nil && (!s.CanSignFullTTL(prepared, ch.now) || NotYetValid(prepared, ch.now)) {
		// Prepared so long ago (a long stop) that it could not serve a full
		// term, or after now (the clock stepped back): drop it, start over.
		ch.remove(prepared, "dropped")
		prepared = nil
	}
	if active != nil && NotYetValid(active, ch.now) {
		// The clock stepped back past the active key's NotBefore: it must not
		// sign (nothing it signed would chain), so a fresh key takes over at
		// once. The stepped-back key retires like any old one.
		ch.c.cfg.Logger.WarnContext(ctx, "the clock stepped back before the active key's NotBefore; replacing it at once",
			slog.String("kind", string(kind)), slog.String("authority_id", active.ID),
			slog.Time("not_before", active.NotBefore), slog.Time("now", ch.now), slog.Duration("step", active.NotBefore.Sub(ch.now)))
		next, err := ch.prepare(ctx, kind)
		if err != nil {
			return err
		}
		ch.activate(next)
		ch.note(next, "activated_after_clock_step")
		return nil
	}
	// No usable active key (first start, or a stop longer than the schedule):
	// take over at once with the prepared key if it can sign, or a new one.
	if active == nil || !s.CanSignFullTTL(active, ch.now) {
		if prepared == nil {
			var err error
			if prepared, err = ch.prepare(ctx, kind); err != nil {
				return err
			}
		}
		ch.activate(prepared)
		return nil
	}
	if prepared == nil && !ch.now.Before(s.PrepareAt(active)) {
		var err error
		if prepared, err = ch.prepare(ctx, kind); err != nil {
			return err
		}
	}
	if prepared != nil && !ch.now.Before(s.ActivateAt(active)) {
		ch.activate(prepared)
	}
	return nil
}

// NextTransition says what happens next to a and when, for `ca show`.
func (c *CA) NextTransition(a Authority) (string, time.Time) {
	s := c.schedule
	switch {
	case !c.mine(&a):
		return "", time.Time{} // another replica's schedule
	case a.Kind == KindRoot:
		return c.nextRootTransition(a)
	case a.State == StateOld:
		return "removal", s.RemoveAt(&a)
	case a.State == StatePrepared:
		if active := c.activeOf(a.Kind); active != nil {
			return "activation", s.ActivateAt(active)
		}
		return "activation", a.NotBefore
	default:
		c.mu.RLock()
		hasPrepared := false
		for _, x := range c.authorities {
			if x.Kind == a.Kind && x.State == StatePrepared && x.Replica == a.Replica {
				hasPrepared = true
			}
		}
		c.mu.RUnlock()
		if hasPrepared {
			return "successor activation", s.ActivateAt(&a)
		}
		return "successor preparation", s.PrepareAt(&a)
	}
}

func (c *CA) activeOf(kind Kind) *Authority {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.findOwn(c.authorities, kind, StateActive)
}

// nextRootTransition says what happens next to root a and when.
func (c *CA) nextRootTransition(a Authority) (string, time.Time) {
	st := c.RootRotation()
	if !st.Scheduled {
		return "", time.Time{}
	}
	switch a.State {
	case StatePrepared:
		return "activation once the propagation gate passes, forced", st.ForceAt
	case StateOld:
		return "retirement", st.RetireAt
	default:
		if st.PreparedRootID != "" {
			return "successor activation once the propagation gate passes, forced", st.ForceAt
		}
		if st.OldRootID != "" {
			return "successor preparation after the old root retires", st.PrepareAt
		}
		return "successor preparation", st.PrepareAt
	}
}

// NextEvent is the earliest time at which Rotate will change something by
// the clock alone. It is now while a prepared root waits on the propagation
// gate, which can pass at any moment. Simulations use it to skip quiet spans.
func (c *CA) NextEvent() time.Time {
	now := c.cfg.Clock.Now()
	c.mu.RLock()
	defer c.mu.RUnlock()
	next := time.Time{}
	consider := func(t time.Time) {
		if t.Before(now) {
			t = now
		}
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	find := func(kind Kind, state State) *Authority { return c.findOwn(c.authorities, kind, state) }
	for _, kind := range []Kind{KindIntermediate, KindJWT} {
		active, prepared := find(kind, StateActive), find(kind, StatePrepared)
		switch {
		case active == nil:
			return now
		case prepared != nil:
			consider(c.schedule.ActivateAt(active))
			consider(prepared.NotAfter.Add(-c.schedule.MaxSignedTTL)) // dropped if it could no longer serve a full term
		default:
			consider(c.schedule.PrepareAt(active))
		}
	}
	for _, a := range c.authorities {
		if a.State == StateOld && a.Kind != KindRoot && c.mine(a) {
			consider(c.schedule.RemoveAt(a))
		}
	}
	if c.cfg.Upstream == nil {
		root := find(KindRoot, StateActive)
		switch {
		case root == nil || find(KindRoot, StatePrepared) != nil:
			return now
		case find(KindRoot, StateOld) == nil: // an old root retires with its last intermediate, counted above
			consider(c.rootSchedule.PrepareAt(root))
		}
	}
	return next
}
