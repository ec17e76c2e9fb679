package agent

import (
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/shortleaf/shortleaf/pkg/workloadapi"
)

// A backlog is served most urgent first: entries without an SVID, then the
// SVIDs closest to expiry.
func TestDueOrdersByUrgency(t *testing.T) {
	now := time.Now()
	c := newCache(spiffeid.RequireTrustDomainFromString("example.org"))
	entries := map[string]*entry{}
	for _, id := range []string{"late", "new", "soon"} {
		entries[id] = &entry{ID: id, Revision: 1}
	}
	c.entries = entries
	c.svids["late"] = &svid{Revision: 1, RenewAt: now.Add(-time.Second), NotAfter: now.Add(time.Hour)}
	c.svids["soon"] = &svid{Revision: 1, RenewAt: now.Add(-time.Second), NotAfter: now.Add(time.Minute)}
	due, _ := c.due(now)
	var got []string
	for _, e := range due {
		got = append(got, e.ID)
	}
	if len(got) != 3 || got[0] != "new" || got[1] != "soon" || got[2] != "late" {
		t.Fatalf("due order = %v, want [new soon late]", got)
	}
}

// On demand, only entries a workload asked for are due; one asked for
// without an SVID wakes the manage loop; past the size, the least recently
// asked-for are let go with their SVIDs, but not within demandGrace of
// being asked for.
func TestOnDemandCacheWantsAndLetsGo(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := newCache(spiffeid.RequireTrustDomainFromString("example.org"))
	wake := make(chan struct{}, 1)
	c.onDemand(2, wake, func() time.Time { return now })
	entries := map[string]*entry{}
	for _, id := range []string{"a", "b", "c"} {
		entries[id] = &entry{ID: id, Revision: 1, Registration: workloadapi.Registration{EntryID: id,
			SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/" + id)}}
	}
	c.setEntries(entries)
	if due, _ := c.due(now); len(due) != 0 {
		t.Fatalf("%d entries due before any workload asked", len(due))
	}
	want := func(names ...string) {
		var ids []*workloadapi.Identity
		for _, n := range names {
			ids = append(ids, &workloadapi.Identity{Registration: &entries[n].Registration})
		}
		c.Want(ids)
	}
	want("a")
	select {
	case <-wake:
	default:
		t.Fatal("an entry asked for without an SVID did not wake the manage loop")
	}
	if due, _ := c.due(now); len(due) != 1 || due[0].ID != "a" {
		t.Fatalf("due = %v, want [a]", due)
	}
	held := func(id string) {
		c.svids[id] = &svid{Revision: 1, NotAfter: now.Add(time.Hour), RenewAt: now.Add(30 * time.Minute), Signer: &signer{}}
	}
	held("a")
	want("b")
	held("b")
	// Within the grace, c is kept past the size of 2.
	want("c")
	if len(c.wantedAt) != 3 {
		t.Fatalf("%d entries wanted, want 3 (a soft limit within the grace)", len(c.wantedAt))
	}
	// Later, a is the least recently asked-for and nobody asked for it
	// within the grace: it goes, with its SVID.
	now = now.Add(2 * demandGrace)
	want("b", "c")
	if _, ok := c.wantedAt["a"]; ok || c.svids["a"] != nil {
		t.Fatal("the least recently wanted entry and its SVID were kept past the size")
	}
	if len(c.wantedAt) != 2 {
		t.Fatalf("%d entries wanted, want 2", len(c.wantedAt))
	}
}

// Readiness counts the entries served without a valid SVID: none, one for
// an older revision of the entry, or one past its NotAfter.
func TestUnservedEntries(t *testing.T) {
	now := time.Now()
	c := newCache(spiffeid.RequireTrustDomainFromString("example.org"))
	for _, id := range []string{"fresh", "none", "stale", "expired"} {
		c.entries[id] = &entry{ID: id, Revision: 2, Registration: workloadapi.Registration{EntryID: id,
			SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/" + id)}}
	}
	c.svids["fresh"] = &svid{Revision: 2, NotAfter: now.Add(time.Minute)}
	c.svids["stale"] = &svid{Revision: 1, NotAfter: now.Add(time.Minute)}
	c.svids["expired"] = &svid{Revision: 2, NotAfter: now}
	missing, expired, first := c.unserved(now)
	if missing != 2 || expired != 1 || first != "spiffe://example.org/expired" {
		t.Fatalf("unserved = %d missing, %d expired, first %q", missing, expired, first)
	}
	delete(c.entries, "none")
	delete(c.entries, "stale")
	delete(c.entries, "expired")
	if m, e, _ := c.unserved(now); m+e != 0 {
		t.Fatalf("a served entry with a valid SVID counted as unserved (%d, %d)", m, e)
	}
}
