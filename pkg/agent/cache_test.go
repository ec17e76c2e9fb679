package agent

import (
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
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
