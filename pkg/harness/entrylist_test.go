package harness_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shortleaf/shortleaf/pkg/api"
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

// The batch entry calls answer each item on its own, name a refused item by
// its place in the call, refuse a call over the limit as a whole, and reach
// agents as single writes do: a running agent serves a batch-created entry
// and drops a batch-deleted one.
func TestBatchEntryCallsAnswerEachItemAndReachAgents(t *testing.T) {
	srv := harness.StartServer(t)
	ag := harness.StartAgent(t, srv)
	ctx := context.Background()
	created, err := srv.Admin.BatchCreateEntry(ctx, &adminv1.BatchCreateEntryRequest{Entries: []*adminv1.Entry{
		{SpiffeId: "spiffe://example.org/batch/web", ParentId: ag.ID(), Selectors: []string{uidSelector()}},
		{SpiffeId: "spiffe://other.org/batch/x", ParentId: ag.ID(), Selectors: []string{uidSelector()}},
		{SpiffeId: "spiffe://example.org/batch/db", ParentId: ag.ID(), Selectors: []string{"unix:uid:4000000001"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	r := created.GetResults()
	if len(r) != 3 || r[0].GetStatusCode() != 0 || r[2].GetStatusCode() != 0 ||
		codes.Code(r[1].GetStatusCode()) != codes.InvalidArgument || !strings.HasPrefix(r[1].GetStatusMessage(), "entries[1].spiffe_id:") {
		t.Fatalf("batch create results: %v", r)
	}
	x, err := fetchX509(t, ag.Addr(), 10*time.Second)
	if err != nil || x.DefaultSVID().ID.String() != "spiffe://example.org/batch/web" {
		t.Fatalf("the agent does not serve the batch-created entry: %v", err)
	}

	web, db := r[0].GetEntry(), r[2].GetEntry()
	web.Hint, db.SpiffeId = "front", "spiffe://example.org/batch/web" // db would become a copy of web: refused
	db.Selectors = web.GetSelectors()
	updated, err := srv.Admin.BatchUpdateEntry(ctx, &adminv1.BatchUpdateEntryRequest{Entries: []*adminv1.Entry{web, db, {SpiffeId: "spiffe://example.org/x"}}})
	if err != nil {
		t.Fatal(err)
	}
	u := updated.GetResults()
	if u[0].GetEntry().GetHint() != "front" || u[0].GetEntry().GetRevision() != 2 || codes.Code(u[1].GetStatusCode()) != codes.AlreadyExists ||
		!strings.HasPrefix(u[2].GetStatusMessage(), "entries[2].id: is required") {
		t.Fatalf("batch update results: %v", u)
	}

	deleted, err := srv.Admin.BatchDeleteEntry(ctx, &adminv1.BatchDeleteEntryRequest{Ids: []string{web.GetId(), "no-such-entry"}})
	if err != nil {
		t.Fatal(err)
	}
	d := deleted.GetResults()
	if d[0].GetEntry().GetId() != web.GetId() || codes.Code(d[1].GetStatusCode()) != codes.NotFound {
		t.Fatalf("batch delete results: %v", d)
	}
	harness.Eventually(t, 10*time.Second, func() bool {
		_, err := fetchX509(t, ag.Addr(), 300*time.Millisecond)
		return err != nil // no identity left for this workload
	})

	over := &adminv1.BatchDeleteEntryRequest{Ids: make([]string, api.MaxEntryBatch+1)}
	if _, err := srv.Admin.BatchDeleteEntry(ctx, over); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "ids: has 1001 items") {
		t.Fatalf("a call over the limit: %v", err)
	}
}
