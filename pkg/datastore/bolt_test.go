package datastore_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/pkg/datastore"
)

func open(t *testing.T) (*datastore.Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ds.db")
	s, err := datastore.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func entry(id, parent string) *datastore.Entry {
	return &datastore.Entry{SPIFFEID: id, ParentID: parent, Selectors: []attest.Selector{{Type: "unix", Value: "uid:1"}}}
}

func TestEntriesCRUDAndUniqueness(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	e, err := s.CreateEntry(ctx, entry("spiffe://td/a", "spiffe://td/agent/x"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateEntry(ctx, entry("spiffe://td/a", "spiffe://td/agent/x")); !errors.Is(err, datastore.ErrAlreadyExists) {
		t.Fatalf("duplicate: %v, want ErrAlreadyExists", err)
	}
	e.ParentID = "spiffe://td/agent/y"
	up, err := s.UpdateEntry(ctx, e)
	if err != nil || up.Revision != 2 {
		t.Fatalf("update: rev %d, %v", up.Revision, err)
	}
	// The parent index moved with the update.
	if got, _, _ := s.ListEntriesByParent(ctx, "spiffe://td/agent/x", "", 10); len(got) != 0 {
		t.Errorf("old parent still lists %d entries", len(got))
	}
	if got, _, _ := s.ListEntriesByParent(ctx, "spiffe://td/agent/y", "", 10); len(got) != 1 {
		t.Errorf("new parent lists %d entries", len(got))
	}
	// The freed identity can be registered again.
	if _, err := s.CreateEntry(ctx, entry("spiffe://td/a", "spiffe://td/agent/x")); err != nil {
		t.Fatalf("re-create after move: %v", err)
	}
	if err := s.DeleteEntry(ctx, e.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetEntry(ctx, e.ID); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("get deleted: %v", err)
	}
	if err := s.DeleteEntry(ctx, e.ID); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
}

func TestListEntriesByParentPagesExactly(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	const n = 1050
	for i := range n {
		if _, err := s.CreateEntry(ctx, entry(fmt.Sprintf("spiffe://td/w%d", i), "spiffe://td/agent/a")); err != nil {
			t.Fatal(err)
		}
		// Interleave another agent's entries: they must never leak in.
		if i%3 == 0 {
			if _, err := s.CreateEntry(ctx, entry(fmt.Sprintf("spiffe://td/b%d", i), "spiffe://td/agent/a2")); err != nil {
				t.Fatal(err)
			}
		}
	}
	seen := map[string]bool{}
	token := ""
	pages := 0
	for {
		page, next, err := s.ListEntriesByParent(ctx, "spiffe://td/agent/a", token, 100)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, e := range page {
			if e.ParentID != "spiffe://td/agent/a" || seen[e.ID] {
				t.Fatalf("page %d: entry %s of %s (seen %v)", pages, e.ID, e.ParentID, seen[e.ID])
			}
			seen[e.ID] = true
		}
		if next == "" {
			break
		}
		token = next
	}
	if len(seen) != n || pages != 11 {
		t.Fatalf("got %d entries in %d pages, want %d in 11", len(seen), pages, n)
	}
}

func TestJoinTokenAttestationIsAtomicAndSingleUse(t *testing.T) {
	s, path := open(t)
	ctx := context.Background()
	now := time.Now()
	hash := []byte("0123456789abcdef0123456789abcdef")
	if err := s.CreateJoinToken(ctx, &datastore.JoinToken{ID: "t1", SecretHash: hash, ExpiresAt: now.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	agent := &datastore.Agent{SPIFFEID: "spiffe://td/agent/join_token/t1"}
	if err := s.AttestJoinToken(ctx, "t1", []byte("wrong-hash-wrong-hash-wrong-hash"), now, agent); !errors.Is(err, datastore.ErrTokenInvalid) {
		t.Fatalf("wrong secret: %v", err)
	}
	if _, err := s.GetAgent(ctx, agent.SPIFFEID); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatal("a failed attestation created an agent")
	}
	if err := s.AttestJoinToken(ctx, "t1", hash, now, agent); err != nil {
		t.Fatalf("first use: %v", err)
	}
	if err := s.AttestJoinToken(ctx, "t1", hash, now, agent); !errors.Is(err, datastore.ErrTokenInvalid) {
		t.Fatalf("second use: %v", err)
	}

	// Expired: refused, and deleted all the same (it survives no reopen).
	if err := s.CreateJoinToken(ctx, &datastore.JoinToken{ID: "t2", SecretHash: hash, ExpiresAt: now.Add(-time.Second)}); err != nil {
		t.Fatal(err)
	}
	a2 := &datastore.Agent{SPIFFEID: "spiffe://td/agent/join_token/t2"}
	if err := s.AttestJoinToken(ctx, "t2", hash, now, a2); !errors.Is(err, datastore.ErrTokenExpired) {
		t.Fatalf("expired: %v", err)
	}
	s.Close()
	s2, err := datastore.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if err := s2.AttestJoinToken(ctx, "t2", hash, now.Add(-time.Hour), a2); !errors.Is(err, datastore.ErrTokenInvalid) {
		t.Fatalf("expired token after reopen: %v, want it gone", err)
	}
	if _, err := s2.GetAgent(ctx, agent.SPIFFEID); err != nil {
		t.Fatalf("attested agent after reopen: %v", err)
	}
}

func TestEvictedAgentIsNotRecreatedByUpdate(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	hash := []byte("h")
	_ = s.CreateJoinToken(ctx, &datastore.JoinToken{ID: "t", SecretHash: hash, ExpiresAt: time.Now().Add(time.Minute)})
	a := &datastore.Agent{SPIFFEID: "spiffe://td/agent/join_token/t"}
	if err := s.AttestJoinToken(ctx, "t", hash, time.Now(), a); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteAgent(ctx, a.SPIFFEID); err != nil {
		t.Fatal(err)
	}
	if err := s.UpdateAgent(ctx, a); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("update after eviction: %v, want ErrNotFound", err)
	}
}

func TestCAJournalRoundTrip(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	if got, err := s.LoadCAJournal(ctx); err != nil || got != nil {
		t.Fatalf("empty store: %q, %v", got, err)
	}
	if err := s.SaveCAJournal(ctx, []byte(`{"v":1}`)); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveCAJournal(ctx, nil); err == nil {
		t.Fatal("saved an empty journal")
	}
	got, err := s.LoadCAJournal(ctx)
	if err != nil || string(got) != `{"v":1}` {
		t.Fatalf("journal = %q, %v", got, err)
	}
}

func TestPurgeExpiredJoinTokens(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	hash := []byte("h")
	for id, exp := range map[string]time.Time{"old": now.Add(-time.Hour), "edge": now, "live": now.Add(time.Minute)} {
		if err := s.CreateJoinToken(ctx, &datastore.JoinToken{ID: id, SecretHash: hash, ExpiresAt: exp}); err != nil {
			t.Fatal(err)
		}
	}
	n, err := s.PurgeExpiredJoinTokens(ctx, now)
	if err != nil || n != 2 {
		t.Fatalf("purged %d, %v; want 2 (expired and expiring now)", n, err)
	}
	err = s.AttestJoinToken(ctx, "live", hash, now, &datastore.Agent{SPIFFEID: "spiffe://example.org/agent/join_token/live"})
	if err != nil {
		t.Fatalf("the live token was lost: %v", err)
	}
	if n, err := s.PurgeExpiredJoinTokens(ctx, now); err != nil || n != 0 {
		t.Fatalf("second purge: %d, %v", n, err)
	}
}

// A poll in flight never undoes an update: the refresh outcome of a fetch
// made with the settings read before the update is refused whole (status
// and bundle), and the update stands.
func TestFederationRefreshDoesNotUndoAnUpdate(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	f := &datastore.Federation{TrustDomain: "other.org", URL: "https://a", Profile: "https_web", WebRootsPEM: []byte("old roots")}
	if err := s.PutFederation(ctx, f, true); err != nil {
		t.Fatal(err)
	}
	read, err := s.GetFederation(ctx, "other.org") // the poller reads, then fetches...
	if err != nil {
		t.Fatal(err)
	}
	updated := *read
	updated.WebRootsPEM = nil // ...while an admin removes the Web roots
	if err := s.PutFederation(ctx, &updated, false); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if err := s.RecordFederationRefresh(ctx, read, []byte(`{"keys":[]}`), now, ""); !errors.Is(err, datastore.ErrChanged) {
		t.Fatalf("recording a fetch made with the old settings: %v, want ErrChanged", err)
	}
	got, _ := s.GetFederation(ctx, "other.org")
	if got.WebRootsPEM != nil || !got.LastRefresh.IsZero() {
		t.Fatalf("the update was undone or the stale outcome recorded: %+v", got)
	}
	if _, err := s.GetFederatedBundle(ctx, "other.org"); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("a bundle fetched under the old settings was stored: %v", err)
	}
	// With the current settings the outcome is recorded.
	if err := s.RecordFederationRefresh(ctx, got, []byte(`{"keys":[]}`), now, ""); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetFederation(ctx, "other.org"); !got.LastRefresh.Equal(now) {
		t.Fatalf("LastRefresh = %v, want %v", got.LastRefresh, now)
	}
}
