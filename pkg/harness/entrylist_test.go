package harness_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/shortleaf/shortleaf/pkg/harness"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// Listing entries by parent reads that parent's entries only: pages are
// full however many other entries there are, and hold no one else's.
func TestEntryListByParentPagesThroughThatParentOnly(t *testing.T) {
	srv := harness.StartServer(t)
	const busy, quiet = "spiffe://example.org/agent/join_token/busy", "spiffe://example.org/agent/join_token/quiet"
	for i := range 60 {
		srv.CreateEntry(t, &adminv1.Entry{SpiffeId: fmt.Sprintf("spiffe://example.org/busy/%d", i), ParentId: busy, Selectors: []string{uidSelector()}})
	}
	for i := range 3 {
		srv.CreateEntry(t, &adminv1.Entry{SpiffeId: fmt.Sprintf("spiffe://example.org/quiet/%d", i), ParentId: quiet, Selectors: []string{uidSelector()}})
	}
	ctx := context.Background()
	var pages []int
	token := ""
	for {
		resp, err := srv.Admin.ListEntries(ctx, &adminv1.ListEntriesRequest{ParentId: quiet, PageSize: 2, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range resp.GetEntries() {
			if e.GetParentId() != quiet {
				t.Fatalf("listing by parent %s returned an entry of %s", quiet, e.GetParentId())
			}
		}
		pages = append(pages, len(resp.GetEntries()))
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	if fmt.Sprint(pages) != "[2 1]" {
		t.Fatalf("pages of 2 of the quiet parent's 3 entries held %v entries, want [2 1]", pages)
	}
}
