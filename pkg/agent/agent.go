package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/attest/k8s"
	"github.com/shortleaf/shortleaf/attest/unix"
	"github.com/shortleaf/shortleaf/pkg/clock"
	"github.com/shortleaf/shortleaf/pkg/safefile"
	"github.com/shortleaf/shortleaf/pkg/telemetry"
	"github.com/shortleaf/shortleaf/pkg/uds"
	"github.com/shortleaf/shortleaf/pkg/workloadapi"
	agentv1 "github.com/shortleaf/shortleaf/proto/agent/v1"
)

// Config configures an agent. Zero values take the documented defaults.
type Config struct {
	// ServerAddrs are the host:port addresses of the server's agent API:
	// one, or one per replica, or a DNS name resolving to every replica.
	ServerAddrs []string
	TrustDomain spiffeid.TrustDomain
	// TrustBundle authenticates the server at first attestation. Required
	// unless InsecureBootstrap is set or the data dir already holds a bundle.
	TrustBundle       []*x509.Certificate
	InsecureBootstrap bool
	// JoinToken is needed only when the data dir holds no valid agent SVID.
	JoinToken string
	// NodeAttestor, when set, attests the node instead of a join token
	// (x509pop, k8s_psat, tpm), whenever the agent holds no valid agent
	// SVID: at first start, after its SVID expired while the server was
	// out of reach, and after an eviction.
	NodeAttestor attest.NodeClient
	DataDir      string
	SocketPath   string        // default /run/shortleaf/agent.sock
	SyncInterval time.Duration // default 5s
	// SyncDeadline is how long the agent may go without a sync answer from
	// the server and still be ready (Ready); default DefaultSyncDeadline.
	SyncDeadline time.Duration
	// X509SVIDCacheMaxSize, when above 0, makes the agent obtain an entry's
	// X.509-SVID only once a workload asks for it, and keep renewing the
	// most recently asked-for ones up to this many (a soft limit: the
	// identities of one fetch are all kept). 0: every entry's SVID is
	// obtained ahead, whether or not a workload asks.
	X509SVIDCacheMaxSize int
	// WorkloadAttestor defaults to Unix peer credentials, plus Kubernetes
	// when Kubernetes is set.
	WorkloadAttestor workloadapi.Attestor
	// Kubernetes, when set, adds the k8s selectors of callers that run in
	// a pod on this node (read from the kubelet).
	Kubernetes *k8s.AttestorConfig
	// WorkloadAPI bounds the connections local processes may hold.
	WorkloadAPI workloadapi.Limits
	// MaxExecutableHashSize bounds the executables hashed for unix:sha256;
	// default unix.DefaultMaxHashSize.
	MaxExecutableHashSize int64
	Clock                 clock.Clock
	Logger                *slog.Logger
	Registry              prometheus.Registerer
}

// Defaults.
const (
	// DefaultSocketPath is under /run, not /tmp: a directory in /tmp could
	// be created first by another user (uds.Listen refuses one it does not own).
	DefaultSocketPath   = "/run/shortleaf/agent.sock"
	DefaultSyncInterval = 5 * time.Second
	DefaultSyncDeadline = time.Minute
	rpcTimeout          = 30 * time.Second
	shutdownGrace       = 5 * time.Second
)

// Agent is a running node agent.
type Agent struct {
	cfg     Config
	servers *serverAddrs
	store   storage
	cache   *cache
	metrics *telemetry.Agent

	mu           sync.Mutex
	svidChain    []*x509.Certificate // the agent's own SVID
	tlsCert      *tls.Certificate
	agentRenewAt time.Time
	agentTainted bool // its signer is tainted and its replacement is scheduled

	conn   *grpc.ClientConn
	client agentv1.AgentAPIClient
	jwts   jwtCache
	// check records why the main connection's last handshake refused the
	// server.
	check serverCheck

	// Used by the manage loop only: whether the join token was presented in
	// this process (a refused identity is re-attested once, with a token not
	// yet tried), and whether the first sync has completed.
	tokenTried bool
	synced     bool
	// lastSync is when the server last answered a sync (Unix nanoseconds),
	// read by Ready and the metrics.
	lastSync atomic.Int64

	// Used by the manage loop only, for the server's signing queue: whether
	// its last answer said it was busy (renew early), the most CSRs a pass
	// sends while it sheds (0: no bound), and when a deferral was last
	// logged.
	serverBusy   bool
	issueWindow  int
	busyLoggedAt time.Time

	// Used by the manage loop only: the entries revision of the last
	// complete sync, and the foreign trust domains its entries federate with.
	entriesRevision uint64
	federatedTDs    []string
	// stream is the open Sync stream, nil when none; syncWake wakes the
	// manage loop when it has received a message.
	stream   *syncStream
	syncWake chan struct{}

	lis       net.Listener
	wl        *grpc.Server
	unlock    func() // releases the data dir's lock
	closeOnce sync.Once
}

// New loads the agent's stored identity and opens the Workload API socket.
// It fails when there is neither a usable stored SVID nor a join token.
func New(_ context.Context, cfg Config) (*Agent, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("agent: trust_domain is required")
	}
	if len(cfg.ServerAddrs) == 0 {
		return nil, errors.New("agent: server_address is required")
	}
	for _, addr := range cfg.ServerAddrs {
		if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
			return nil, fmt.Errorf("agent: server_address: %q is not host:port", addr)
		}
	}
	if cfg.DataDir == "" {
		return nil, errors.New("agent: data_dir is required")
	}
	if cfg.SocketPath == "" {
		cfg.SocketPath = DefaultSocketPath
	}
	if cfg.SyncInterval == 0 {
		cfg.SyncInterval = DefaultSyncInterval
	}
	if cfg.SyncDeadline == 0 {
		cfg.SyncDeadline = max(DefaultSyncDeadline, 3*cfg.SyncInterval)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: create data dir: %w", err)
	}
	if err := safefile.CheckPrivateDir(cfg.DataDir); err != nil {
		return nil, fmt.Errorf("agent: data_dir: %w", err)
	}
	unlock, err := safefile.LockDir(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			unlock()
		}
	}()
	a := &Agent{cfg: cfg, servers: newServerAddrs(cfg.ServerAddrs), store: storage{dir: cfg.DataDir}, cache: newCache(cfg.TrustDomain), unlock: unlock, syncWake: make(chan struct{}, 1)}
	a.cache.onDemand(cfg.X509SVIDCacheMaxSize, a.syncWake, cfg.Clock.Now)
	a.metrics = telemetry.NewAgent(cfg.Registry, func() (int, int) { return a.cache.svidCounts(a.cfg.Clock.Now()) })
	a.metrics.WatchSync(cfg.Registry, a.LastSync)
	if a.cfg.WorkloadAttestor == nil {
		ua := unix.New()
		ua.Logger = cfg.Logger
		if cfg.MaxExecutableHashSize > 0 {
			ua.MaxHashSize = cfg.MaxExecutableHashSize
		}
		wa := unixAttestor{a: ua, cache: a.cache}
		if cfg.Kubernetes != nil {
			if wa.k8s, err = k8s.NewAttestor(*cfg.Kubernetes); err != nil {
				return nil, fmt.Errorf("agent: %w", err)
			}
		}
		a.cfg.WorkloadAttestor = wa
	}
	if err := a.restore(); err != nil {
		if !a.canAttest() {
			return nil, fmt.Errorf("%w; to attest again, restart the agent with a new --join-token", err)
		}
		cfg.Logger.Warn("the stored identity is unusable; attesting again", slog.String("attestor", a.attestorName()), slog.Any("error", err))
		a.svidChain, a.tlsCert = nil, nil
	}
	if a.tlsCert == nil {
		if !a.canAttest() {
			return nil, ErrNoIdentity
		}
		if len(cfg.TrustBundle) == 0 && !cfg.InsecureBootstrap {
			return nil, errors.New("agent: trust_bundle_path is required for the first attestation (or insecure_bootstrap: true, dev only)")
		}
		if len(cfg.TrustBundle) > 0 {
			a.cache.setBundle(cfg.TrustBundle, 0)
		}
	}
	if cfg.InsecureBootstrap && a.tlsCert == nil {
		cfg.Logger.Warn("insecure_bootstrap: the server is not authenticated during attestation; use for development only")
	}
	raiseFileLimit(cfg.Logger)
	lis, err := uds.Listen(cfg.SocketPath, 0o777)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a.lis = cfg.WorkloadAPI.Listener(lis, func(reason string) { a.metrics.WorkloadRefusals.WithLabelValues(reason).Inc() })
	a.wl = workloadapi.NewGRPCServer(workloadapi.New(workloadapi.Config{
		Source: a.cache, JWT: a, Attestor: a.cfg.WorkloadAttestor, Logger: cfg.Logger, Metrics: a.metrics,
	}), cfg.WorkloadAPI)
	ok = true
	return a, nil
}

// unixAttestor adapts the unix attestor to workloadapi.Attestor; it reads
// /proc only while an entry of this agent uses unix:path or unix:sha256,
// and hashes executables only for the latter.
type unixAttestor struct {
	a     *unix.Attestor
	cache *cache
	// k8s, when set, adds the caller's k8s selectors.
	k8s *k8s.Attestor
}

func (u unixAttestor) Attest(ctx context.Context, c uds.PeerCred) ([]attest.Selector, error) {
	path, hash := u.cache.executableSelectors()
	sels, err := u.a.Attest(ctx, unix.Caller{PID: c.PID, UID: c.UID, GID: c.GID, Exe: c.Exe, Running: c.Running},
		unix.Options{Path: path, Hash: hash})
	if err != nil || u.k8s == nil {
		return sels, err
	}
	more, err := u.k8s.Attest(ctx, c.PID, c.Running)
	if err != nil {
		return nil, err
	}
	return append(sels, more...), nil
}

// restore loads a stored identity that is still valid.
func (a *Agent) restore() error {
	if n, err := safefile.RemoveTemps(a.cfg.DataDir); err != nil {
		return fmt.Errorf("agent: %w", err)
	} else if n > 0 {
		a.cfg.Logger.Info("removed temporary files left by a crash", slog.Int("files", n))
	}
	key, p, fellBack, err := a.store.load()
	if errors.Is(err, errNoIdentity) {
		return nil
	}
	if err != nil {
		return err
	}
	if fellBack {
		a.cfg.Logger.Warn("the stored identity was unusable; resumed with the previous one")
	}
	bundle, err := parseCerts(p.Bundle)
	if err != nil {
		return fmt.Errorf("agent: stored bundle: %w", err)
	}
	if len(bundle) > 0 {
		a.cache.setBundle(bundle, p.BundleSequence)
	}
	chain, err := parseCerts(p.SVIDChain)
	if err != nil {
		return fmt.Errorf("agent: stored SVID is unreadable: %w", err)
	}
	if len(chain) == 0 {
		return errors.New("agent: stored SVID is empty")
	}
	if !a.cfg.Clock.Now().Before(chain[0].NotAfter) {
		a.cfg.Logger.Warn("stored agent SVID has expired; attesting again", slog.Time("not_after", chain[0].NotAfter))
		return nil
	}
	a.setSVID(key, chain)
	a.cfg.Logger.Info("resumed with stored agent SVID", slog.String("agent_id", a.ID()), slog.Time("not_after", chain[0].NotAfter))
	return nil
}

// ID is the agent's SPIFFE ID, or "" before attestation.
func (a *Agent) ID() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.svidChain) == 0 || len(a.svidChain[0].URIs) == 0 {
		return ""
	}
	return a.svidChain[0].URIs[0].String()
}

// SocketPath is the Workload API socket.
func (a *Agent) SocketPath() string { return a.cfg.SocketPath }

func (a *Agent) setSVID(key any, chain []*x509.Certificate) {
	cert := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.svidChain, a.tlsCert, a.agentTainted = chain, cert, false
	a.agentRenewAt = RenewAt(a.cfg.Clock.Now(), chain[0].NotAfter)
}

func (a *Agent) currentCert() *tls.Certificate {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.tlsCert
}

func (a *Agent) bundleCerts() []*x509.Certificate {
	b, _ := a.cache.getBundle()
	return b
}

// Run serves the Workload API and keeps identities fresh until ctx is done.
func (a *Agent) Run(ctx context.Context) error {
	// Logged before the manage loop starts, so it precedes whatever that
	// loop logs (an attestation failure, "agent running").
	waitingFor := "the first sync with the server"
	if a.currentCert() == nil {
		waitingFor = "attestation with the join token, then the first sync"
	}
	a.cfg.Logger.Info("agent starting; the Workload API answers Unavailable until it is running",
		slog.String("waiting_for", waitingFor), slog.String("socket", a.cfg.SocketPath), slog.String("server", a.servers.String()))
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := a.wl.Serve(a.lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("agent: workload API: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		defer a.stopWorkloadAPI()
		return a.manage(gctx)
	})
	return g.Wait()
}

func (a *Agent) stopWorkloadAPI() {
	done := make(chan struct{})
	go func() { a.wl.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(shutdownGrace):
		a.wl.Stop()
	}
}

// Close releases the socket and the server connection. It is idempotent.
func (a *Agent) Close() error {
	a.closeOnce.Do(func() {
		a.wl.Stop()
		_ = a.lis.Close()
		if a.conn != nil {
			_ = a.conn.Close()
		}
		a.unlock()
	})
	return nil
}
