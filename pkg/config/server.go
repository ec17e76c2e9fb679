package config

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/pkg/keymanager"
	"github.com/shortleaf/shortleaf/pkg/safefile"
	"github.com/shortleaf/shortleaf/pkg/server"
)

// PassphraseEnv names the environment variable holding the CA key passphrase.
const PassphraseEnv = "SHORTLEAF_KEY_PASSPHRASE" //nolint:gosec // a variable name, not a credential

// ServerFile is server.yaml as written by an operator.
type ServerFile struct {
	TrustDomain       string   `yaml:"trust_domain"`
	DataDir           string   `yaml:"data_dir"`
	AgentAPIAddress   string   `yaml:"agent_api_address"`
	AdminSocket       string   `yaml:"admin_socket"`
	MetricsAddress    string   `yaml:"metrics_address"`
	StatusAddress     string   `yaml:"status_address"`
	X509SVIDTTL       Duration `yaml:"x509_svid_ttl"`
	JWTSVIDTTL        Duration `yaml:"jwt_svid_ttl"`
	AgentSVIDTTL      Duration `yaml:"agent_svid_ttl"`
	CAKeyType         string   `yaml:"ca_key_type"`
	RootTTL           Duration `yaml:"root_ttl"`
	RootPrepareBefore Duration `yaml:"root_prepare_before"`
	IntermediateTTL   Duration `yaml:"intermediate_ttl"`
	MaxX509SVIDTTL    Duration `yaml:"max_x509_svid_ttl"`
	AgentLiveness     Duration `yaml:"agent_liveness"`
	KeyPassphraseFile string   `yaml:"key_passphrase_file"`
	KeyManagerURI     string   `yaml:"key_manager_uri"`
	// UpstreamAuthority, when set, signs the intermediates instead of a
	// self-signed root.
	UpstreamAuthority *UpstreamFile `yaml:"upstream_authority"`
	LogLevel          string        `yaml:"log_level"`
	// BundleEndpoint, when set, serves the SPIFFE bundle to other trust domains.
	BundleEndpoint *BundleEndpointFile `yaml:"bundle_endpoint"`
	// Limits bound what clients may make the server do; on by default.
	Limits *LimitsFile `yaml:"limits"`
	// Datastore chooses bbolt in data_dir (default) or an etcd cluster.
	Datastore *DatastoreFile `yaml:"datastore"`
	// ReplicaID names this server among replicas sharing an etcd datastore;
	// default the one kept in data_dir/replica_id.
	ReplicaID string `yaml:"replica_id"`
	// NodeAttestors are the ways agents may attest besides join tokens.
	NodeAttestors *NodeAttestorsFile `yaml:"node_attestors"`
	// Audit configures the audit log; on by default.
	Audit *AuditFile `yaml:"audit"`
}

// AuditFile configures the audit log.
type AuditFile struct {
	// Enabled defaults to true.
	Enabled            *bool    `yaml:"enabled"`
	Dir                string   `yaml:"dir"`
	MaxFileSizeMB      int64    `yaml:"max_file_size_mb"`
	MaxFileAge         Duration `yaml:"max_file_age"`
	MaxTotalSizeMB     int64    `yaml:"max_total_size_mb"`
	Retention          Duration `yaml:"retention"`
	CheckpointInterval Duration `yaml:"checkpoint_interval"`
}

func (a *AuditFile) resolve() (server.AuditConfig, error) {
	if a == nil {
		return server.AuditConfig{}, nil
	}
	if a.Enabled != nil && !*a.Enabled {
		return server.AuditConfig{Disabled: true}, nil
	}
	if a.MaxFileSizeMB < 0 || a.MaxFileSizeMB > 4096 {
		return server.AuditConfig{}, fieldErr("audit.max_file_size_mb", "%d is out of range (1 to 4096; 0 for the default of 64)", a.MaxFileSizeMB)
	}
	if a.MaxTotalSizeMB < 0 || (a.MaxTotalSizeMB != 0 && a.MaxTotalSizeMB < max(a.MaxFileSizeMB, 1)*2) {
		return server.AuditConfig{}, fieldErr("audit.max_total_size_mb", "%d must be at least twice max_file_size_mb (0 for the default of 1024)", a.MaxTotalSizeMB)
	}
	for _, d := range []struct {
		key      string
		v        Duration
		min, max time.Duration
	}{{"audit.max_file_age", a.MaxFileAge, time.Minute, 30 * 24 * time.Hour}, {"audit.retention", a.Retention, time.Hour, 100 * 365 * 24 * time.Hour},
		{"audit.checkpoint_interval", a.CheckpointInterval, time.Second, time.Hour}} {
		if v := time.Duration(d.v); v != 0 && (v < d.min || v > d.max) {
			return server.AuditConfig{}, fieldErr(d.key, "%s is out of range (%s to %s)", v, d.min, d.max)
		}
	}
	return server.AuditConfig{Dir: a.Dir, MaxFileSize: a.MaxFileSizeMB << 20, MaxFileAge: time.Duration(a.MaxFileAge),
		MaxTotalSize: a.MaxTotalSizeMB << 20, MaxAge: time.Duration(a.Retention), CheckpointInterval: time.Duration(a.CheckpointInterval)}, nil
}

// LimitsFile configures the server's rate and connection limits. A rate of
// -1 turns that limit off.
type LimitsFile struct {
	AttestationsPerSecond float64  `yaml:"attestations_per_second"`
	AttestationBurst      int      `yaml:"attestation_burst"`
	SVIDsPerSecond        float64  `yaml:"svids_per_second"`
	SVIDBurst             int      `yaml:"svid_burst"`
	MaxConnections        int      `yaml:"max_connections"`
	MaxConnectionAge      Duration `yaml:"max_connection_age"`
	SigningQueue          int      `yaml:"signing_queue"`
	SigningQueueMaxWait   Duration `yaml:"signing_queue_max_wait"`
	SigningCapacity       float64  `yaml:"signing_capacity"`
}

func (l *LimitsFile) resolve() (server.Limits, error) {
	if l == nil {
		return server.Limits{}, nil
	}
	for _, f := range []struct {
		key string
		v   float64
	}{{"limits.attestations_per_second", l.AttestationsPerSecond}, {"limits.svids_per_second", l.SVIDsPerSecond}, {"limits.signing_capacity", l.SigningCapacity}} {
		if f.v < 0 && f.v != -1 {
			return server.Limits{}, fieldErr(f.key, "%v is negative (-1 turns the limit off)", f.v)
		}
	}
	for _, f := range []struct {
		key string
		v   int
	}{{"limits.attestation_burst", l.AttestationBurst}, {"limits.svid_burst", l.SVIDBurst}, {"limits.max_connections", l.MaxConnections}, {"limits.signing_queue", l.SigningQueue}} {
		if f.v < 0 {
			return server.Limits{}, fieldErr(f.key, "%d is negative", f.v)
		}
	}
	if d := time.Duration(l.MaxConnectionAge); d != 0 && (d < 10*time.Second || d > 24*time.Hour) {
		return server.Limits{}, fieldErr("limits.max_connection_age", "%s is out of range (10s to 24h)", d)
	}
	if d := time.Duration(l.SigningQueueMaxWait); d != 0 && (d < 100*time.Millisecond || d > 25*time.Second) {
		return server.Limits{}, fieldErr("limits.signing_queue_max_wait", "%s is out of range (100ms to 25s: agents give a call 30s)", d)
	}
	return server.Limits{
		AttestationsPerSecond: l.AttestationsPerSecond, AttestationBurst: l.AttestationBurst,
		SigningPerSecond: l.SVIDsPerSecond, SigningBurst: l.SVIDBurst, MaxConnections: l.MaxConnections,
		MaxConnectionAge: time.Duration(l.MaxConnectionAge),
		SigningQueue:     l.SigningQueue, SigningQueueMaxWait: time.Duration(l.SigningQueueMaxWait), SigningCapacity: l.SigningCapacity,
	}, nil
}

// BundleEndpointFile configures the SPIFFE bundle endpoint.
type BundleEndpointFile struct {
	Address     string   `yaml:"address"`
	Profile     string   `yaml:"profile"`
	CertFile    string   `yaml:"cert_file"`
	KeyFile     string   `yaml:"key_file"`
	RefreshHint Duration `yaml:"refresh_hint"`
}

// UpstreamFile names an existing CA's certificate chain and key.
type UpstreamFile struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Server defaults that are not the server package's own.
const (
	DefaultMetricsAddress = "127.0.0.1:8088"
	MinX509SVIDTTL        = time.Minute
	MaxX509SVIDTTL        = 24 * time.Hour
	MaxRootTTL            = 100 * 365 * 24 * time.Hour
	MaxIntermediateTTL    = 10 * 365 * 24 * time.Hour
)

// LoadServer reads and validates a server config file. getenv is os.Getenv
// outside tests.
func LoadServer(path string, getenv func(string) string) (server.Config, slog.Level, error) {
	var f ServerFile
	if err := loadFile(path, &f); err != nil {
		return server.Config{}, 0, err
	}
	return f.Resolve(getenv)
}

// ParseServer is LoadServer on a reader, for tests and fuzzing.
func ParseServer(r io.Reader, getenv func(string) string) (server.Config, slog.Level, error) {
	var f ServerFile
	if err := decodeStrict("server config", r, &f); err != nil {
		return server.Config{}, 0, err
	}
	return f.Resolve(getenv)
}

// Resolve validates the file, applies defaults and reads the passphrase.
func (f *ServerFile) Resolve(getenv func(string) string) (server.Config, slog.Level, error) {
	cfg, level, err := f.resolveSettings()
	if err != nil {
		return cfg, 0, err
	}
	pass, err := readPassphrase(f.KeyPassphraseFile, getenv)
	if err != nil && (cfg.KeyManagerURI == "" || f.KeyPassphraseFile != "") {
		return cfg, 0, err
	}
	cfg.KeyPassphrase = pass
	if f.UpstreamAuthority != nil {
		if cfg.Upstream, err = LoadUpstream(f.UpstreamAuthority.CertFile, f.UpstreamAuthority.KeyFile, pass); err != nil {
			return cfg, 0, err
		}
	}
	if err := ValidateRootSchedule(cfg); err != nil {
		return cfg, 0, err
	}
	return cfg, level, nil
}

// LoadServerSettings reads a server config file without its secrets: no
// passphrase is read and an upstream authority comes without its key (its
// certificate chain only). The root schedule is not checked. For tools that
// reason about the config, such as `ca drill`.
func LoadServerSettings(path string) (server.Config, error) {
	var f ServerFile
	if err := loadFile(path, &f); err != nil {
		return server.Config{}, err
	}
	cfg, _, err := f.resolveSettings()
	if err != nil {
		return cfg, err
	}
	if up := f.UpstreamAuthority; up != nil {
		chain, err := ReadPEMCertificates(up.CertFile)
		if err != nil {
			return cfg, fieldErr("upstream_authority.cert_file", "%v", err)
		}
		cfg.Upstream = &ca.Upstream{Chain: chain}
	}
	return cfg, nil
}

// resolveSettings is everything Resolve does that needs no secret.
func (f *ServerFile) resolveSettings() (server.Config, slog.Level, error) {
	var cfg server.Config
	td, err := spiffeid.TrustDomainFromString(f.TrustDomain)
	if f.TrustDomain == "" {
		return cfg, 0, fieldErr("trust_domain", "is required")
	}
	if err != nil || strings.Contains(f.TrustDomain, "/") {
		return cfg, 0, fieldErr("trust_domain", "%q is not a valid trust domain name (lowercase letters, digits, '.', '-', '_')", f.TrustDomain)
	}
	if f.DataDir == "" {
		return cfg, 0, fieldErr("data_dir", "is required")
	}
	level, err := ParseLogLevel(f.LogLevel)
	if err != nil {
		return cfg, 0, err
	}
	cfg = server.Config{
		TrustDomain:       td,
		DataDir:           f.DataDir,
		AgentAPIAddr:      orDefault(f.AgentAPIAddress, server.DefaultAgentAPIAddr),
		AdminSocket:       f.AdminSocket,
		MetricsAddr:       orDefault(f.MetricsAddress, DefaultMetricsAddress),
		StatusAddr:        f.StatusAddress,
		DefaultSVIDTTL:    durationOr(f.X509SVIDTTL, server.DefaultX509SVIDTTL),
		DefaultJWTTTL:     time.Duration(f.JWTSVIDTTL),
		AgentSVIDTTL:      durationOr(f.AgentSVIDTTL, server.DefaultAgentSVIDTTL),
		KeyType:           orDefault(f.CAKeyType, "ec-p256"),
		RootTTL:           durationOr(f.RootTTL, 365*24*time.Hour),
		RootPrepareBefore: time.Duration(f.RootPrepareBefore),
		IntermediateTTL:   durationOr(f.IntermediateTTL, 24*time.Hour),
		MaxSVIDTTL:        time.Duration(f.MaxX509SVIDTTL),
		AgentLiveness:     time.Duration(f.AgentLiveness),
	}
	if cfg.Limits, err = f.Limits.resolve(); err != nil {
		return cfg, 0, err
	}
	if cfg.Etcd, err = f.Datastore.resolve(); err != nil {
		return cfg, 0, err
	}
	if cfg.NodeAttestors, err = f.NodeAttestors.resolve(); err != nil {
		return cfg, 0, err
	}
	if cfg.Audit, err = f.Audit.resolve(); err != nil {
		return cfg, 0, err
	}
	if f.ReplicaID != "" {
		if err := ca.CheckReplicaID(f.ReplicaID); err != nil {
			return cfg, 0, fieldErr("replica_id", "%v", err)
		}
		cfg.ReplicaID = f.ReplicaID
	}
	if f.MetricsAddress == "off" {
		cfg.MetricsAddr = ""
	}
	if err := ValidateServer(&cfg); err != nil {
		return cfg, 0, err
	}
	cfg.KeyManagerURI = f.KeyManagerURI
	if cfg.KeyManagerURI != "" && !strings.HasPrefix(cfg.KeyManagerURI, "pkcs11:") {
		return cfg, 0, fieldErr("key_manager_uri", "must be a pkcs11: URI (or empty for encrypted key files)")
	}
	if be := f.BundleEndpoint; be != nil {
		if be.Address == "" {
			return cfg, 0, fieldErr("bundle_endpoint.address", "is required")
		}
		switch be.Profile {
		case "", "https_spiffe":
		case "https_web":
			if be.CertFile == "" || be.KeyFile == "" {
				return cfg, 0, fieldErr("bundle_endpoint", "https_web needs cert_file and key_file")
			}
			if err := safefile.CheckPrivateFile(be.KeyFile); err != nil {
				return cfg, 0, fieldErr("bundle_endpoint.key_file", "%v", err)
			}
		default:
			return cfg, 0, fieldErr("bundle_endpoint.profile", "%q is not https_spiffe or https_web", be.Profile)
		}
		if d := time.Duration(be.RefreshHint); d != 0 && (d < time.Second || d > 7*24*time.Hour) {
			return cfg, 0, fieldErr("bundle_endpoint.refresh_hint", "%s is out of range (1s to 168h)", d)
		}
		cfg.BundleEndpoint = &server.BundleEndpointConfig{Addr: be.Address, Profile: orDefault(be.Profile, "https_spiffe"),
			CertFile: be.CertFile, KeyFile: be.KeyFile, RefreshHint: time.Duration(be.RefreshHint)}
	}
	return cfg, level, nil
}

// ValidateServer checks the values of a server config, file-loaded or from
// dev-mode flags, naming the config key at fault.
func ValidateServer(cfg *server.Config) error {
	if cfg.DefaultSVIDTTL < MinX509SVIDTTL || cfg.DefaultSVIDTTL > MaxX509SVIDTTL {
		return fieldErr("x509_svid_ttl", "%s is out of range (%s to %s)", cfg.DefaultSVIDTTL, MinX509SVIDTTL, MaxX509SVIDTTL)
	}
	if cfg.AgentSVIDTTL < MinX509SVIDTTL || cfg.AgentSVIDTTL > 30*24*time.Hour {
		return fieldErr("agent_svid_ttl", "%s is out of range (1m to 720h)", cfg.AgentSVIDTTL)
	}
	if _, _, err := keymanager.KeyAlgorithm(cfg.KeyType); err != nil {
		return fieldErr("ca_key_type", "%q is not one of ec-p256, ec-p384, rsa-2048, rsa-4096", cfg.KeyType)
	}
	if cfg.MaxSVIDTTL == 0 {
		cfg.MaxSVIDTTL = max(cfg.DefaultSVIDTTL, cfg.AgentSVIDTTL)
	}
	if cfg.MaxSVIDTTL < cfg.DefaultSVIDTTL || cfg.MaxSVIDTTL < cfg.AgentSVIDTTL || cfg.MaxSVIDTTL > MaxX509SVIDTTL {
		return fieldErr("max_x509_svid_ttl", "%s must be at least x509_svid_ttl (%s) and agent_svid_ttl (%s), and at most %s",
			cfg.MaxSVIDTTL, cfg.DefaultSVIDTTL, cfg.AgentSVIDTTL, MaxX509SVIDTTL)
	}
	if cfg.AgentLiveness != 0 && cfg.AgentLiveness < time.Minute {
		return fieldErr("agent_liveness", "%s is too short (at least 1m: agents report every few seconds, recorded every 5s)", cfg.AgentLiveness)
	}
	if cfg.DefaultJWTTTL != 0 && (cfg.DefaultJWTTTL < MinX509SVIDTTL || cfg.DefaultJWTTTL > cfg.MaxSVIDTTL) {
		return fieldErr("jwt_svid_ttl", "%s is out of range (%s to max_x509_svid_ttl, %s)", cfg.DefaultJWTTTL, MinX509SVIDTTL, cfg.MaxSVIDTTL)
	}
	// Upper bounds keep every sum and product of these durations far from
	// overflowing (2*intermediate_ttl, now + root_ttl).
	for _, b := range []struct {
		key      string
		v, limit time.Duration
	}{{"root_ttl", cfg.RootTTL, MaxRootTTL}, {"intermediate_ttl", cfg.IntermediateTTL, MaxIntermediateTTL}, {"agent_liveness", cfg.AgentLiveness, 30 * 24 * time.Hour}} {
		if b.v > b.limit {
			return fieldErr(b.key, "%s is longer than the limit of %s", b.v, b.limit)
		}
	}
	// The next intermediate takes over while the active one can still sign a
	// max-TTL SVID, and is prepared at half of its life: both fit only if an
	// intermediate lives at least twice the longest SVID.
	if cfg.IntermediateTTL < 2*cfg.MaxSVIDTTL {
		return fieldErr("intermediate_ttl", "%s cannot give every SVID its full lifetime: it must be at least twice the longest SVID TTL (%s, from x509_svid_ttl, agent_svid_ttl and max_x509_svid_ttl); raise intermediate_ttl to %s or lower those",
			cfg.IntermediateTTL, cfg.MaxSVIDTTL, 2*cfg.MaxSVIDTTL)
	}
	if cfg.RootTTL < 2*cfg.IntermediateTTL {
		return fieldErr("root_ttl", "%s must be at least twice intermediate_ttl (%s)", cfg.RootTTL, cfg.IntermediateTTL)
	}
	return nil
}

// ValidateRootSchedule refuses a root schedule in which the next root could
// not take over in time (see ca.RootSchedule), naming the key to change. An
// upstream authority's root is rotated upstream: nothing to check.
func ValidateRootSchedule(cfg server.Config) error {
	if cfg.Upstream != nil {
		return nil
	}
	if cfg.RootPrepareBefore < 0 {
		return fieldErr("root_prepare_before", "%s is negative", cfg.RootPrepareBefore)
	}
	var se *ca.ScheduleError
	if err := cfg.RootSchedule().Validate(); errors.As(err, &se) {
		return fieldErr(se.Field, "%s", se.Reason)
	} else if err != nil {
		return err
	}
	return nil
}

func readPassphrase(file string, getenv func(string) string) ([]byte, error) {
	if file != "" {
		if err := safefile.CheckPrivateFile(file); err != nil {
			return nil, fieldErr("key_passphrase_file", "%v", err)
		}
		raw, err := os.ReadFile(file) //nolint:gosec // an operator-chosen path
		if err != nil {
			return nil, fieldErr("key_passphrase_file", "%v", err)
		}
		pass := strings.TrimRight(string(raw), "\r\n")
		if pass == "" {
			return nil, fieldErr("key_passphrase_file", "%s is empty", file)
		}
		return []byte(pass), nil
	}
	if v := getenv(PassphraseEnv); v != "" {
		return []byte(v), nil
	}
	return nil, errors.New("config: no CA key passphrase: set " + PassphraseEnv + " or key_passphrase_file")
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func durationOr(d Duration, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return time.Duration(d)
}
