package main

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shortleaf/shortleaf/pkg/harness"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// The Workload API verbs as a SPIRE user runs them, against a real agent.
func TestAPIVerbsAgainstARealAgent(t *testing.T) {
	srv := harness.StartServer(t)
	ag := harness.StartAgent(t, srv)
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/cli", ParentId: ag.ID(),
		Selectors: []string{fmt.Sprintf("unix:uid:%d", os.Getuid())}})
	sock := ag.SocketPath()
	harness.Eventually(t, 10*time.Second, func() bool {
		_, err := shortleaf(t, "api", "fetch", "x509", "--socket", sock)
		return err == nil
	})

	dir := t.TempDir()
	out, err := shortleaf(t, "api", "fetch", "x509", "--socket", sock, "--write", dir)
	if err != nil || !strings.Contains(out, "Received 1 svid") || !strings.Contains(out, "spiffe://example.org/cli") {
		t.Fatalf("api fetch x509: %q %v", out, err)
	}
	if _, err := tls.LoadX509KeyPair(filepath.Join(dir, "svid.0.pem"), filepath.Join(dir, "svid.0.key")); err != nil {
		t.Fatalf("svid.0.pem and svid.0.key are not a pair: %v", err)
	}
	if info, err := os.Stat(filepath.Join(dir, "svid.0.key")); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("svid.0.key: %v %v, want mode 0600", info.Mode(), err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "bundle.0.pem")); err != nil || !strings.Contains(string(b), "BEGIN CERTIFICATE") {
		t.Fatalf("bundle.0.pem: %v", err)
	}

	out, err = shortleaf(t, "api", "fetch", "x509", "--socket", "unix://"+sock, "-o", "json")
	var x struct {
		SVIDs []struct {
			SPIFFEID string `json:"spiffe_id"`
			NotAfter string `json:"not_after"`
		} `json:"svids"`
		Bundles map[string]any `json:"bundles"`
	}
	if err != nil || json.Unmarshal([]byte(out), &x) != nil || len(x.SVIDs) != 1 || x.SVIDs[0].SPIFFEID != "spiffe://example.org/cli" || x.Bundles["spiffe://example.org"] == nil {
		t.Fatalf("api fetch x509 -o json: %q %v", out, err)
	}
	if strings.Contains(out, "PRIVATE KEY") {
		t.Fatal("-o json printed the private key")
	}

	// Without --socket: $SPIFFE_ENDPOINT_SOCKET, as every SPIFFE tool reads it.
	t.Setenv("SPIFFE_ENDPOINT_SOCKET", "unix://"+sock)
	if out, err := shortleaf(t, "api", "fetch", "x509"); err != nil || !strings.Contains(out, "spiffe://example.org/cli") {
		t.Fatalf("api fetch x509 from $SPIFFE_ENDPOINT_SOCKET: %q %v", out, err)
	}
	out, err = shortleaf(t, "api", "fetch", "jwt", "--socket", sock, "--audience", "billing")
	if err != nil || !strings.Contains(out, "token(spiffe://example.org/cli)") || !strings.Contains(out, "bundle(spiffe://example.org)") {
		t.Fatalf("api fetch jwt: %q %v", out, err)
	}
	if _, err := shortleaf(t, "api", "fetch", "jwt", "--socket", sock); err == nil || !strings.Contains(err.Error(), "--audience") {
		t.Fatalf("jwt without an audience: %v", err)
	}

	out, err = shortleaf(t, "api", "fetch", "bundle", "--socket", sock, "--write", dir)
	if err != nil || !strings.Contains(out, "# spiffe://example.org") {
		t.Fatalf("api fetch bundle: %q %v", out, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "example.org.pem")); err != nil {
		t.Fatal(err)
	}

	// No agent at the socket: one line that says so.
	_, err = shortleaf(t, "api", "fetch", "x509", "--socket", filepath.Join(dir, "none.sock"))
	if err == nil || !strings.Contains(err.Error(), "the agent is not serving") {
		t.Fatalf("no agent: %v", err)
	}
}

func TestValidateVersionAndSuggestions(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("server.yaml", "trust_domain: example.org\ndata_dir: "+dir+"\n")
	out, err := shortleaf(t, "validate", "--config", good)
	if err != nil || !strings.Contains(out, "server config "+good+" is valid") {
		t.Fatalf("validate good server config: %q %v", out, err)
	}
	bad := write("bad.yaml", "trust_domain: example.org\ndata_dir: "+dir+"\nx509_svid_tll: 5m\n")
	if _, err := shortleaf(t, "validate", "--config", bad); err == nil || !strings.Contains(err.Error(), "did you mean x509_svid_ttl?") {
		t.Fatalf("validate bad server config: %v", err)
	}
	agent := write("agent.yaml", "server_address: 127.0.0.1:8081\ntrust_domain: example.org\ndata_dir: "+dir+"\ninsecure_bootstrap: true\nsync_interval: 11m\n")
	out, err = shortleaf(t, "validate", "--config", agent, "-o", "json")
	var res struct {
		Kind  string `json:"kind"`
		Valid bool   `json:"valid"`
		Error string `json:"error"`
	}
	if json.Unmarshal([]byte(out), &res) != nil || res.Kind != "agent" || res.Valid || !strings.Contains(res.Error, "sync_interval") || err == nil {
		t.Fatalf("validate bad agent config -o json: %q %v", out, err)
	}

	out, err = shortleaf(t, "version", "-o", "json")
	var v versionInfo
	if err != nil || json.Unmarshal([]byte(out), &v) != nil || !strings.HasPrefix(v.GoVersion, "go1.") {
		t.Fatalf("version: %q %v", out, err)
	}

	for args, want := range map[string]string{
		"entry lsit":        `unknown command "lsit" for "shortleaf entry"; did you mean list?`,
		"entyr":             `did you mean entry?`,
		"ca root actvate":   `did you mean activate?`,
		"api fetch x5":      `did you mean x509?`,
		"federation zzzzzz": `try one of:`,
	} {
		if _, err := shortleaf(t, strings.Fields(args)...); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("shortleaf %s: %v, want %q", args, err, want)
		}
	}
}

func TestLogFlags(t *testing.T) {
	var lf logFlags
	f, err := os.CreateTemp(t.TempDir(), "log")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for format, want := range map[string]string{"json": `"msg":"hello"`, "text": `msg=hello`, "auto": `"msg":"hello"`} {
		if err := f.Truncate(0); err != nil {
			t.Fatal(err)
		}
		_, _ = f.Seek(0, 0)
		lf.format, lf.level = format, "debug"
		log, err := lf.loggerTo(f, slog.LevelError)
		if err != nil {
			t.Fatal(err)
		}
		log.Debug("hello") // --log-level debug overrides the configured error level
		b, _ := os.ReadFile(f.Name())
		if !strings.Contains(string(b), want) {
			t.Errorf("--log-format %s: %q, want %q (a file is not a terminal: auto is json)", format, b, want)
		}
	}
	lf.format = "xml"
	if _, err := lf.loggerTo(f, slog.LevelInfo); err == nil || !strings.Contains(err.Error(), "--log-format") {
		t.Errorf("--log-format xml: %v", err)
	}
	lf.format, lf.level = "json", "loud"
	if _, err := lf.loggerTo(f, slog.LevelInfo); err == nil || !strings.Contains(err.Error(), "--log-level") {
		t.Errorf("--log-level loud: %v", err)
	}
}
