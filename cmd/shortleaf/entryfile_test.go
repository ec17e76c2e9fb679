package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shortleaf/shortleaf/pkg/harness"
)

// A file of 2,500 entries goes in three batch calls; the one with a bad
// selector and the duplicate are named by their place in the file, the
// others are registered, and the command fails saying how many were refused.
// The listing of that server, as `entry list -o json` prints it, registers
// the same entries on a second server.
func TestEntryCreateFromFile(t *testing.T) {
	srv := harness.StartServer(t)
	sock := srv.AdminSocket()
	parent := "spiffe://example.org/agent/join_token/0123456789abcdef"
	var b strings.Builder
	for i := range 2500 {
		selector := fmt.Sprintf("unix:uid:%d", 1000+i)
		switch i {
		case 1200:
			selector = "unix:uid" // bad: no value
		case 2400:
			i = 7 // the same entry as entry 7
			selector = "unix:uid:1007"
		}
		fmt.Fprintf(&b, "- spiffe_id: spiffe://example.org/bulk/%d\n  parent_id: %s\n  selectors: [%s]\n  x509_svid_ttl: 10m\n", i, parent, selector)
	}
	path := filepath.Join(t.TempDir(), "entries.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := shortleaf(t, "entry", "create", "--admin-socket", sock, "--file", path)
	if err == nil || !strings.Contains(err.Error(), "2 of 2500 entries refused") {
		t.Fatalf("entry create --file: %v, want 2 of 2500 refused", err)
	}
	for _, want := range []string{"entry 1200 (spiffe://example.org/bulk/1200): entries[200].selectors", "entry 2400 (spiffe://example.org/bulk/7):", "already exists", "created 2498 of 2500 entries"} {
		if !strings.Contains(out, want) {
			t.Fatalf("output lacks %q:\n%s", want, lastLines(out, 5))
		}
	}

	listing, err := shortleaf(t, "entry", "list", "--admin-socket", sock, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var listed []map[string]any
	if err := json.Unmarshal([]byte(listing), &listed); err != nil || len(listed) != 2498 || listed[0]["x509_svid_ttl"] != "10m0s" {
		t.Fatalf("listing: %d entries, %v", len(listed), err)
	}
	again := filepath.Join(t.TempDir(), "listing.json")
	if err := os.WriteFile(again, []byte(listing), 0o600); err != nil {
		t.Fatal(err)
	}
	other := harness.StartServer(t)
	out, err = shortleaf(t, "entry", "create", "--admin-socket", other.AdminSocket(), "--file", again, "-o", "json")
	if err != nil {
		t.Fatalf("a listing registered again: %v\n%s", err, lastLines(out, 5))
	}
	var results []struct {
		Index int            `json:"index"`
		Entry map[string]any `json:"entry"`
		Error string         `json:"error"`
	}
	if err := json.Unmarshal([]byte(out), &results); err != nil || len(results) != 2498 || results[0].Entry["x509_svid_ttl"] != "10m0s" || results[0].Error != "" {
		t.Fatalf("-o json results: %d, %v", len(results), err)
	}

	// A field the file format does not have is an error naming it and its
	// line; nothing is sent.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	_ = os.WriteFile(bad, []byte("- spiffe_id: spiffe://example.org/x\n  parent_id: "+parent+"\n  selector: [unix:uid:1]\n"), 0o600)
	if _, err := shortleaf(t, "entry", "create", "--admin-socket", sock, "--file", bad); err == nil || !strings.Contains(err.Error(), "line 3") || !strings.Contains(err.Error(), "selector") {
		t.Fatalf("unknown field: %v", err)
	}
	if _, err := shortleaf(t, "entry", "create", "--admin-socket", sock, "--file", bad, "--hint", "x"); err == nil || !strings.Contains(err.Error(), "--file and --hint") {
		t.Fatalf("--file with entry flags: %v", err)
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
