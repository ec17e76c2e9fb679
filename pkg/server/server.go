package server

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/pkg/api"
	"github.com/shortleaf/shortleaf/pkg/audit"
	"github.com/shortleaf/shortleaf/pkg/bundleendpoint"
	"github.com/shortleaf/shortleaf/pkg/clock"
	"github.com/shortleaf/shortleaf/pkg/datastore"
	"github.com/shortleaf/shortleaf/pkg/entryfeed"
	"github.com/shortleaf/shortleaf/pkg/federation"
	"github.com/shortleaf/shortleaf/pkg/keymanager"
	"github.com/shortleaf/shortleaf/pkg/rpclimit"
	"github.com/shortleaf/shortleaf/pkg/safefile"
	"github.com/shortleaf/shortleaf/pkg/signqueue"
	"github.com/shortleaf/shortleaf/pkg/telemetry"
	"github.com/shortleaf/shortleaf/pkg/uds"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
	agentv1 "github.com/shortleaf/shortleaf/proto/agent/v1"
)

// Config configures a server. Zero values take the documented defaults.
type Config struct {
	TrustDomain  spiffeid.TrustDomain
	DataDir      string
	AgentAPIAddr string // default 127.0.0.1:8081; ":0" picks a port
	AdminSocket  string // default <DataDir>/admin.sock
	MetricsAddr  string // empty: no metrics listener
	// StatusAddr, when set, serves the read-only status page there.
	StatusAddr     string
	DefaultSVIDTTL time.Duration // default 5m
	DefaultJWTTTL  time.Duration // default 5m (at most MaxSVIDTTL)
	AgentSVIDTTL   time.Duration // default 1h
	KeyType        string        // default ec-p256
	RootTTL        time.Duration // default 1 year
	// RootPrepareBefore is how long before the root's expiry its successor
	// is prepared; default a third of RootTTL.
	RootPrepareBefore time.Duration
	IntermediateTTL   time.Duration // default 24h; JWT signing keys live as long
	// MaxSVIDTTL is the longest SVID lifetime the CA gives in full (entries
	// may not ask for more). Default: the longer of DefaultSVIDTTL and
	// AgentSVIDTTL. IntermediateTTL must be at least twice as long.
	MaxSVIDTTL time.Duration
	// RotationInterval is how often the key schedule is checked; default 5s.
	RotationInterval time.Duration
	// AgentLiveness is how recently an agent must have synced to count as live
	// for root activation and revocation; default 10m.
	AgentLiveness time.Duration
	// Etcd, when set, keeps the datastore on that etcd cluster instead of
	// the bbolt file DataDir/datastore.db; several servers may then share
	// it as replicas of one trust domain.
	Etcd *datastore.EtcdConfig
	// ReplicaID names this server among the replicas sharing the datastore;
	// default the ID kept in DataDir/replica_id, made at first start
	// ("local" on bbolt, a random one on etcd).
	ReplicaID string
	// NodeAttestors are the node attestors agents may use besides join
	// tokens, by type (x509pop, k8s_psat, tpm).
	NodeAttestors map[string]attest.NodeServer
	// Upstream, when set, signs the intermediates instead of a self-signed root.
	Upstream *ca.Upstream
	// BundleEndpoint, when set, serves the SPIFFE bundle to other trust domains.
	BundleEndpoint *BundleEndpointConfig
	// Limits bound what clients may make the server do and hold.
	Limits Limits
	// Audit configures the audit log (on unless Disabled).
	Audit AuditConfig
	// KeyManagerURI, when set, keeps CA keys in that KMS (pkcs11:...) instead
	// of encrypted files under DataDir/keys.
	KeyManagerURI string
	// KeyPassphrase encrypts CA key files. Empty is allowed only when
	// InsecureUnencryptedKeys is set (dev mode) or keys live in a KMS.
	KeyPassphrase           []byte
	InsecureUnencryptedKeys bool
	Clock                   clock.Clock
	Logger                  *slog.Logger
	// Registry receives the server's metrics; default a new registry.
	Registry *prometheus.Registry
}

// BundleEndpointConfig configures the SPIFFE bundle endpoint.
type BundleEndpointConfig struct {
	Addr string
	// Profile is https_spiffe (the server's own SVID) or https_web.
	Profile string
	// CertFile and KeyFile are the https_web certificate.
	CertFile, KeyFile string
	// RefreshHint tells consumers how often to poll; default 5m.
	RefreshHint time.Duration
}

// AuditConfig configures the audit log. Zero values take audit's defaults.
type AuditConfig struct {
	Disabled bool
	// Dir is where the log's files are; default <DataDir>/audit.
	Dir                string
	MaxFileSize        int64
	MaxFileAge         time.Duration
	MaxTotalSize       int64
	MaxAge             time.Duration
	CheckpointInterval time.Duration
}

// Defaults.
const (
	DefaultAgentAPIAddr     = "127.0.0.1:8081"
	DefaultX509SVIDTTL      = 5 * time.Minute
	DefaultJWTSVIDTTL       = 5 * time.Minute
	DefaultAgentSVIDTTL     = time.Hour
	serverSVIDTTL           = time.Hour
	defaultRotationInterval = 5 * time.Second
	adminSocketName         = "admin.sock"
	datastoreFileName       = "datastore.db"
	keysDirName             = "keys"
	auditDirName            = "audit"
	shutdownGrace           = 5 * time.Second
	serverSVIDPathSegment   = "shortleaf"
)

// store is what the server's parts need of the datastore; both backends,
// datastore.Bolt and datastore.Etcd, have it.
type store interface {
	api.AgentStore
	entryfeed.Source
	api.AdminStore
	api.FederationStore
	federation.Store
	ca.Journal
	PurgeExpiredJoinTokens(ctx context.Context, now time.Time) (int, error)
	Close() error
}

// openStore opens the configured datastore. On etcd the server joins the
// cluster as replica replicaID; the loss of its lease closes lockLost.
func openStore(ctx context.Context, cfg Config) (st store, lockLost <-chan struct{}, err error) {
	if cfg.Etcd == nil {
		st, err := datastore.Open(filepath.Join(cfg.DataDir, datastoreFileName))
		return st, nil, err
	}
	ds, err := datastore.OpenEtcd(ctx, *cfg.Etcd)
	if err != nil {
		return nil, nil, err
	}
	wait := cfg.Etcd.LockWait
	if wait <= 0 {
		wait = ds.LockTTL() + 5*time.Second
	}
	leave, lost, err := ds.JoinCluster(ctx, cfg.ReplicaID, wait)
	if err != nil {
		_ = ds.Close()
		return nil, nil, err
	}
	return replicaOnEtcd{Etcd: ds, leave: leave}, lost, nil
}

// replicaOnEtcd leaves the cluster before closing the client.
type replicaOnEtcd struct {
	*datastore.Etcd
	leave func()
}

func (r replicaOnEtcd) Close() error {
	r.leave()
	return r.Etcd.Close()
}

// replicaIDFile keeps the replica ID made at first start.
const replicaIDFile = "replica_id"

// StoredReplicaID is the replica ID a server with cfg runs as, without
// making one: the configured one, the one kept in the data dir, or the
// single server's default.
func StoredReplicaID(cfg Config) string {
	if cfg.ReplicaID != "" {
		return cfg.ReplicaID
	}
	if raw, err := os.ReadFile(filepath.Join(cfg.DataDir, replicaIDFile)); err == nil {
		if id := strings.TrimSpace(string(raw)); ca.CheckReplicaID(id) == nil {
			return id
		}
	}
	return ca.DefaultReplicaID
}

// resolveReplicaID sets cfg.ReplicaID: the configured one, the one kept in
// the data dir, or a new one kept there ("local" on bbolt, so a server
// later moved to etcd keeps its keys; random on etcd).
func resolveReplicaID(cfg *Config) error {
	if cfg.ReplicaID != "" {
		if err := ca.CheckReplicaID(cfg.ReplicaID); err != nil {
			return fmt.Errorf("server: replica_id: %w", err)
		}
		return nil
	}
	path := filepath.Join(cfg.DataDir, replicaIDFile)
	raw, err := os.ReadFile(path) //nolint:gosec // a file of the data dir, named here
	switch {
	case err == nil:
		cfg.ReplicaID = strings.TrimSpace(string(raw))
		if err := ca.CheckReplicaID(cfg.ReplicaID); err != nil {
			return fmt.Errorf("server: %s: %w", path, err)
		}
		return nil
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("server: %w", err)
	}
	cfg.ReplicaID = ca.DefaultReplicaID
	if cfg.Etcd != nil {
		b := make([]byte, 4)
		_, _ = rand.Read(b)
		cfg.ReplicaID = "r" + hex.EncodeToString(b)
	}
	return safefile.Write(path, []byte(cfg.ReplicaID+"\n"))
}

// Server is a running shortleaf server.
type Server struct {
	cfg   Config
	store store
	// feed pushes entry changes to the agents' Sync streams.
	feed *entryfeed.Feed
	// lockLost is closed if the etcd server lock is lost (nil on bbolt);
	// leaseLost is set when that stopped the server.
	lockLost  <-chan struct{}
	leaseLost atomic.Bool
	ca        *ca.CA
	agentLis  net.Listener
	adminLis  net.Listener
	metricLis net.Listener
	agentSrv  *grpc.Server
	adminSrv  *grpc.Server
	httpSrv   *http.Server
	status    *statusPage
	tlsCert   *serverCertificate
	metrics   *telemetry.Server
	admin     *api.AdminService
	agentAPI  *api.AgentService
	signQueue *signqueue.Queue
	caMetrics *telemetry.CA
	auditLog  *audit.Log
	// auditCA is ca for the audit log's writer, which starts before it.
	auditCA   atomic.Pointer[ca.CA]
	poller    *federation.Poller
	bundleEP  *bundleendpoint.Server
	closers   []func() error
	closeOnce sync.Once
	// lastRootAlarm is when a blocked root rotation was last logged (rotate loop only).
	lastRootAlarm time.Time
	// auditedBundleSeq is the bundle sequence last recorded in the audit log (rotate loop only).
	auditedBundleSeq uint64
}

// New opens the datastore, loads or creates the CA and opens every listener.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if err := applyDefaults(&cfg); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("server: create data dir: %w", err)
	}
	if err := safefile.CheckPrivateDir(cfg.DataDir); err != nil {
		return nil, fmt.Errorf("server: data_dir: %w", err)
	}
	if len(cfg.KeyPassphrase) == 0 && !cfg.InsecureUnencryptedKeys && cfg.KeyManagerURI == "" {
		return nil, errors.New("server: a key passphrase is required (SHORTLEAF_KEY_PASSPHRASE or key_passphrase_file); only dev mode may store keys unencrypted")
	}
	if cfg.Etcd != nil && len(cfg.KeyPassphrase) == 0 && cfg.KeyManagerURI == "" {
		return nil, errors.New("server: datastore.type etcd keeps the root key in etcd, sealed under the key passphrase, so that every replica can sign " +
			"its intermediates: set a key passphrase (SHORTLEAF_KEY_PASSPHRASE or key_passphrase_file) or keep keys in a KMS (key_manager_uri)")
	}
	if len(cfg.KeyPassphrase) == 0 && cfg.KeyManagerURI == "" {
		cfg.Logger.Warn("CA keys are stored UNENCRYPTED; use this for development only", slog.String("dir", filepath.Join(cfg.DataDir, keysDirName)))
	}
	s := &Server{cfg: cfg, caMetrics: telemetry.NewCA(cfg.Registry)}
	ok := false
	defer func() {
		if !ok {
			_ = s.Close()
		}
	}()
	unlock, err := safefile.LockDir(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	s.closers = append(s.closers, func() error { unlock(); return nil })
	if err := resolveReplicaID(&s.cfg); err != nil {
		return nil, err
	}
	cfg = s.cfg
	if s.store, s.lockLost, err = openStore(ctx, cfg); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	var leadership func() (int64, bool)
	var leaderID func(context.Context) (string, error)
	if r, ok := s.store.(replicaOnEtcd); ok {
		leadership, leaderID = r.Leadership, r.LeaderID
	}
	var keys ca.KeyManager
	if cfg.KeyManagerURI != "" {
		kms, err := keymanager.NewKMS(ctx, cfg.KeyManagerURI)
		if err != nil {
			return nil, fmt.Errorf("server: %w", err)
		}
		s.closers = append(s.closers, kms.Close)
		keys = kms
	} else {
		soft, err := keymanager.New(keymanager.Config{Dir: filepath.Join(cfg.DataDir, keysDirName), Passphrase: cfg.KeyPassphrase})
		if err != nil {
			return nil, fmt.Errorf("server: %w", err)
		}
		keys = soft
	}
	if err := s.openAuditLog(); err != nil {
		return nil, err
	}
	gate := cfg.propagationGate(s.store)
	s.ca, err = ca.New(ctx, ca.Config{
		TrustDomain: cfg.TrustDomain, KeyType: cfg.KeyType, RootTTL: cfg.RootTTL, IntermediateTTL: cfg.IntermediateTTL,
		MaxSVIDTTL: cfg.MaxSVIDTTL, RootPrepareBefore: cfg.RootPrepareBefore, RootGate: gate.Blockers, RootGateLead: gate.Lead(),
		Upstream: cfg.Upstream, Keys: keys, Journal: s.store, ReplicaID: cfg.ReplicaID, Leadership: leadership, Clock: cfg.Clock, Logger: cfg.Logger,
		OnTransition: func(t ca.Transition) {
			s.caMetrics.Transitions.WithLabelValues(string(t.Kind), t.What).Inc()
			s.auditTransition(t)
			if t.Kind == ca.KindIntermediate && s.tlsCert != nil && t.What == "activated" {
				s.tlsCert.refresh() // follow the new signer now, not at the next handshake
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	s.auditCA.Store(s.ca)
	if s.tlsCert, err = newServerCertificate(s.ca, cfg.Clock, min(serverSVIDTTL, cfg.MaxSVIDTTL), cfg.Logger); err != nil {
		return nil, err
	}
	s.metrics = telemetry.NewServer(cfg.Registry)
	s.agentSrv = grpc.NewServer(append(cfg.Limits.agentAPILimits().ServerOptions(s.countRefusal),
		grpc.Creds(credentials.NewTLS(s.agentTLSConfig())))...)
	s.feed = entryfeed.New(s.store, entryfeed.Config{Logger: cfg.Logger})
	queueCfg := cfg.Limits.signQueueConfig()
	queueCfg.Wait, queueCfg.Shed = s.metrics.SignQueueWait, s.metrics.SignQueueShed
	s.signQueue = signqueue.New(queueCfg)
	s.metrics.WatchSignQueue(cfg.Registry, s.signQueue.Len)
	s.agentAPI = api.NewAgentService(api.AgentConfig{
		CA: s.ca, Store: s.store, DefaultSVIDTTL: cfg.DefaultSVIDTTL, DefaultJWTTTL: cfg.DefaultJWTTTL, AgentSVIDTTL: cfg.AgentSVIDTTL,
		Clock: cfg.Clock, Logger: cfg.Logger, Metrics: s.metrics, Feed: s.feed, SignQueue: s.signQueue,
		AttestLimit: cfg.Limits.attestLimiter(), SignLimit: cfg.Limits.signLimiter(), NodeAttestors: cfg.NodeAttestors,
		Audit: s.auditor(),
	})
	agentv1.RegisterAgentAPIServer(s.agentSrv, s.agentAPI)
	s.metrics.WatchClockSkew(cfg.Registry, func() time.Duration { return s.agentAPI.MaxClockSkew(cfg.AgentLiveness) })
	s.adminSrv = grpc.NewServer(append(adminLimits().ServerOptions(s.countRefusal),
		grpc.Creds(uds.NewCredentials()), grpc.ChainUnaryInterceptor(api.AdminAuditInterceptor(s.auditor(), cfg.Clock, adminActor), adminUnaryCheck),
		grpc.ChainStreamInterceptor(adminStreamCheck))...)
	s.poller = federation.NewPoller(s.store, cfg.Clock, cfg.Logger)
	s.admin = api.NewAdminService(api.AdminConfig{
		Federation: s.store, Refresher: s.poller, BundleRefreshHint: bundleRefreshHint(cfg.BundleEndpoint),
		CA: s.ca, Lifecycle: s.ca, Store: s.store, DefaultSVIDTTL: cfg.DefaultSVIDTTL, DefaultJWTTTL: cfg.DefaultJWTTTL, MaxSVIDTTL: cfg.MaxSVIDTTL,
		AgentLiveness: cfg.AgentLiveness, ServerChain: s.tlsCert.presented, Journal: s.store, LeaderID: leaderID, Clock: cfg.Clock, Logger: cfg.Logger,
		Audit: s.auditor(), Actor: adminActor,
	})
	adminv1.RegisterAdminAPIServer(s.adminSrv, s.admin)
	healthpb.RegisterHealthServer(s.adminSrv, health.NewServer())

	if s.agentLis, err = net.Listen("tcp", cfg.AgentAPIAddr); err != nil {
		return nil, fmt.Errorf("server: agent API listener: %w", err)
	}
	s.agentLis = cfg.Limits.agentAPILimits().Listener(s.agentLis, rpclimit.ByRemoteIP, s.countRefusal)
	if s.adminLis, err = uds.Listen(cfg.AdminSocket, 0o600); err != nil {
		return nil, fmt.Errorf("server: admin socket: %w", err)
	}
	s.adminLis = adminLimits().Listener(s.adminLis, nil, s.countRefusal)
	if be := cfg.BundleEndpoint; be != nil {
		if s.bundleEP, err = s.newBundleEndpoint(be); err != nil {
			return nil, err
		}
	}
	if cfg.MetricsAddr != "" {
		if s.metricLis, err = net.Listen("tcp", cfg.MetricsAddr); err != nil {
			return nil, fmt.Errorf("server: metrics listener: %w", err)
		}
		s.httpSrv = &http.Server{Handler: telemetry.Handler(cfg.Registry, s.ready), ReadHeaderTimeout: 5 * time.Second}
	}
	if cfg.StatusAddr != "" {
		if s.status, err = s.newStatusPage(cfg.StatusAddr); err != nil {
			return nil, err
		}
	}
	ok = true
	return s, nil
}

func applyDefaults(cfg *Config) error {
	if cfg.TrustDomain.IsZero() {
		return errors.New("server: trust_domain is required")
	}
	if cfg.DataDir == "" {
		return errors.New("server: data_dir is required")
	}
	if cfg.AgentAPIAddr == "" {
		cfg.AgentAPIAddr = DefaultAgentAPIAddr
	}
	if cfg.AdminSocket == "" {
		cfg.AdminSocket = filepath.Join(cfg.DataDir, adminSocketName)
	}
	if cfg.DefaultSVIDTTL == 0 {
		cfg.DefaultSVIDTTL = DefaultX509SVIDTTL
	}
	if cfg.DefaultJWTTTL == 0 {
		cfg.DefaultJWTTTL = DefaultJWTSVIDTTL
	}
	if cfg.AgentSVIDTTL == 0 {
		cfg.AgentSVIDTTL = DefaultAgentSVIDTTL
	}
	if cfg.MaxSVIDTTL == 0 {
		cfg.MaxSVIDTTL = max(cfg.DefaultSVIDTTL, cfg.AgentSVIDTTL)
	}
	if cfg.RotationInterval == 0 {
		cfg.RotationInterval = defaultRotationInterval
	}
	if cfg.AgentLiveness == 0 {
		cfg.AgentLiveness = api.DefaultAgentLiveness
	}
	// A JWT-SVID is cut to its key's life like an X.509-SVID to its
	// intermediate's: keep the default within what the schedule guarantees.
	cfg.DefaultJWTTTL = min(cfg.DefaultJWTTTL, cfg.MaxSVIDTTL)
	if cfg.DefaultSVIDTTL > cfg.MaxSVIDTTL || cfg.AgentSVIDTTL > cfg.MaxSVIDTTL {
		return fmt.Errorf("server: max_x509_svid_ttl (%s) must be at least x509_svid_ttl (%s) and agent_svid_ttl (%s)",
			cfg.MaxSVIDTTL, cfg.DefaultSVIDTTL, cfg.AgentSVIDTTL)
	}
	cfg.Limits.applyDefaults()
	if cfg.Clock == nil {
		cfg.Clock = clock.Real
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	return nil
}

// agentTLSConfig asks for (but does not require) a client certificate: only
// AttestAgent may be called without one. A certificate that is sent must be
// an SVID chaining to the current bundle, checked on every handshake.
func (s *Server) agentTLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: s.tlsCert.get,
		ClientAuth:     tls.RequestClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyAgentPeer(cs, s.ca, s.cfg.Clock)
		},
	}
}

// countRefusal counts a request or connection refused by a limit.
func (s *Server) countRefusal(reason string) {
	s.metrics.Refusals.WithLabelValues(reason).Inc()
}

// propagationGate is the gate a new root waits on: the live agents in
// agents, and the bundle endpoint's federated consumers.
func (cfg *Config) propagationGate(agents api.AgentLister) *api.PropagationGate {
	return &api.PropagationGate{Agents: agents, Clock: cfg.Clock, AgentLiveness: cfg.AgentLiveness,
		BundleRefreshHint: bundleRefreshHint(cfg.BundleEndpoint)}
}

// RootSchedule is the root schedule cfg gives (defaults applied as the
// server applies them), for checking a config before starting.
func (cfg Config) RootSchedule() ca.RootSchedule {
	prepare := cfg.RootPrepareBefore
	if prepare == 0 {
		prepare = ca.DefaultRootPrepareBefore(cfg.RootTTL)
	}
	return ca.RootSchedule{TTL: cfg.RootTTL, PrepareBefore: prepare, IntermediateTTL: cfg.IntermediateTTL,
		MaxSVIDTTL: cfg.MaxSVIDTTL, GateLead: cfg.propagationGate(nil).Lead()}
}

// bundleRefreshHint is the refresh hint the endpoint publishes, 0 without one.
func bundleRefreshHint(be *BundleEndpointConfig) time.Duration {
	switch {
	case be == nil:
		return 0
	case be.RefreshHint == 0:
		return federation.DefaultRefreshHint
	default:
		return be.RefreshHint
	}
}

func (s *Server) newBundleEndpoint(be *BundleEndpointConfig) (*bundleendpoint.Server, error) {
	hint := bundleRefreshHint(be)
	cert := s.tlsCert.get
	switch be.Profile {
	case bundleendpoint.ProfileSPIFFE, "":
	case bundleendpoint.ProfileWeb:
		var err error
		if cert, err = bundleendpoint.LoadWebCertificate(be.CertFile, be.KeyFile); err != nil {
			return nil, fmt.Errorf("server: %w", err)
		}
	default:
		return nil, fmt.Errorf("server: bundle_endpoint.profile %q is not https_spiffe or https_web", be.Profile)
	}
	ep, err := bundleendpoint.New(bundleendpoint.Config{
		Addr: be.Addr, TrustDomain: s.cfg.TrustDomain, Certificate: cert, Logger: s.cfg.Logger, CRLs: s.ca.CRLs,
		Bundle: func() *spiffebundle.Bundle { return s.ca.SPIFFEBundle(hint) },
	})
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	return ep, nil
}

// BundleEndpointAddr is the bundle endpoint's address, or "".
func (s *Server) BundleEndpointAddr() string {
	if s.bundleEP == nil {
		return ""
	}
	return s.bundleEP.Addr()
}

// AgentAddr is the agent API's listening address.
func (s *Server) AgentAddr() string { return s.agentLis.Addr().String() }

// AdminSocket is the admin socket's path.
func (s *Server) AdminSocket() string { return s.cfg.AdminSocket }

// MetricsAddr is the metrics listener's address, or "".
func (s *Server) MetricsAddr() string {
	if s.metricLis == nil {
		return ""
	}
	return s.metricLis.Addr().String()
}

// CA exposes the authority, for dev mode and tests.
func (s *Server) CA() *ca.CA { return s.ca }

// Run serves until ctx is done or a listener fails, then stops gracefully.
func (s *Server) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return serveGRPC(s.agentSrv, s.agentLis) })
	g.Go(func() error { return serveGRPC(s.adminSrv, s.adminLis) })
	if s.httpSrv != nil {
		g.Go(func() error {
			if err := s.httpSrv.Serve(s.metricLis); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("server: metrics: %w", err)
			}
			return nil
		})
	}
	g.Go(func() error {
		<-gctx.Done()
		s.stop()
		return nil
	})
	g.Go(func() error { s.rotate(gctx); return nil })
	g.Go(func() error { s.housekeep(gctx); return nil })
	g.Go(func() error { s.agentAPI.RunLastSeenFlusher(gctx); return nil })
	g.Go(func() error { return s.feed.Run(gctx) })
	if s.lockLost != nil {
		g.Go(func() error {
			select {
			case <-s.lockLost:
				// Another process may run as this replica now; two must
				// not rotate one replica's keys, so this one stops, at
				// once: requests in flight wait on an etcd out of reach,
				// and the agents behind them should move to another
				// replica now rather than after a graceful drain.
				s.leaseLost.Store(true)
				return fmt.Errorf("server: %w (etcd out of reach for most of the lease); stopping", datastore.ErrReplicaLeaseLost)
			case <-gctx.Done():
				return nil
			}
		})
	}
	g.Go(func() error { return s.poller.Run(gctx) })
	if s.status != nil {
		g.Go(func() error { return s.status.run(gctx) })
	}
	if s.bundleEP != nil {
		g.Go(func() error { return s.bundleEP.Run(gctx) })
	}
	s.cfg.Logger.Info("server running", slog.String("trust_domain", s.cfg.TrustDomain.Name()), slog.String("replica_id", s.cfg.ReplicaID),
		slog.String("agent_api", s.AgentAddr()), slog.String("admin_socket", s.cfg.AdminSocket), slog.String("metrics", s.MetricsAddr()),
		slog.String("status_page", s.StatusURL()))
	// Listener errors caused by our own shutdown are not failures.
	if err := g.Wait(); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// rotate applies the key schedule every RotationInterval and refreshes the
// lifecycle metrics.
func (s *Server) rotate(ctx context.Context) {
	for {
		if err := s.ca.Rotate(ctx); err != nil {
			s.cfg.Logger.Error("CA rotation failed; retrying", slog.Any("error", err))
		}
		s.tlsCert.refresh()
		s.auditBundle()
		s.observeAuthorities(ctx)
		select {
		case <-ctx.Done():
			return
		case <-s.cfg.Clock.After(s.cfg.RotationInterval):
		}
	}
}

// housekeepingInterval is how often expired join tokens are purged.
const housekeepingInterval = time.Minute

// housekeep purges expired join tokens every housekeepingInterval, on the
// leader only.
func (s *Server) housekeep(ctx context.Context) {
	for {
		if s.ca.Leads() {
			s.purgeJoinTokens(ctx)
		}
		select {
		case <-ctx.Done():
			return
		case <-s.cfg.Clock.After(housekeepingInterval):
		}
	}
}

func (s *Server) purgeJoinTokens(ctx context.Context) {
	if n, err := s.store.PurgeExpiredJoinTokens(ctx, s.cfg.Clock.Now()); err != nil {
		s.cfg.Logger.Error("purging expired join tokens failed; retrying", slog.Any("error", err))
	} else if n > 0 {
		s.cfg.Logger.Info("purged expired join tokens", slog.Int("tokens", n))
	}
}

func (s *Server) observeAuthorities(ctx context.Context) {
	s.caMetrics.AuthorityNotAfter.Reset()
	earliest := map[[2]string]time.Time{}
	for _, a := range s.ca.Authorities() {
		k := [2]string{string(a.Kind), string(a.State)}
		if t, ok := earliest[k]; !ok || a.NotAfter.Before(t) {
			earliest[k] = a.NotAfter
		}
	}
	for k, t := range earliest {
		s.caMetrics.AuthorityNotAfter.WithLabelValues(k[0], k[1]).Set(float64(t.Unix()))
	}
	s.observeRootRotation(ctx)
	if next := s.ca.NextEvent(); !next.IsZero() {
		s.caMetrics.NextTransition.Set(float64(next.Unix()))
	}
	s.observeFederation(ctx)
	resp, err := s.admin.ListAuthorities(ctx, &adminv1.ListAuthoritiesRequest{})
	if err != nil {
		return
	}
	p := resp.GetPropagation()
	ratio := 1.0
	if p.GetLiveAgents() > 0 {
		ratio = float64(p.GetCurrentAgents()) / float64(p.GetLiveAgents())
	}
	s.caMetrics.Propagation.Set(ratio)
}

// observeFederation refreshes the federation metrics from the stored
// relationships (a handful: they are configured by hand).
func (s *Server) observeFederation(ctx context.Context) {
	feds, err := s.store.ListFederations(ctx)
	if err != nil {
		return
	}
	m := s.caMetrics
	m.FederationLastRefresh.Reset()
	m.FederationFailing.Reset()
	for _, f := range feds {
		last := 0.0
		if !f.LastRefresh.IsZero() {
			last = float64(f.LastRefresh.Unix())
		}
		m.FederationLastRefresh.WithLabelValues(f.TrustDomain).Set(last)
		failing := 0.0
		if f.LastError != "" {
			failing = 1
		}
		m.FederationFailing.WithLabelValues(f.TrustDomain).Set(failing)
	}
}

// rootAlarmInterval is how often a blocked root rotation is logged again.
const rootAlarmInterval = time.Hour

// observeRootRotation updates the root rotation metrics and, while the next
// root waits on the gate longer than the gate needs, logs what blocks it
// (hourly; as an error once the deadline has passed).
func (s *Server) observeRootRotation(ctx context.Context) {
	st := s.ca.RootRotation()
	now := s.cfg.Clock.Now()
	m := s.caMetrics
	m.RootTimeToExpiry.Set(st.RootNotAfter.Sub(now).Seconds())
	m.RootDeadline.Set(0)
	if !st.Deadline.IsZero() {
		m.RootDeadline.Set(float64(st.Deadline.Unix()))
	}
	if st.PreparedRootID == "" {
		m.RootGateBlocked.Set(0)
		m.RootGateBlockers.Set(0)
		return
	}
	waited := now.Sub(st.PreparedAt)
	m.RootGateBlocked.Set(waited.Seconds())
	m.RootGateBlockers.Set(float64(len(st.Blockers)))
	if waited < s.cfg.propagationGate(nil).Lead() || now.Sub(s.lastRootAlarm) < rootAlarmInterval {
		return
	}
	s.lastRootAlarm = now
	level := slog.LevelWarn
	if now.After(st.Deadline) {
		level = slog.LevelError
	}
	s.cfg.Logger.Log(ctx, level, "root rotation is blocked on the propagation gate: the agents and consumers listed do not hold the next root",
		slog.String("prepared_root_id", st.PreparedRootID), slog.Duration("waiting", waited.Round(time.Second)),
		slog.Time("deadline", st.Deadline), slog.Time("forced_at", st.ForceAt), slog.Time("root_not_after", st.RootNotAfter),
		slog.Int("blockers", len(st.Blockers)), slog.Any("blocking", st.FirstBlockers(20)))
}

func serveGRPC(srv *grpc.Server, lis net.Listener) error {
	if err := srv.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("server: %w", err)
	}
	return nil
}

func (s *Server) stop() {
	for _, srv := range []*grpc.Server{s.agentSrv, s.adminSrv} {
		if s.leaseLost.Load() {
			srv.Stop()
			continue
		}
		done := make(chan struct{})
		go func() { srv.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(shutdownGrace):
			srv.Stop()
		}
	}
	if s.httpSrv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		_ = s.httpSrv.Shutdown(ctx)
	}
}

// Close releases the listeners and the datastore. It is idempotent.
func (s *Server) Close() error {
	var err error
	s.closeOnce.Do(func() {
		if s.agentSrv != nil {
			s.agentSrv.Stop()
		}
		if s.adminSrv != nil {
			s.adminSrv.Stop()
		}
		if s.signQueue != nil {
			s.signQueue.Close()
		}
		if s.auditLog != nil {
			if cerr := s.auditLog.Close(); cerr != nil {
				s.cfg.Logger.Error("audit log: the final checkpoint was not written", slog.Any("error", cerr))
			}
		}
		if s.bundleEP != nil {
			_ = s.bundleEP.Close()
		}
		if s.status != nil {
			_ = s.status.close()
		}
		for _, l := range []net.Listener{s.agentLis, s.adminLis, s.metricLis} {
			if l != nil {
				_ = l.Close()
			}
		}
		if s.store != nil {
			err = s.store.Close()
		}
		for _, c := range s.closers {
			_ = c()
		}
	})
	return err
}
