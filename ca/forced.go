package ca

import (
	"context"
	"fmt"
)

// Prepare creates the next key of kind now, ahead of the schedule. It refuses
// when one is already prepared.
func (c *CA) Prepare(ctx context.Context, kind Kind) (Authority, error) {
	return updateWith(ctx, c, func(ch *change) (Authority, error) {
		if p := ch.find(kind, StatePrepared); p != nil {
			return Authority{}, &RefusedError{Op: "prepare", Reason: fmt.Sprintf("%s %s is already prepared; activate it first", kind, p.ID)}
		}
		a, err := ch.prepare(ctx, kind)
		if err != nil {
			return Authority{}, err
		}
		return *a, nil
	})
}

// Activate makes the prepared key of kind active now; the active one becomes
// old and keeps validating what it signed until it expires.
func (c *CA) Activate(ctx context.Context, kind Kind) (Authority, error) {
	return updateWith(ctx, c, func(ch *change) (Authority, error) {
		p := ch.find(kind, StatePrepared)
		if p == nil {
			return Authority{}, &RefusedError{Op: "activate", Reason: fmt.Sprintf("no %s is prepared on this replica (%s); run prepare first", kind, c.cfg.ReplicaID)}
		}
		if !c.schedule.CanSignFullTTL(p, ch.now) {
			return Authority{}, &RefusedError{Op: "activate", Reason: fmt.Sprintf("%s %s is too close to its expiry to sign full-lifetime SVIDs", kind, p.ID)}
		}
		ch.activate(p)
		return *p, nil
	})
}

// Taint marks an old key as no longer trusted: agents replace everything it
// signed within one sync interval. Only an old key may be tainted; to taint
// the active one, prepare and activate a successor first. Any replica's key
// may be tainted through any replica: the taint is in the cluster record.
func (c *CA) Taint(ctx context.Context, id string) (Authority, error) {
	return updateWith(ctx, c, func(ch *change) (Authority, error) {
		a := ch.byID(id)
		switch {
		case a == nil:
			return Authority{}, fmt.Errorf("%w: %s", ErrNotFound, id)
		case a.Kind == KindRoot:
			return Authority{}, &RefusedError{Op: "taint", Reason: "roots are replaced by root rotation (ca root prepare/activate/retire), not tainted"}
		case a.Tainted:
			return Authority{}, &RefusedError{Op: "taint", Reason: fmt.Sprintf("%s is already tainted", id)}
		case a.State != StateOld:
			return Authority{}, &RefusedError{Op: "taint", Reason: fmt.Sprintf("%s is %s; only an old key can be tainted (prepare and activate a successor first)", id, a.State)}
		}
		a.Tainted = true
		ch.tainted = append(ch.tainted, a.ID)
		ch.note(a, "tainted")
		return *a, nil
	})
}

// Revoke removes a tainted key: it leaves the journal and, for JWT keys, the
// JWKS. inUse lists what still depends on the key (agents still holding SVIDs
// it signed); while it lists anything, Revoke refuses and names them. Any
// replica's key may be revoked through any replica: the revocation is in the
// cluster record, every replica leaves the key out at once, and its owner
// drops it from its record and destroys it when it next reads the journal.
func (c *CA) Revoke(ctx context.Context, id string, inUse func(keyID string) []string) (Authority, error) {
	return updateWith(ctx, c, func(ch *change) (Authority, error) {
		a := ch.byID(id)
		switch {
		case a == nil:
			return Authority{}, fmt.Errorf("%w: %s", ErrNotFound, id)
		case a.State == StateActive:
			return Authority{}, &RefusedError{Op: "revoke", Reason: fmt.Sprintf("%s is the active %s; activate a successor, then taint it", id, a.Kind)}
		case a.Kind == KindRoot:
			return Authority{}, &RefusedError{Op: "revoke", Reason: "roots leave the bundle with ca root retire"}
		case !a.Tainted:
			return Authority{}, &RefusedError{Op: "revoke", Reason: fmt.Sprintf("%s is not tainted; taint it first so agents replace what it signed", id)}
		}
		if users := inUse(a.KeyID()); len(users) > 0 {
			return Authority{}, &RefusedError{Op: "revoke", Reason: fmt.Sprintf("%s still signs certificates in use (SVIDs agents hold, the server's TLS certificate)", id), Blockers: users}
		}
		r := RevokedCertificate{AuthorityID: a.ID, RevokedAt: ch.now, NotAfter: a.NotAfter}
		if a.Cert != nil {
			r.IssuerID, r.Serial = a.ParentID, a.Cert.SerialNumber.Text(16)
		}
		ch.revoked = append(ch.revoked, r)
		ch.remove(a, "revoked")
		return *a, nil
	})
}
