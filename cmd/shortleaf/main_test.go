package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/shortleaf/shortleaf/pkg/datastore"
	"github.com/shortleaf/shortleaf/pkg/etcdtest"
	"github.com/shortleaf/shortleaf/pkg/harness"
	"github.com/shortleaf/shortleaf/pkg/server"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// shortleaf runs the CLI in process and returns stdout and the error.
func shortleaf(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCommand()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestAdminVerbsAgainstARealServer(t *testing.T) {
	srv := harness.StartServer(t)
	sock := srv.AdminSocket()
	ag := harness.StartAgent(t, srv)

	out, err := shortleaf(t, "healthcheck", "--admin-socket", sock)
	if err != nil || !strings.Contains(out, "healthy") {
		t.Fatalf("healthcheck: %q %v", out, err)
	}

	out, err = shortleaf(t, "entry", "create", "--admin-socket", sock, "-o", "json",
		"--spiffe-id", "spiffe://example.org/web", "--parent-id", ag.ID(), "--selector", "unix:uid:1000", "--dns", "web.internal")
	if err != nil {
		t.Fatalf("entry create: %v", err)
	}
	var created struct {
		ID       string   `json:"id"`
		DNSNames []string `json:"dns_names"`
	}
	if err := json.Unmarshal([]byte(out), &created); err != nil || created.ID == "" || created.DNSNames[0] != "web.internal" {
		t.Fatalf("entry create -o json: %q %v", out, err)
	}

	out, err = shortleaf(t, "entry", "update", created.ID, "--admin-socket", sock, "--hint", "internal")
	if err != nil || !strings.Contains(out, "internal") || !strings.Contains(out, "web.internal") {
		t.Fatalf("entry update keeps other fields: %q %v", out, err)
	}

	out, err = shortleaf(t, "entry", "list", "--admin-socket", sock, "-o", "json")
	var list []map[string]any
	if err != nil || json.Unmarshal([]byte(out), &list) != nil || len(list) != 1 {
		t.Fatalf("entry list -o json: %q %v", out, err)
	}

	// A bad request is one clear line naming the field, and a failure exit.
	_, err = shortleaf(t, "entry", "create", "--admin-socket", sock,
		"--spiffe-id", "spiffe://example.org/web/", "--parent-id", ag.ID(), "--selector", "unix:uid:1000")
	if err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "entry.spiffe_id") {
		t.Fatalf("bad entry: %v", err)
	}

	out, err = shortleaf(t, "token", "create", "--admin-socket", sock, "-o", "json")
	if err != nil || !strings.Contains(out, `"agent_id": "spiffe://example.org/agent/join_token/`) {
		t.Fatalf("token create: %q %v", out, err)
	}

	out, err = shortleaf(t, "agent", "list", "--admin-socket", sock)
	if err != nil || !strings.Contains(out, ag.ID()) {
		t.Fatalf("agent list: %q %v", out, err)
	}

	out, err = shortleaf(t, "bundle", "show", "--admin-socket", sock)
	if block, _ := pem.Decode([]byte(out)); err != nil || block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("bundle show: %q %v", out, err)
	}
	out, err = shortleaf(t, "bundle", "show", "--admin-socket", sock, "--format", "spiffe")
	if err != nil {
		t.Fatal(err)
	}
	b, err := spiffebundle.Parse(harness.TrustDomain, []byte(out))
	if err != nil || len(b.X509Authorities()) != 1 {
		t.Fatalf("bundle show --format spiffe does not parse as a SPIFFE bundle: %v", err)
	}

	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "svid.pem"), filepath.Join(dir, "svid.key")
	if _, err := shortleaf(t, "x509", "mint", "--admin-socket", sock, "--spiffe-id", "spiffe://example.org/tool",
		"--cert-out", certFile, "--key-out", keyFile); err != nil {
		t.Fatal(err)
	}
	if info, err := os.Stat(keyFile); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("minted key file: %v %v", info, err)
	}

	// A running agent that is evicted stops itself at its next sync with a
	// permanent error (tested in pkg/harness); here only the verb is under
	// test, so the agent is stopped first.
	ag.Stop()
	if out, err := shortleaf(t, "agent", "ban", ag.ID(), "--admin-socket", sock); err != nil || !strings.Contains(out, "banned "+ag.ID()) {
		t.Fatalf("agent ban: %q %v", out, err)
	}
	if out, err := shortleaf(t, "agent", "list", "--admin-socket", sock); err != nil || !strings.Contains(out, "banned") {
		t.Fatalf("agent list after a ban: %q %v", out, err)
	}
	if out, err := shortleaf(t, "agent", "unban", ag.ID(), "--admin-socket", sock); err != nil || !strings.Contains(out, "unbanned "+ag.ID()) {
		t.Fatalf("agent unban: %q %v", out, err)
	}
	if _, err := shortleaf(t, "agent", "evict", ag.ID(), "--admin-socket", sock); err != nil {
		t.Fatal(err)
	}
	// Errors name the object.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"agent", "show", ag.ID()}, `not found: agent "` + ag.ID() + `" not found`},
		{[]string{"agent", "evict", ag.ID()}, `agent "` + ag.ID() + `" not found`},
		{[]string{"agent", "ban", ag.ID()}, `agent "` + ag.ID() + `" not found`},
		{[]string{"agent", "unban", "spiffe://example.org/web"}, `spiffe_id: "spiffe://example.org/web" is not an agent ID`},
		{[]string{"entry", "show", "nosuchentry"}, `entry "nosuchentry" not found`},
		{[]string{"entry", "delete", "nosuchentry"}, `entry "nosuchentry" not found`},
		{[]string{"federation", "show", "other.org"}, `federation "other.org" not found`},
		{[]string{"federation", "delete", "other.org"}, `federation "other.org" not found`},
		{[]string{"entry", "create", "--spiffe-id", "spiffe://example.org/web", "--parent-id", ag.ID(), "--selector", "unix:uid:1000", "--dns", "web.internal"},
			`already exists: entry "` + created.ID + `"`},
	} {
		_, err := shortleaf(t, append(tc.args, "--admin-socket", sock)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
}

func TestAdminSocketRequired(t *testing.T) {
	t.Setenv(adminSocketEnv, "")
	_, err := shortleaf(t, "entry", "list")
	if err == nil || !strings.Contains(err.Error(), "admin socket") {
		t.Fatalf("no socket: %v", err)
	}
}

func TestCAVerbs(t *testing.T) {
	srv := harness.StartServer(t)
	sock := srv.AdminSocket()
	out, err := shortleaf(t, "ca", "show", "--admin-socket", sock)
	if err != nil || !strings.Contains(out, "root") || !strings.Contains(out, "intermediate") || !strings.Contains(out, "jwt") ||
		!strings.Contains(out, "successor preparation") || !strings.Contains(out, "bundle sequence") ||
		!strings.Contains(out, "replica local: 2 intermediates and JWT keys (this server, leader)") {
		t.Fatalf("ca show:\n%s\n%v", out, err)
	}
	if strings.Contains(out, "PRIVATE") {
		t.Fatal("ca show printed key material")
	}
	if _, err := shortleaf(t, "ca", "activate", "--admin-socket", sock); err == nil || !strings.Contains(err.Error(), "failed precondition") {
		t.Fatalf("activate without prepare: %v", err)
	}
	for _, kind := range []string{"intermediate", "jwt"} {
		if out, err := shortleaf(t, "ca", "prepare", "--kind", kind, "--admin-socket", sock); err != nil || !strings.Contains(out, "prepared") {
			t.Fatalf("prepare %s: %q %v", kind, out, err)
		}
		if out, err := shortleaf(t, "ca", "activate", "--kind", kind, "--admin-socket", sock); err != nil || !strings.Contains(out, "active") {
			t.Fatalf("activate %s: %q %v", kind, out, err)
		}
	}
	out, err = shortleaf(t, "ca", "show", "--admin-socket", sock, "-o", "json")
	if err != nil || strings.Count(out, `"state": "old"`) != 2 {
		t.Fatalf("ca show -o json after rotations: %q %v", out, err)
	}
	if out, err := shortleaf(t, "ca", "root", "prepare", "--admin-socket", sock); err != nil || !strings.Contains(out, "prepared") {
		t.Fatalf("root prepare: %q %v", out, err)
	}
	if out, err := shortleaf(t, "ca", "root", "activate", "--admin-socket", sock); err != nil || !strings.Contains(out, "active") {
		t.Fatalf("root activate (no agents, nothing to wait for): %q %v", out, err)
	}
	if _, err := shortleaf(t, "ca", "root", "retire", "--admin-socket", sock); err == nil || !strings.Contains(err.Error(), "still valid") {
		t.Fatalf("root retire with live old intermediates: %v", err)
	}
	if _, err := shortleaf(t, "ca", "prepare", "--kind", "root", "--admin-socket", sock); err == nil || !strings.Contains(err.Error(), "kind") {
		t.Fatalf("prepare --kind root: %v", err)
	}

	// Taint then revoke the old intermediate: revoke prints what remains.
	out, err = shortleaf(t, "ca", "show", "--admin-socket", sock, "-o", "json")
	var state struct {
		Authorities []struct {
			Kind, ID, State string
			NotAfter        string `json:"not_after"`
		} `json:"authorities"`
	}
	if err != nil || json.Unmarshal([]byte(out), &state) != nil {
		t.Fatalf("ca show -o json: %q %v", out, err)
	}
	var old string
	for _, a := range state.Authorities {
		if _, perr := time.Parse(time.RFC3339, a.NotAfter); perr != nil {
			t.Fatalf("not_after %q is not RFC 3339", a.NotAfter)
		}
		if a.Kind == "intermediate" && a.State == "old" {
			old = a.ID
		}
	}
	if _, err := shortleaf(t, "ca", "taint", old, "--admin-socket", sock); err != nil {
		t.Fatal(err)
	}
	out, err = shortleaf(t, "ca", "revoke", old, "--admin-socket", sock)
	if err != nil || !strings.Contains(out, "intermediate "+old+" revoked") || !strings.Contains(out, "now:") ||
		!strings.Contains(out, "bundle sequence") || strings.Count(out, old) != 1 {
		t.Fatalf("ca revoke does not print the new state:\n%s\n%v", out, err)
	}
}

func TestJWTAndBundleFormats(t *testing.T) {
	srv := harness.StartServer(t)
	sock := srv.AdminSocket()
	out, err := shortleaf(t, "jwt", "mint", "--admin-socket", sock, "--spiffe-id", "spiffe://example.org/tool", "--audience", "db")
	if err != nil || strings.Count(strings.TrimSpace(out), ".") != 2 {
		t.Fatalf("jwt mint: %q %v", out, err)
	}
	out, err = shortleaf(t, "bundle", "show", "--admin-socket", sock, "--format", "spiffe")
	if err != nil || !strings.Contains(out, `"use":"jwt-svid"`) || !strings.Contains(out, `"use":"x509-svid"`) {
		t.Fatalf("spiffe bundle lacks a key kind:\n%s", out)
	}
	if strings.Contains(out, "spiffe_refresh_hint") {
		t.Fatalf("a server without a bundle endpoint printed a refresh hint:\n%s", out)
	}
	if _, err := shortleaf(t, "bundle", "show", "--admin-socket", sock, "--format", "pem", "-o", "json"); err == nil || !strings.Contains(err.Error(), "--format spiffe") {
		t.Fatalf("bundle show --format pem -o json: %v", err)
	}
	out, err = shortleaf(t, "healthcheck", "--admin-socket", sock, "-o", "json")
	if err != nil || !strings.Contains(out, `"result": "healthy"`) {
		t.Fatalf("healthcheck -o json: %q %v", out, err)
	}
	out, err = shortleaf(t, "token", "create", "--admin-socket", sock, "-o", "json")
	var token struct {
		ExpiresAt string `json:"expires_at"`
	}
	if err != nil || json.Unmarshal([]byte(out), &token) != nil {
		t.Fatalf("token create -o json: %q %v", out, err)
	}
	if _, err := time.Parse(time.RFC3339, token.ExpiresAt); err != nil {
		t.Fatalf("expires_at %q is not RFC 3339", token.ExpiresAt)
	}
	out, err = shortleaf(t, "bundle", "show", "--admin-socket", sock, "--format", "jwks")
	if err != nil || !strings.Contains(out, `"kid"`) || strings.Contains(out, "x5c") {
		t.Fatalf("jwks:\n%s", out)
	}
	// One CRL from the root and one from the active intermediate.
	out, err = shortleaf(t, "bundle", "show", "--admin-socket", sock, "--format", "crl")
	if err != nil || strings.Count(out, "BEGIN X509 CRL") != 2 {
		t.Fatalf("crl:\n%s", out)
	}
	for rest := []byte(out); ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		if _, err := x509.ParseRevocationList(block.Bytes); err != nil {
			t.Fatalf("bundle show --format crl: %v", err)
		}
	}
}

func TestFederationAndBundleVerbs(t *testing.T) {
	srv := harness.StartServer(t)
	sock := srv.AdminSocket()
	other := harness.StartServer(t, func(c *server.Config) {
		c.TrustDomain = spiffeid.RequireTrustDomainFromString("other.org")
		c.BundleEndpoint = &server.BundleEndpointConfig{Addr: "127.0.0.1:0"}
	})
	bundleFile := filepath.Join(t.TempDir(), "other.pem")
	out, err := shortleaf(t, "bundle", "show", "--admin-socket", other.AdminSocket())
	if err != nil {
		t.Fatal(err)
	}
	_ = os.WriteFile(bundleFile, []byte(out), 0o600)
	if _, err := shortleaf(t, "federation", "create", "other.org", "--admin-socket", sock,
		"--bundle-endpoint-url", "https://"+other.BundleEndpointAddr(), "--endpoint-spiffe-id", "spiffe://other.org/shortleaf/server",
		"--bootstrap-bundle", bundleFile); err != nil {
		t.Fatal(err)
	}
	out, err = shortleaf(t, "federation", "refresh", "other.org", "--admin-socket", sock)
	if err != nil || !strings.Contains(out, "other.org") {
		t.Fatalf("federation refresh: %q %v", out, err)
	}
	out, err = shortleaf(t, "bundle", "list", "--admin-socket", sock)
	if err != nil || !strings.Contains(out, "example.org") || !strings.Contains(out, "other.org") {
		t.Fatalf("bundle list: %q %v", out, err)
	}
	if out, err := shortleaf(t, "entry", "create", "--admin-socket", sock, "-o", "json", "--spiffe-id", "spiffe://example.org/w",
		"--parent-id", "spiffe://example.org/agent/join_token/0123456789abcdef", "--selector", "unix:uid:1", "--federates-with", "other.org"); err != nil || !strings.Contains(out, "other.org") {
		t.Fatalf("entry create --federates-with: %q %v", out, err)
	}
	if _, err := shortleaf(t, "federation", "delete", "other.org", "--admin-socket", sock); err != nil {
		t.Fatal(err)
	}
	if _, err := shortleaf(t, "bundle", "set", "other.org", "--file", bundleFile, "--admin-socket", sock); err != nil {
		t.Fatal(err)
	}
	if _, err := shortleaf(t, "bundle", "delete", "other.org", "--admin-socket", sock); err != nil {
		t.Fatal(err)
	}
}

// ca drill rehearses a config: on a fresh start, on the running server's
// journal (over the admin socket), and it exits non-zero naming the day and
// reason when the schedule cannot hold.
func TestCADrill(t *testing.T) {
	dir := t.TempDir()
	writeConfig := func(name, refreshHint string) string {
		path := filepath.Join(dir, name)
		body := "trust_domain: example.org\ndata_dir: " + filepath.Join(dir, "data") + "\nroot_ttl: 216h\nintermediate_ttl: 24h\n" +
			"agent_svid_ttl: 1h\nbundle_endpoint:\n  address: 127.0.0.1:0\n  refresh_hint: " + refreshHint + "\n"
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	good := writeConfig("good.yaml", "5m")
	out, err := shortleaf(t, "ca", "drill", "--config", good, "--fresh", "--step", "15s")
	if err != nil || !strings.Contains(out, "no violations") || !strings.Contains(out, "root") || !strings.Contains(out, "2 root rotations") {
		t.Fatalf("drill of a good config: %v\n%s", err, out)
	}

	// No server, no datastore: a first start.
	out, err = shortleaf(t, "ca", "drill", "--config", good, "--days", "2", "--step", "15s", "-o", "json")
	var report struct {
		Timeline   []json.RawMessage `json:"timeline"`
		Violations []json.RawMessage `json:"violations"`
	}
	if err != nil || json.Unmarshal([]byte(out), &report) != nil || len(report.Timeline) == 0 || len(report.Violations) != 0 {
		t.Fatalf("drill -o json: %v\n%s", err, out)
	}

	// The running server's journal, over its admin socket.
	srv := harness.StartServer(t)
	out, err = shortleaf(t, "ca", "drill", "--config", good, "--admin-socket", srv.AdminSocket(), "--days", "1", "--step", "15s")
	if err != nil || !strings.Contains(out, "the running server's CA journal") {
		t.Fatalf("drill of the running server's journal: %v\n%s", err, out)
	}
	active, _ := srv.CA().ActiveIntermediate()
	for _, a := range srv.CA().Authorities() {
		if a.Cert != nil && a.Cert.Equal(active) && !strings.Contains(out, a.ID+" superseded") {
			t.Fatalf("the drill did not carry on from the server's active intermediate %s:\n%s", a.ID, out)
		}
	}

	// Three weekly refresh hints do not fit in the 3-day lead of a 9-day root.
	bad := writeConfig("bad.yaml", "168h")
	out, err = shortleaf(t, "ca", "drill", "--config", bad, "--fresh")
	if err == nil || !strings.Contains(out, "VIOLATION on day 0.000") || !strings.Contains(out, "root_prepare_before") {
		t.Fatalf("drill of a config that cannot hold: %v\n%s", err, out)
	}
}

// bundle show --format spiffe prints the refresh hint the bundle endpoint
// publishes, not a made-up one.
func TestBundleShowPrintsTheEndpointsRefreshHint(t *testing.T) {
	srv := harness.StartServer(t, func(c *server.Config) {
		c.BundleEndpoint = &server.BundleEndpointConfig{Addr: "127.0.0.1:0", Profile: "https_spiffe", RefreshHint: 90 * time.Second}
	})
	out, err := shortleaf(t, "bundle", "show", "--admin-socket", srv.AdminSocket(), "--format", "spiffe")
	if err != nil || !strings.Contains(out, `"spiffe_refresh_hint":90`) {
		t.Fatalf("bundle show --format spiffe: %v\n%s", err, out)
	}
}

// datastore migrate copies a server's records from bbolt to etcd, where a
// server on the same data dir (its keys) carries on with the same CA and
// entries, and back; a filled target and a running server are refused.
func TestDatastoreMigrate(t *testing.T) {
	srv := harness.StartServer(t, harness.WithPassphrase)
	dataDir := srv.Config.DataDir
	ag := harness.StartAgent(t, srv)
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/web", ParentId: ag.ID(), Selectors: []string{"unix:uid:1000"}})
	srv.NewJoinToken(t)
	before, err := srv.Admin.GetBundle(context.Background(), &adminv1.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ag.Stop()

	cluster := etcdtest.Start(t, 1)
	prefix := "/migrate-test/" + strings.ReplaceAll(t.Name(), "/", "_") + "/"
	cfgPath := filepath.Join(t.TempDir(), "server.yaml")
	body := "trust_domain: example.org\ndata_dir: " + dataDir + "\ndatastore:\n  type: etcd\n  endpoints: [" +
		strings.Join(cluster.Endpoints(), ", ") + "]\n  prefix: " + prefix + "\n"
	if err := os.WriteFile(cfgPath, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := shortleaf(t, "datastore", "migrate", "--from", "bbolt", "--to", "etcd", "--config", cfgPath); err == nil ||
		!strings.Contains(err.Error(), "stop the server first") {
		t.Fatalf("migrate beside a running server: %v\n%s", err, out)
	}
	srv.Stop()
	out, err := shortleaf(t, "datastore", "migrate", "--from", "bbolt", "--to", "etcd", "--config", cfgPath)
	if err != nil || !strings.Contains(out, "copied 1 entries, 1 agents, 1 join tokens") || !strings.Contains(out, "the CA journal") {
		t.Fatalf("migrate bbolt -> etcd: %v\n%s", err, out)
	}
	if out, err := shortleaf(t, "datastore", "migrate", "--from", "bbolt", "--to", "etcd", "--config", cfgPath); err == nil ||
		!strings.Contains(err.Error(), "not empty") {
		t.Fatalf("a second migration into the filled prefix: %v\n%s", err, out)
	}

	onEtcd := harness.StartServer(t, harness.WithPassphrase, func(c *server.Config) {
		c.DataDir = dataDir
		c.Etcd = &datastore.EtcdConfig{Endpoints: cluster.Endpoints(), Prefix: prefix}
	})
	after, err := onEtcd.Admin.GetBundle(context.Background(), &adminv1.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(after.GetX509Authorities()[0], before.GetX509Authorities()[0]) {
		t.Fatal("the server on etcd has another root: the CA journal was not carried over")
	}
	entries, err := onEtcd.Admin.ListEntries(context.Background(), &adminv1.ListEntriesRequest{})
	if err != nil || len(entries.GetEntries()) != 1 || entries.GetEntries()[0].GetParentId() != ag.ID() {
		t.Fatalf("entries on etcd: %v, %v", entries, err)
	}
	// The same replica (kept in the data dir) carries on with its keys.
	if id := onEtcd.CA().ReplicaID(); id != "local" {
		t.Fatalf("the migrated server runs as replica %q, want local", id)
	}
	// Another machine's config (its own data dir) on the same prefix.
	elsewhere := filepath.Join(t.TempDir(), "server.yaml")
	if err := os.WriteFile(elsewhere, []byte(strings.Replace(body, dataDir, t.TempDir(), 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := shortleaf(t, "datastore", "migrate", "--from", "etcd", "--to", "bbolt", "--config", elsewhere); err == nil ||
		!strings.Contains(err.Error(), "server replicas local are running on it") {
		t.Fatalf("migrate from etcd beside a running replica: %v\n%s", err, out)
	}
	onEtcd.Stop()

	// Back to bbolt: the old file is still there and is refused as a target.
	if out, err := shortleaf(t, "datastore", "migrate", "--from", "etcd", "--to", "bbolt", "--config", cfgPath); err == nil ||
		!strings.Contains(err.Error(), "not empty") {
		t.Fatalf("migrate into the filled bbolt file: %v\n%s", err, out)
	}
	if err := os.Rename(filepath.Join(dataDir, "datastore.db"), filepath.Join(dataDir, "datastore.db.old")); err != nil {
		t.Fatal(err)
	}
	out, err = shortleaf(t, "datastore", "migrate", "--from", "etcd", "--to", "bbolt", "--config", cfgPath)
	if err != nil || !strings.Contains(out, "copied 1 entries, 1 agents, 1 join tokens") || !strings.Contains(out, "remove the datastore section") {
		t.Fatalf("migrate etcd -> bbolt: %v\n%s", err, out)
	}
	if out, err := shortleaf(t, "datastore", "migrate", "--from", "etcd", "--to", "etcd", "--config", cfgPath); err == nil || !strings.Contains(err.Error(), "both etcd") {
		t.Fatalf("same source and target: %v\n%s", err, out)
	}
}
