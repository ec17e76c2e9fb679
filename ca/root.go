package ca

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Root rotation is scheduled (RootSchedule) and gated on propagation: the
// successor is first published (prepare raises the bundle sequence) and may
// sign only once the RootGate lists nothing still lacking it, so no workload
// ever meets an SVID it cannot verify. The old root leaves the bundle when
// nothing that chains to it is left. Operators may step ahead of the
// schedule with PrepareRoot, ActivateRoot and RetireRoot.

// RootRotationStatus is where root rotation stands, for `ca show` and metrics.
type RootRotationStatus struct {
	// Scheduled is false with an upstream authority: its root rotates there.
	Scheduled bool
	// ActiveRootID is the root that signs intermediates, RootNotAfter its expiry.
	ActiveRootID string
	RootNotAfter time.Time
	// PrepareAt, Deadline and ForceAt are the active root's schedule (RootSchedule).
	PrepareAt, Deadline, ForceAt time.Time
	// PreparedRootID is the successor waiting on the gate, published at PreparedAt.
	PreparedRootID string
	PreparedAt     time.Time
	// Blockers is what the last gate check found still lacking the prepared
	// root, at GateCheckedAt.
	Blockers      []string
	GateCheckedAt time.Time
	// OldRootID is a superseded root still in the bundle until RetireAt.
	OldRootID string
	RetireAt  time.Time
}

// GateStatus is the last check of the propagation gate.
type GateStatus struct {
	PreparedRootID string
	Blockers       []string
	CheckedAt      time.Time
}

// RootRotation reports the active root's schedule and the gate.
func (c *CA) RootRotation() RootRotationStatus {
	st := RootRotationStatus{Scheduled: c.cfg.Upstream == nil}
	rs := c.rootSchedule
	c.mu.RLock()
	for _, a := range c.authorities {
		if a.Kind != KindRoot {
			continue
		}
		switch a.State {
		case StateActive:
			st.ActiveRootID, st.RootNotAfter = a.ID, a.NotAfter
			st.PrepareAt, st.Deadline, st.ForceAt = rs.PrepareAt(a), rs.Deadline(a), rs.ForceAt(a)
		case StatePrepared:
			st.PreparedRootID, st.PreparedAt = a.ID, a.NotBefore.Add(Backdate)
		case StateOld:
			st.OldRootID = a.ID
			for _, child := range c.authorities {
				if child.ParentID == a.ID && child.NotAfter.After(st.RetireAt) {
					st.RetireAt = child.NotAfter
				}
			}
		}
	}
	c.mu.RUnlock()
	if g := c.gate.Load(); g != nil && g.PreparedRootID == st.PreparedRootID && st.PreparedRootID != "" {
		st.Blockers, st.GateCheckedAt = g.Blockers, g.CheckedAt
	}
	if !st.Scheduled {
		st.PrepareAt, st.Deadline, st.ForceAt = time.Time{}, time.Time{}, time.Time{}
	}
	return st
}

// checkGate asks the RootGate what still lacks prepared and records the answer.
func (c *CA) checkGate(ctx context.Context, prepared *Authority, now time.Time) []string {
	var blockers []string
	if c.cfg.RootGate != nil {
		blockers = c.cfg.RootGate(ctx, *prepared)
	}
	c.gate.Store(&GateStatus{PreparedRootID: prepared.ID, Blockers: blockers, CheckedAt: now})
	return blockers
}

// rotateRoot applies the root schedule: prepare the successor at its time,
// activate it when the gate passes (or, past ForceAt, without it).
func (ch *change) rotateRoot(ctx context.Context) error {
	if ch.c.cfg.Upstream != nil {
		return nil
	}
	rs := ch.c.rootSchedule
	active := ch.find(KindRoot, StateActive)
	prepared := ch.find(KindRoot, StatePrepared)
	if prepared == nil {
		if ch.find(KindRoot, StateOld) != nil || ch.now.Before(rs.PrepareAt(active)) {
			return nil
		}
		var err error
		if prepared, err = ch.prepareRoot(ctx); err != nil {
			return err
		}
	}
	blockers := ch.c.checkGate(ctx, prepared, ch.now)
	switch {
	case len(blockers) == 0:
		return ch.activateRoot(ctx, prepared)
	case !ch.now.Before(rs.ForceAt(active)):
		ch.c.cfg.Logger.ErrorContext(ctx, "the propagation gate did not pass before the active root's last moment: activating the next root WITHOUT it; "+
			"the consumers listed lack the new root and will not verify SVIDs it signs until they fetch the bundle",
			slog.String("root_id", prepared.ID), slog.Time("old_root_not_after", active.NotAfter),
			slog.Int("blockers", len(blockers)), slog.Any("blocking", firstN(blockers, 20)))
		ch.note(prepared, "activated_forced")
		return ch.activateRoot(ctx, prepared)
	}
	return nil
}

// retireRoot removes an old root once nothing chains to it any more (its
// last intermediate has expired, or was revoked).
func (ch *change) retireRoot() {
	if old := ch.find(KindRoot, StateOld); old != nil && len(ch.childrenOf(old)) == 0 && ch.c.cfg.Upstream == nil {
		ch.remove(old, "retired")
	}
}

func (ch *change) childrenOf(root *Authority) []*Authority {
	var out []*Authority
	for _, a := range ch.auths {
		if a.ParentID == root.ID {
			out = append(out, a)
		}
	}
	return out
}

// prepareRoot creates a new root and publishes it; it signs nothing yet.
func (ch *change) prepareRoot(ctx context.Context) (*Authority, error) {
	root, err := ch.newRoot(ctx)
	if err != nil {
		return nil, err
	}
	root.State = StatePrepared
	root.BundleSequence = ch.bumpBundle()
	ch.auths = append(ch.auths, root)
	ch.note(root, "prepared")
	return root, nil
}

// activateRoot makes next the active root and has it sign a new intermediate,
// active at once; the old root and intermediate become old.
func (ch *change) activateRoot(ctx context.Context, next *Authority) error {
	// A prepared intermediate chains to the old root: drop it.
	if p := ch.find(KindIntermediate, StatePrepared); p != nil {
		ch.remove(p, "dropped")
	}
	ch.activate(next)
	inter, err := ch.prepare(ctx, KindIntermediate)
	if err != nil {
		return err
	}
	ch.activate(inter)
	return nil
}

// PrepareRoot creates a new root now, ahead of the schedule, and adds it to
// the bundle; it signs nothing until the gate passes.
func (c *CA) PrepareRoot(ctx context.Context) (Authority, error) {
	if c.cfg.Upstream != nil {
		return Authority{}, &RefusedError{Op: "root prepare", Reason: "the root belongs to the upstream CA; rotate it there"}
	}
	return updateWith(ctx, c, func(ch *change) (Authority, error) {
		if p := ch.find(KindRoot, StatePrepared); p != nil {
			return Authority{}, &RefusedError{Op: "root prepare", Reason: fmt.Sprintf("root %s is already prepared", p.ID)}
		}
		if old := ch.find(KindRoot, StateOld); old != nil {
			return Authority{}, &RefusedError{Op: "root prepare", Reason: fmt.Sprintf("root %s is still being retired; run ca root retire first", old.ID)}
		}
		root, err := ch.prepareRoot(ctx)
		if err != nil {
			return Authority{}, err
		}
		return *root, nil
	})
}

// ActivateRoot makes the prepared root active now, if the gate passes. With
// force it activates anyway and returns what the gate listed, for the
// operator's record; without force, anything listed refuses the activation
// and is named.
func (c *CA) ActivateRoot(ctx context.Context, force bool) (Authority, []string, error) {
	var out Authority
	var behind []string
	err := c.update(ctx, func(ch *change) error {
		next := ch.find(KindRoot, StatePrepared)
		if next == nil {
			return &RefusedError{Op: "root activate", Reason: "no root is prepared; run ca root prepare first"}
		}
		behind = c.checkGate(ctx, next, ch.now)
		if len(behind) > 0 {
			if !force {
				return &RefusedError{Op: "root activate", Reason: gateReason(next.BundleSequence, behind),
					Blockers: behind, reasonNamesBlockers: true}
			}
			ch.note(next, "activated_forced")
		}
		if err := ch.activateRoot(ctx, next); err != nil {
			return err
		}
		out = *next
		return nil
	})
	if err != nil {
		return Authority{}, nil, err
	}
	return out, behind, nil
}

// RetireRoot removes the old root from the bundle now, if no intermediate
// that chains to it is left (the schedule does this on its own as soon as it
// may). inUse lists what still presents a certificate under the old root
// (the server's own TLS certificate); while it lists anything, RetireRoot refuses.
func (c *CA) RetireRoot(ctx context.Context, inUse func(root Authority) []string) (Authority, error) {
	return updateWith(ctx, c, func(ch *change) (Authority, error) {
		old := ch.find(KindRoot, StateOld)
		if old == nil {
			return Authority{}, &RefusedError{Op: "root retire", Reason: "no old root to retire"}
		}
		var blockers []string
		for _, a := range ch.childrenOf(old) {
			blockers = append(blockers, fmt.Sprintf("%s (replica %s, %s, expires %s)", a.ID, a.Replica, a.State, a.NotAfter.UTC().Format(time.RFC3339)))
		}
		if len(blockers) > 0 {
			return Authority{}, &RefusedError{Op: "root retire", Reason: "intermediates that chain to the old root are still valid", Blockers: blockers}
		}
		if inUse != nil {
			if users := inUse(*old); len(users) > 0 {
				return Authority{}, &RefusedError{Op: "root retire", Reason: "certificates under the old root are still presented", Blockers: users}
			}
		}
		ch.remove(old, "retired")
		return *old, nil
	})
}

// FirstBlockers is at most n of the blockers, and how many more there are:
// what a log line shows.
func (st RootRotationStatus) FirstBlockers(n int) []string { return firstN(st.Blockers, n) }

func firstN(s []string, n int) []string {
	if len(s) > n {
		return append(s[:n:n], fmt.Sprintf("and %d more", len(s)-n))
	}
	return s
}

// gateReason says what holds the next root back, by kind: live agents that
// lack its bundle (named, by SPIFFE ID), and anything else the gate listed
// (the wait for the bundle endpoint's consumers, which names its time).
func gateReason(seq uint64, blockers []string) string {
	var agents, others []string
	for _, b := range blockers {
		if strings.HasPrefix(b, "spiffe://") {
			agents = append(agents, b)
		} else {
			others = append(others, b)
		}
	}
	var parts []string
	if len(agents) > 0 {
		parts = append(parts, fmt.Sprintf("%d live agent(s) do not hold bundle %d with the new root yet: %s",
			len(agents), seq, strings.Join(firstN(agents, 5), ", ")))
	}
	for _, o := range others {
		parts = append(parts, "waiting for "+o)
	}
	return strings.Join(parts, "; ") + " (wait, or --force)"
}
