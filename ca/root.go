package ca

import (
	"context"
	"fmt"
)

// Root rotation is gated on propagation: a new root is first published
// (PrepareRoot raises the bundle sequence), and may sign only once every live
// agent holds a bundle with it (ActivateRoot checks), so no workload ever
// meets an SVID it cannot verify. The old root leaves the bundle only when
// nothing valid chains to it (RetireRoot checks).

// PrepareRoot creates a new root and adds it to the bundle; it signs nothing yet.
func (c *CA) PrepareRoot(ctx context.Context) (Authority, error) {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if c.cfg.Upstream != nil {
		return Authority{}, &RefusedError{Op: "root prepare", Reason: "the root belongs to the upstream CA; rotate it there"}
	}
	ch := c.begin()
	if p := ch.find(KindRoot, StatePrepared); p != nil {
		return Authority{}, &RefusedError{Op: "root prepare", Reason: fmt.Sprintf("root %s is already prepared", p.ID)}
	}
	if old := ch.find(KindRoot, StateOld); old != nil {
		return Authority{}, &RefusedError{Op: "root prepare", Reason: fmt.Sprintf("root %s is still being retired; run ca root retire first", old.ID)}
	}
	root, err := c.newRoot(ctx, ch.now)
	if err != nil {
		return Authority{}, err
	}
	root.State = StatePrepared
	root.BundleSequence = ch.bumpBundle()
	ch.auths = append(ch.auths, root)
	ch.note(root, "prepared")
	return *root, ch.commit(ctx)
}

// ActivateRoot makes the prepared root sign a new intermediate, which becomes
// active at once; the old root and intermediate become old. lagging lists the
// live agents whose bundle is older than sequence; unless force is set, any
// lagging agent refuses the activation and is named.
func (c *CA) ActivateRoot(ctx context.Context, lagging func(sequence uint64) []string, force bool) (Authority, error) {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	ch := c.begin()
	next := ch.find(KindRoot, StatePrepared)
	if next == nil {
		return Authority{}, &RefusedError{Op: "root activate", Reason: "no root is prepared; run ca root prepare first"}
	}
	if behind := lagging(next.BundleSequence); len(behind) > 0 && !force {
		return Authority{}, &RefusedError{Op: "root activate",
			Reason:   fmt.Sprintf("live agents do not hold bundle %d with the new root yet (wait for them to sync, or --force)", next.BundleSequence),
			Blockers: behind}
	}
	// A prepared intermediate chains to the old root: drop it.
	if p := ch.find(KindIntermediate, StatePrepared); p != nil {
		ch.remove(p, "dropped")
	}
	ch.activate(next)
	inter, err := ch.prepare(ctx, KindIntermediate)
	if err != nil {
		return Authority{}, err
	}
	ch.activate(inter)
	return *next, ch.commit(ctx)
}

// RetireRoot removes the old root from the bundle once no intermediate that
// chains to it is left (old intermediates are removed when they expire, and
// with them the last SVIDs that chain to the old root).
func (c *CA) RetireRoot(ctx context.Context) (Authority, error) {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	ch := c.begin()
	old := ch.find(KindRoot, StateOld)
	if old == nil {
		return Authority{}, &RefusedError{Op: "root retire", Reason: "no old root to retire"}
	}
	var blockers []string
	for _, a := range ch.auths {
		if a.ParentID == old.ID {
			blockers = append(blockers, fmt.Sprintf("%s (%s, expires %s)", a.ID, a.State, a.NotAfter.UTC().Format("2006-01-02T15:04:05Z")))
		}
	}
	if len(blockers) > 0 {
		return Authority{}, &RefusedError{Op: "root retire", Reason: "intermediates that chain to the old root are still valid", Blockers: blockers}
	}
	ch.remove(old, "retired")
	return *old, ch.commit(ctx)
}
