package config_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/ca/catest"
	"github.com/shortleaf/shortleaf/pkg/config"
)

func env(vals map[string]string) func(string) string {
	return func(k string) string { return vals[k] }
}

var withPass = env(map[string]string{config.PassphraseEnv: "s3cret"})

func TestServerConfigDefaults(t *testing.T) {
	cfg, _, err := config.ParseServer(strings.NewReader("trust_domain: example.org\ndata_dir: /var/lib/sl\n"), withPass)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.AgentAPIAddr != "127.0.0.1:8081" || cfg.DefaultSVIDTTL != 5*time.Minute || cfg.AgentSVIDTTL != time.Hour ||
		cfg.IntermediateTTL != 24*time.Hour || cfg.RootTTL != 365*24*time.Hour || cfg.KeyType != "ec-p256" ||
		cfg.MetricsAddr != config.DefaultMetricsAddress || string(cfg.KeyPassphrase) != "s3cret" {
		t.Fatalf("defaults: %+v", cfg)
	}
}

func TestServerConfigErrorsNameTheField(t *testing.T) {
	base := "trust_domain: example.org\ndata_dir: /d\n"
	cases := []struct{ name, yaml, field string }{
		{"unknown key", base + "trust_domian: x\n", "trust_domian"},
		{"missing trust domain", "data_dir: /d\n", "trust_domain"},
		{"bad trust domain", "trust_domain: Exa mple\ndata_dir: /d\n", "trust_domain"},
		{"missing data dir", "trust_domain: example.org\n", "data_dir"},
		{"TTL too short", base + "x509_svid_ttl: 30s\n", "x509_svid_ttl"},
		{"TTL too long", base + "x509_svid_ttl: 25h\n", "x509_svid_ttl"},
		{"TTL not a duration", base + "x509_svid_ttl: five\n", "five"},
		{"unknown key type", base + "ca_key_type: dsa\n", "ca_key_type"},
		{"intermediate too short", base + "intermediate_ttl: 5m\n", "intermediate_ttl"},
		{"root too short", base + "root_ttl: 30h\n", "root_ttl"},
		{"bad log level", base + "log_level: loud\n", "log_level"},
		{"liveness too short", base + "agent_liveness: 10s\n", "agent_liveness"},
		{"two documents", base + "---\ntrust_domain: b\n", "more than one"},
		{"wrong type", base + "agent_svid_ttl: [1]\n", "agent_svid_ttl"},
		// Durations whose arithmetic would overflow (2*intermediate_ttl, now+root_ttl).
		{"root TTL near the int64 limit", base + "root_ttl: 2562047h\n", "root_ttl"},
		{"intermediate TTL past half the int64 limit", base + "intermediate_ttl: 1500000h\nroot_ttl: 876000h\n", "intermediate_ttl"},
		{"negative intermediate TTL", base + "intermediate_ttl: -24h\n", "intermediate_ttl"},
		{"duration past the int64 limit", base + "root_ttl: 9999999999h\n", "root_ttl"},
		{"refresh hint out of range", base + "bundle_endpoint:\n  address: 127.0.0.1:0\n  refresh_hint: 1000h\n", "refresh_hint"},
		{"negative rate", base + "limits:\n  svids_per_second: -5\n", "limits.svids_per_second"},
		{"negative queue", base + "limits:\n  signing_queue: -1\n", "limits.signing_queue"},
		{"queue wait past the agents' call timeout", base + "limits:\n  signing_queue_max_wait: 40s\n", "limits.signing_queue_max_wait"},
		{"negative capacity", base + "limits:\n  signing_capacity: -3\n", "limits.signing_capacity"},
		// The next root must be published in time for the gate to pass before
		// the old root stops giving intermediates their full life.
		{"root prepared too late", base + "root_prepare_before: 24h\n", "root_prepare_before: 24h0m0s leaves the propagation gate no time"},
		{"root prepared too late for the federation lead", base + "root_prepare_before: 26h\nbundle_endpoint:\n  address: 127.0.0.1:0\n  refresh_hint: 2h\n",
			"raise root_prepare_before (or root_ttl, whose third is its default) to at least 31h10m0s"},
		{"default prepare lead of a short root", base + "root_ttl: 72h\n", "root_prepare_before: 24h0m0s"},
		{"root shorter than twice its prepare lead", base + "root_prepare_before: 4800h\n", "root_ttl: 8760h0m0s is shorter than twice root_prepare_before"},
		{"negative prepare lead", base + "root_prepare_before: -1h\n", "root_prepare_before"},
		{"unknown datastore type", base + "datastore:\n  type: postgres\n", "datastore.type"},
		{"etcd without endpoints", base + "datastore:\n  type: etcd\n", "datastore.endpoints"},
		{"etcd endpoint without port", base + "datastore:\n  type: etcd\n  endpoints: [etcd-1]\n", "datastore.endpoints[0]"},
		{"etcd endpoint not http", base + "datastore:\n  type: etcd\n  endpoints: [a:2379, 'ftp://b:2379']\n", "datastore.endpoints[1]"},
		{"plain http with TLS", base + "datastore:\n  type: etcd\n  endpoints: ['http://a:2379']\n  tls:\n    ca_file: /dev/null\n", "use https"},
		{"etcd prefix not absolute", base + "datastore:\n  type: etcd\n  endpoints: [a:2379]\n  prefix: shortleaf\n", "datastore.prefix"},
		{"etcd dial timeout", base + "datastore:\n  type: etcd\n  endpoints: [a:2379]\n  dial_timeout: 1h\n", "datastore.dial_timeout"},
		{"etcd cert without key", base + "datastore:\n  type: etcd\n  endpoints: [a:2379]\n  tls:\n    cert_file: /dev/null\n", "datastore.tls"},
		{"etcd CA file missing", base + "datastore:\n  type: etcd\n  endpoints: [a:2379]\n  tls:\n    ca_file: /nonexistent/ca.pem\n", "datastore.tls.ca_file"},
		{"etcd settings on bbolt", base + "datastore:\n  endpoints: [a:2379]\n", "settings of type etcd"},
		{"misspelt datastore key", base + "datastore:\n  type: etcd\n  endpoint: [a:2379]\n", "endpoint"},
		{"x509pop without a CA bundle", base + "node_attestors:\n  x509pop: {}\n", "node_attestors.x509pop.ca_bundle_path: is required"},
		{"x509pop CA bundle missing", base + "node_attestors:\n  x509pop: {ca_bundle_path: /nonexistent.pem}\n", "node_attestors.x509pop.ca_bundle_path"},
		{"psat without clusters", base + "node_attestors:\n  k8s_psat: {}\n", "node_attestors.k8s_psat.clusters"},
		{"psat cluster without accounts", base + "node_attestors:\n  k8s_psat:\n    clusters:\n      prod: {issuer_url: 'https://oidc'}\n",
			"node_attestors.k8s_psat.clusters.prod.service_account_allow_list"},
		{"psat JWKS without issuer", base + "node_attestors:\n  k8s_psat:\n    clusters:\n      prod: {service_account_allow_list: ['a:b'], jwks_file: /j}\n",
			"node_attestors.k8s_psat.clusters.prod.issuer"},
		{"psat two ways", base + "node_attestors:\n  k8s_psat:\n    clusters:\n      prod: {service_account_allow_list: ['a:b'], issuer_url: 'https://oidc', kube_config_file: /k}\n",
			"node_attestors.k8s_psat.clusters.prod.kube_config_file"},
		{"psat issuer not https", base + "node_attestors:\n  k8s_psat:\n    clusters:\n      prod: {service_account_allow_list: ['a:b'], issuer_url: 'http://oidc'}\n",
			"node_attestors.k8s_psat.clusters.prod.issuer_url"},
		{"tpm trusting nothing", base + "node_attestors:\n  tpm: {}\n", "node_attestors.tpm: tpm: neither manufacturer CAs nor allowed EK hashes"},
		{"tpm hash malformed", base + "node_attestors:\n  tpm: {ek_hash_allow_list: [ABC]}\n", "node_attestors.tpm.ek_hash_allow_list[0]"},
		{"audit file size out of range", base + "audit:\n  max_file_size_mb: 5000\n", "audit.max_file_size_mb"},
		{"audit total smaller than two files", base + "audit:\n  max_file_size_mb: 100\n  max_total_size_mb: 150\n", "audit.max_total_size_mb"},
		{"audit checkpoint interval too long", base + "audit:\n  checkpoint_interval: 2h\n", "audit.checkpoint_interval"},
		{"audit retention too short", base + "audit:\n  retention: 10m\n", "audit.retention"},
		{"misspelt audit key", base + "audit:\n  retension: 10m\n", "retension"},
		{"psat account not ns:name", base + "node_attestors:\n  k8s_psat:\n    clusters:\n      prod: {service_account_allow_list: ['agent'], issuer_url: 'https://oidc'}\n",
			"not namespace:name"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := config.ParseServer(strings.NewReader(tc.yaml), withPass)
			if err == nil || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("error %v does not name %q", err, tc.field)
			}
		})
	}
}

func TestServerDatastoreEtcd(t *testing.T) {
	base := "trust_domain: example.org\ndata_dir: /d\n"
	cfg, _, err := config.ParseServer(strings.NewReader(base), withPass)
	if err != nil || cfg.Etcd != nil {
		t.Fatalf("default datastore: %+v, %v; want bbolt", cfg.Etcd, err)
	}
	dir := t.TempDir()
	key := filepath.Join(dir, "client.key")
	for _, f := range []string{"ca.pem", "client.pem", "client.key"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	yaml := base + "datastore:\n  type: etcd\n  endpoints: [etcd-1:2379, 'https://etcd-2:2379/']\n  prefix: /sl/example.org/\n  dial_timeout: 3s\n" +
		"  tls:\n    ca_file: " + filepath.Join(dir, "ca.pem") + "\n    cert_file: " + filepath.Join(dir, "client.pem") + "\n    key_file: " + key + "\n"
	cfg, _, err = config.ParseServer(strings.NewReader(yaml), withPass)
	if err != nil {
		t.Fatal(err)
	}
	e := cfg.Etcd
	if e == nil || strings.Join(e.Endpoints, ",") != "https://etcd-1:2379,https://etcd-2:2379" || e.Prefix != "/sl/example.org/" ||
		e.DialTimeout != 3*time.Second || e.KeyFile != key {
		t.Fatalf("etcd settings: %+v", e)
	}
	if err := os.Chmod(key, 0o644); err != nil { //nolint:gosec // the mistake under test
		t.Fatal(err)
	}
	if _, _, err := config.ParseServer(strings.NewReader(yaml), withPass); err == nil || !strings.Contains(err.Error(), "datastore.tls.key_file") {
		t.Fatalf("readable client key: %v", err)
	}
}

func TestServerPassphraseSources(t *testing.T) {
	base := "trust_domain: example.org\ndata_dir: /d\n"
	if _, _, err := config.ParseServer(strings.NewReader(base), env(nil)); err == nil || !strings.Contains(err.Error(), config.PassphraseEnv) {
		t.Fatalf("no passphrase: %v", err)
	}
	file := filepath.Join(t.TempDir(), "pass")
	if err := os.WriteFile(file, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, _, err := config.ParseServer(strings.NewReader(base+"key_passphrase_file: "+file+"\n"), withPass)
	if err != nil || string(cfg.KeyPassphrase) != "from-file" {
		t.Fatalf("passphrase file: %q, %v", cfg.KeyPassphrase, err)
	}
	// A passphrase file others can read is refused, naming the key and the mode.
	if err := os.Chmod(file, 0o644); err != nil { //nolint:gosec // the mistake under test
		t.Fatal(err)
	}
	if _, _, err := config.ParseServer(strings.NewReader(base+"key_passphrase_file: "+file+"\n"), withPass); err == nil ||
		!strings.Contains(err.Error(), "key_passphrase_file") || !strings.Contains(err.Error(), "0644") {
		t.Fatalf("group/world-readable passphrase file: %v, want a refusal naming key_passphrase_file and its mode", err)
	}
	// The passphrase never shows up in an error.
	_, _, err = config.ParseServer(strings.NewReader(base+"key_passphrase_file: /nonexistent\n"), withPass)
	if err == nil || strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "key_passphrase_file") {
		t.Fatalf("missing passphrase file: %v", err)
	}
}

func TestAgentConfig(t *testing.T) {
	cfg, err := config.ParseAgent(strings.NewReader("server_address: 127.0.0.1:8081\ntrust_domain: example.org\ndata_dir: /d\ninsecure_bootstrap: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfg.Agent.ServerAddrs, ",") != "127.0.0.1:8081" || !cfg.Agent.InsecureBootstrap {
		t.Fatalf("agent config: %+v", cfg.Agent)
	}
	cfg, err = config.ParseAgent(strings.NewReader("server_address: a:1\ntrust_domain: example.org\ndata_dir: /d\nk8s: {kubelet_url: 'http://127.0.0.1:10255', proc_root: /host/proc}\n"))
	if err != nil || cfg.Agent.Kubernetes == nil || cfg.Agent.Kubernetes.ProcRoot != "/host/proc" || cfg.Agent.Kubernetes.Kubelet.URL != "http://127.0.0.1:10255" {
		t.Fatalf("k8s with the read-only port: %+v, %v", cfg.Agent.Kubernetes, err)
	}
	cfg, err = config.ParseAgent(strings.NewReader("server_address: [server-1:8081, 'servers.internal:8081']\ntrust_domain: example.org\ndata_dir: /d\ninsecure_bootstrap: true\n"))
	if err != nil || strings.Join(cfg.Agent.ServerAddrs, ",") != "server-1:8081,servers.internal:8081" {
		t.Fatalf("several server addresses: %v, %v", cfg.Agent.ServerAddrs, err)
	}
	for _, tc := range []struct{ yaml, field string }{
		{"trust_domain: example.org\ndata_dir: /d\n", "server_address"},
		{"server_address: a:1\ntrust_domain: example.org\ndata_dir: /d\nsocket: /x\n", "socket"},
		{"server_address: a:1\ntrust_domain: example.org\ndata_dir: /d\nsync_interval: 1ms\n", "sync_interval"},
		{"server_address: a:1\ntrust_domain: example.org\ndata_dir: /d\nsync_deadline: 6s\n", "sync_deadline: 6s is out of range (twice sync_interval"},
		{"server_address: a:1\ntrust_domain: example.org\ndata_dir: /d\ntrust_bundle_path: /nonexistent\n", "trust_bundle_path"},
		{"server_address: server-1\ntrust_domain: example.org\ndata_dir: /d\n", "server_address: \"server-1\" is not host:port"},
		{"server_address: [a:1, b]\ntrust_domain: example.org\ndata_dir: /d\n", "server_address[1]"},
		{"server_address: {a: 1}\ntrust_domain: example.org\ndata_dir: /d\n", "host:port or a list"},
		{"server_address: a:1\ntrust_domain: example.org\ndata_dir: /d\nk8s: {}\n", "k8s.token_file: is required"},
		{"server_address: a:1\ntrust_domain: example.org\ndata_dir: /d\nk8s: {kubelet_url: 'node:10250'}\n", "k8s.kubelet_url"},
		{"server_address: a:1\ntrust_domain: example.org\ndata_dir: /d\nk8s: {token_file: /t, kubelet_ca_file: /c, skip_kubelet_verification: true}\n", "k8s.skip_kubelet_verification"},
		{"server_address: a:1\ntrust_domain: example.org\ndata_dir: /d\nx509_svid_cache_max_size: -1\n", "x509_svid_cache_max_size"},
		{"server_address: a:1\ntrust_domain: example.org\ndata_dir: /d\nnode_attestor: {}\n", "node_attestor: names no attestor"},
		{"server_address: a:1\ntrust_domain: example.org\ndata_dir: /d\nnode_attestor: {k8s_psat: {}}\n", "node_attestor.k8s_psat.cluster"},
		{"server_address: a:1\ntrust_domain: example.org\ndata_dir: /d\nnode_attestor: {x509pop: {private_key_path: /k}}\n", "node_attestor.x509pop.certificate_path"},
		{"server_address: a:1\ntrust_domain: example.org\ndata_dir: /d\njoin_token: t\nnode_attestor: {k8s_psat: {cluster: prod}}\n", "join_token: cannot be combined"},
		{"server_address: a:1\ntrust_domain: example.org\ndata_dir: /d\nnode_attestor: {tpm: {ek_cert_path: /nonexistent.pem}}\n", "node_attestor.tpm.ek_cert_path"},
		{"server_address: a:1\ntrust_domain: example.org\ndata_dir: /d\nnode_attestor: {tpm: {}, k8s_psat: {cluster: prod}}\n", "names more than one attestor"},
	} {
		if _, err := config.ParseAgent(strings.NewReader(tc.yaml)); err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("error %v does not name %q", err, tc.field)
		}
	}
}

// The example configs shipped in testdata/ load.
func TestExampleConfigsLoad(t *testing.T) {
	if _, _, err := config.LoadServer("../../testdata/server.yaml", withPass); err != nil {
		t.Errorf("testdata/server.yaml: %v", err)
	}
	// The agent example names the bundle at its production path; load it
	// with a real bundle there.
	raw, err := os.ReadFile("../../testdata/agent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), "\ninsecure_bootstrap: true") {
		t.Error("testdata/agent.yaml turns on insecure_bootstrap: the example must authenticate the server")
	}
	dir := t.TempDir()
	bundle, _ := catest.New(t).Bundle()
	bundlePath := filepath.Join(dir, "bundle.pem")
	if err := os.WriteFile(bundlePath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: bundle.X509Authorities()[0].Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	agentPath := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(agentPath, []byte(strings.ReplaceAll(string(raw), "/etc/shortleaf/bundle.pem", bundlePath)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.LoadAgent(agentPath)
	if err != nil {
		t.Fatalf("testdata/agent.yaml: %v", err)
	}
	if len(cfg.Agent.TrustBundle) != 1 || cfg.Agent.InsecureBootstrap {
		t.Errorf("testdata/agent.yaml: bundle %d certificates, insecure_bootstrap %v", len(cfg.Agent.TrustBundle), cfg.Agent.InsecureBootstrap)
	}
}

func FuzzParseServerConfig(f *testing.F) {
	f.Add("trust_domain: example.org\ndata_dir: /d\n")
	f.Add("trust_domain: example.org\ndata_dir: /d\nx509_svid_ttl: 1m\nintermediate_ttl: 2m\n")
	f.Add("{}")
	f.Fuzz(func(t *testing.T, doc string) {
		cfg, _, err := config.ParseServer(strings.NewReader(doc), withPass)
		if err != nil {
			return
		}
		// Whatever is accepted satisfies the validation rules.
		if cfg.DefaultSVIDTTL < time.Minute || cfg.DefaultSVIDTTL > 24*time.Hour || cfg.IntermediateTTL < 2*cfg.DefaultSVIDTTL {
			t.Fatalf("accepted an invalid config: %+v", cfg)
		}
	})
}

func TestUpstreamAuthorityFiles(t *testing.T) {
	dir := t.TempDir()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "up"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, _ := x509.CreateCertificate(rand.Reader, tpl, tpl, key.Public(), key)
	certFile := filepath.Join(dir, "up.pem")
	_ = os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	writeKey := func(name string, k *ecdsa.PrivateKey) string {
		b, _ := x509.MarshalPKCS8PrivateKey(k)
		p := filepath.Join(dir, name)
		_ = os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: b}), 0o600)
		return p
	}
	up, err := config.LoadUpstream(certFile, writeKey("up.key", key), nil)
	if err != nil || len(up.Chain) != 1 {
		t.Fatalf("upstream: %v", err)
	}
	if _, err := config.LoadUpstream(certFile, writeKey("other.key", other), nil); err == nil || !strings.Contains(err.Error(), "upstream_authority.key_file") {
		t.Fatalf("mismatched key: %v", err)
	}
	if _, err := config.LoadUpstream("", "", nil); err == nil || !strings.Contains(err.Error(), "upstream_authority") {
		t.Fatalf("empty: %v", err)
	}
	readable := writeKey("readable.key", key)
	if err := os.Chmod(readable, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := config.LoadUpstream(certFile, readable, nil); err == nil || !strings.Contains(err.Error(), "upstream_authority.key_file") || !strings.Contains(err.Error(), "0640") {
		t.Fatalf("group-readable upstream key: %v, want a refusal naming the key and its mode", err)
	}
}

func FuzzParseAgentConfig(f *testing.F) {
	f.Add("server_address: 127.0.0.1:8081\ntrust_domain: example.org\ndata_dir: /d\ninsecure_bootstrap: true\n")
	f.Add("server_address: a\ntrust_domain: example.org\ndata_dir: /d\nsync_interval: 1s\n")
	f.Fuzz(func(t *testing.T, doc string) {
		cfg, err := config.ParseAgent(strings.NewReader(doc))
		if err != nil {
			return
		}
		if len(cfg.Agent.ServerAddrs) == 0 || cfg.Agent.DataDir == "" || cfg.Agent.TrustDomain.IsZero() {
			t.Fatalf("accepted an incomplete config: %+v", cfg.Agent)
		}
	})
}

// FuzzLoadUpstream: no certificate or key file panics the upstream loader,
// and what it accepts is a CA certificate with its own key, within the key
// bounds.
func FuzzLoadUpstream(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "up"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, _ := x509.CreateCertificate(rand.Reader, tpl, tpl, key.Public(), key)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	f.Add([]byte("junk"), []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, certPEM, keyPEM []byte) {
		dir := t.TempDir()
		certFile, keyFile := filepath.Join(dir, "up.pem"), filepath.Join(dir, "up.key")
		if os.WriteFile(certFile, certPEM, 0o600) != nil || os.WriteFile(keyFile, keyPEM, 0o600) != nil {
			t.Fatal("write")
		}
		up, err := config.LoadUpstream(certFile, keyFile, nil)
		if err != nil {
			return
		}
		if !up.Chain[0].IsCA || ca.CheckPublicKey(up.Signer.Public()) != nil {
			t.Fatalf("accepted a non-CA certificate or an out-of-bounds key")
		}
	})
}

// An unknown key names the closest known key, at the top level and inside a
// nested section; a key far from every known one gets no guess.
func TestUnknownKeySuggestsTheClosest(t *testing.T) {
	base := "trust_domain: example.org\ndata_dir: /d\n"
	for yaml, want := range map[string]string{
		base + "trust_domian: x\n":                 "field trust_domian not found in type config.ServerFile (did you mean trust_domain?)",
		base + "x509_svid_tll: 5m\n":               "(did you mean x509_svid_ttl?)",
		base + "limits:\n  max_conections: 10\n":   "(did you mean max_connections?)",
		base + "bundle_endpoint:\n  adddress: x\n": "(did you mean address?)",
		base + "completely_unrelated_setting: 1\n": "",
	} {
		_, _, err := config.ParseServer(strings.NewReader(yaml), func(string) string { return "pass" })
		if err == nil {
			t.Fatalf("%q: accepted", yaml)
		}
		if want == "" {
			if strings.Contains(err.Error(), "did you mean") {
				t.Errorf("%q: guessed: %v", yaml, err)
			}
			continue
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", yaml, err, want)
		}
	}
	_, err := config.ParseAgent(strings.NewReader("server_address: x:1\ntrust_domain: example.org\ndata_dir: /d\nsync_intervall: 5s\n"))
	if err == nil || !strings.Contains(err.Error(), "did you mean sync_interval?") {
		t.Errorf("agent config: %v", err)
	}
}
