package ca

import (
	"log/slog"
	"slices"
)

// Replicas. Several servers may share one trust domain, one journal and one
// root. Each replica owns its intermediates and JWT keys: it alone creates,
// rotates and signs with them, and only it writes its record. Every SVID
// chain is leaf + the signing replica's intermediate, so the X.509 bundle
// (the roots) is the same whichever replica signed; the JWT bundle holds
// every replica's published keys. The roots, the bundle sequence, taints
// and revocations are in the shared cluster record: any replica may write
// it (an admin's root prepare, a taint), comparing revisions, and the
// scheduled cluster duties (root rotation and its gate, retiring roots,
// pruning) run on the elected leader alone, whose writes are fenced by its
// leadership.

// pruneReplicas removes the records of replicas gone for longer than their
// keys' lifetime: no lease, and every authority they own has expired. Their
// expired JWT keys leave the bundle with them.
func (ch *change) pruneReplicas() {
	me := ch.c.cfg.ReplicaID
	for id, rec := range ch.base.Replicas {
		if id == me || ch.base.Live[id] {
			continue
		}
		var owned []*Authority
		expired := true
		for _, a := range ch.auths {
			if a.Replica == id {
				owned = append(owned, a)
				expired = expired && !ch.now.Before(a.NotAfter)
			}
		}
		if !expired {
			continue
		}
		for _, a := range owned {
			ch.remove(a, "pruned")
		}
		ch.prune[id] = rec.Revision
		ch.force = true
		ch.c.cfg.Logger.Info("pruning the journal of a replica gone for longer than its keys' lifetime",
			slog.String("replica_id", id), slog.Int("authorities", len(owned)))
	}
	// Taints of authorities that have left the journal.
	kept := ch.tainted[:0]
	for _, id := range ch.tainted {
		if ch.byID(id) != nil {
			kept = append(kept, id)
		}
	}
	if len(kept) != len(ch.tainted) {
		ch.force = true
	}
	ch.tainted = slices.Clip(kept)
}
