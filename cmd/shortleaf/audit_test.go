package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shortleaf/shortleaf/pkg/config"
	"github.com/shortleaf/shortleaf/pkg/harness"
)

// audit verify and query on the log of a real server: whole after a clean
// stop (checkpoints chaining to the bundle given), then a record altered by
// hand is named; query finds a minted certificate by serial, as JSON.
func TestAuditVerbs(t *testing.T) {
	srv := harness.StartServer(t)
	sock := srv.AdminSocket()
	bundle := filepath.Join(t.TempDir(), "bundle.pem")
	out, err := shortleaf(t, "bundle", "show", "--admin-socket", sock)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bundle, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	certOut, keyOut := filepath.Join(t.TempDir(), "svid.pem"), filepath.Join(t.TempDir(), "key.pem")
	if _, err := shortleaf(t, "x509", "mint", "--admin-socket", sock, "--spiffe-id", "spiffe://example.org/tool", "--cert-out", certOut, "--key-out", keyOut); err != nil {
		t.Fatalf("x509 mint: %v", err)
	}
	chain, err := config.ReadPEMCertificates(certOut)
	if err != nil {
		t.Fatal(err)
	}
	// As an operator copies it from openssl: upper case, colons.
	serial := strings.ToUpper(fmt.Sprintf("%x", chain[0].SerialNumber))
	var colons []string
	for len(serial) > 2 {
		colons, serial = append(colons, serial[:2]), serial[2:]
	}
	serial = strings.Join(append(colons, serial), ":")
	srv.Stop()
	dir := srv.Config.AuditDir()

	out, err = shortleaf(t, "audit", "verify", "--dir", dir, "--bundle", bundle)
	if err != nil || !strings.Contains(out, "the audit log is whole") || strings.Contains(out, "not checked against a trust bundle") {
		t.Fatalf("audit verify of an untouched log: %v\n%s", err, out)
	}
	out, err = shortleaf(t, "audit", "query", "--dir", dir, "--action", "x509svid.issue", "-o", "json")
	var recs []struct {
		Actor, SPIFFEID, Serial string
	}
	if err != nil || json.Unmarshal([]byte(out), &recs) != nil || len(recs) != 1 || !strings.HasPrefix(recs[0].Actor, "admin uid=") {
		t.Fatalf("audit query: %v\n%s", err, out)
	}
	out, err = shortleaf(t, "audit", "query", "--dir", dir, "--serial", serial)
	if err != nil || !strings.Contains(out, "spiffe://example.org/tool") {
		t.Fatalf("audit query --serial %s: %v\n%s", serial, err, out)
	}
	if _, err := shortleaf(t, "audit", "query", "--dir", dir, "--since", "yesterday"); err == nil || !strings.Contains(err.Error(), "--since") {
		t.Fatalf("a bad --since: %v", err)
	}

	files, _ := filepath.Glob(filepath.Join(dir, "audit-*.jsonl"))
	raw, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(files[0], bytes.Replace(raw, []byte("spiffe://example.org/tool"), []byte("spiffe://example.org/tooo"), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = shortleaf(t, "audit", "verify", "--dir", dir)
	if err == nil || !strings.Contains(out, "PROBLEM:") || !strings.Contains(out, "altered") {
		t.Fatalf("audit verify of an altered log: %v\n%s", err, out)
	}
}
