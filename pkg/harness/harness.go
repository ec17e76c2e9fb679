package harness

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/shortleaf/shortleaf/pkg/adminclient"
	"github.com/shortleaf/shortleaf/pkg/agent"
	"github.com/shortleaf/shortleaf/pkg/audit"
	"github.com/shortleaf/shortleaf/pkg/server"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// TrustDomain is the harness's trust domain.
var TrustDomain = spiffeid.RequireTrustDomainFromString("example.org")

// Passphrase is for tests that want the real encrypted key path (WithPassphrase).
// The default is unencrypted keys: PBKDF2 with 600k rounds costs seconds per
// server under the race detector.
const Passphrase = "harness-passphrase"

// WithPassphrase makes the server encrypt its CA keys.
func WithPassphrase(c *server.Config) {
	c.KeyPassphrase = []byte(Passphrase)
	c.InsecureUnencryptedKeys = false
}

// Server is a running server.
type Server struct {
	*server.Server
	Config   server.Config
	Admin    *adminclient.Client
	Registry *prometheus.Registry
	stop     func()
	halt     func() error
	exited   chan struct{}
}

// ShortDir returns a fresh directory with a short path, for Unix sockets
// (whose paths are limited to 108 bytes), removed at the end of the test.
func ShortDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// StartServer starts a server on 127.0.0.1 with a random port; opts may
// change its config first.
func StartServer(t testing.TB, opts ...func(*server.Config)) *Server {
	t.Helper()
	cfg := server.Config{
		TrustDomain:             TrustDomain,
		DataDir:                 t.TempDir(),
		AgentAPIAddr:            "127.0.0.1:0",
		InsecureUnencryptedKeys: true,
		IntermediateTTL:         24 * time.Hour,
		Logger:                  TestLogger(t),
	}
	cfg.AdminSocket = filepath.Join(ShortDir(t), "admin.sock")
	for _, o := range opts {
		o(&cfg)
	}
	return startServer(t, cfg)
}

func startServer(t testing.TB, cfg server.Config) *Server {
	t.Helper()
	cfg.Registry = prometheus.NewRegistry()
	srv, err := server.New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start server: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	exited := make(chan struct{})
	var runErr error
	go func() {
		runErr = srv.Run(ctx)
		close(exited)
	}()
	admin, err := adminclient.Dial(srv.AdminSocket())
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Server: srv, Config: cfg, Admin: admin, Registry: cfg.Registry, exited: exited}
	var once sync.Once
	// halt stops the server once; only the call that stopped it reports
	// Run's error.
	halt := func() (stopped bool, err error) {
		once.Do(func() {
			_ = admin.Close()
			cancel()
			<-exited
			stopped, err = true, runErr
			bundle, _ := srv.CA().Bundle()
			_ = srv.Close()
			CheckAuditLog(t, cfg, bundle.X509Authorities())
		})
		return stopped, err
	}
	s.halt = func() error {
		_, err := halt()
		return err
	}
	s.stop = func() {
		if stopped, err := halt(); stopped && err != nil {
			t.Errorf("server stopped with error: %v", err)
		}
	}
	t.Cleanup(s.stop)
	return s
}

// CheckAuditLog verifies the audit log of a stopped server (every harness
// server's, at its stop): whatever a test did, the chain is whole, its
// checkpoints verify against roots, and it ends at a final checkpoint.
func CheckAuditLog(t testing.TB, cfg server.Config, roots []*x509.Certificate) {
	t.Helper()
	if cfg.Audit.Disabled {
		return
	}
	dir := cfg.AuditDir()
	now := time.Now()
	if cfg.Clock != nil {
		now = cfg.Clock.Now()
	}
	rep, err := audit.Verify(audit.VerifyOptions{Dir: dir, Roots: roots, Now: now})
	if err != nil {
		t.Errorf("audit verify: %v", err)
		return
	}
	for _, p := range rep.Problems {
		t.Errorf("audit log of the stopped server: %s", p)
	}
}

// Halt stops the server and returns what its Run returned, for a test in
// which the server is meant to fail (a replica cut off from etcd stops
// with datastore.ErrReplicaLeaseLost).
func (s *Server) Halt() error { return s.halt() }

// Exited is closed when the server's Run has returned, whether Stop or Halt
// stopped it or it stopped by itself.
func (s *Server) Exited() <-chan struct{} { return s.exited }

// Restart stops the server and starts it again on the same data dir and
// admin socket (the agent API gets a new port).
func (s *Server) Restart(t testing.TB) *Server {
	t.Helper()
	s.stop()
	return startServer(t, s.Config)
}

// Stop stops the server now.
func (s *Server) Stop() { s.stop() }

// NewJoinToken creates a join token and returns it with the agent ID it yields.
func (s *Server) NewJoinToken(t testing.TB) (token, agentID string) {
	t.Helper()
	resp, err := s.Admin.CreateJoinToken(context.Background(), &adminv1.CreateJoinTokenRequest{})
	if err != nil {
		t.Fatalf("create join token: %v", err)
	}
	return resp.GetToken(), resp.GetAgentId()
}

// CreateEntry registers an entry or fails the test.
func (s *Server) CreateEntry(t testing.TB, e *adminv1.Entry) *adminv1.Entry {
	t.Helper()
	out, err := s.Admin.CreateEntry(context.Background(), &adminv1.CreateEntryRequest{Entry: e})
	if err != nil {
		t.Fatalf("create entry %s: %v", e.GetSpiffeId(), err)
	}
	return out
}

// Agent is a running agent.
type Agent struct {
	*agent.Agent
	Config agent.Config
	stop   func()
}

// StartAgent attests a new agent to srv with a fresh join token and serves
// its Workload API on a new socket.
func StartAgent(t testing.TB, srv *Server, opts ...func(*agent.Config)) *Agent {
	t.Helper()
	token, _ := srv.NewJoinToken(t)
	bundle, _ := srv.CA().Bundle()
	cfg := agent.Config{
		ServerAddrs:  []string{srv.AgentAddr()},
		TrustDomain:  srv.Config.TrustDomain,
		TrustBundle:  bundle.X509Authorities(),
		JoinToken:    token,
		DataDir:      t.TempDir(),
		SocketPath:   filepath.Join(ShortDir(t), "agent.sock"),
		SyncInterval: 200 * time.Millisecond,
		Logger:       TestLogger(t).With(slog.String("component", "agent")),
	}
	for _, o := range opts {
		o(&cfg)
	}
	return RunAgent(t, cfg)
}

// RunAgent starts an agent with exactly cfg and waits until it is attested.
func RunAgent(t testing.TB, cfg agent.Config) *Agent {
	t.Helper()
	ag, err := agent.New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start agent: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ag.Run(ctx) }()
	a := &Agent{Agent: ag, Config: cfg}
	var once sync.Once
	a.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("agent stopped with error: %v", err)
			}
			_ = ag.Close()
		})
	}
	t.Cleanup(a.stop)
	deadline := time.Now().Add(10 * time.Second)
	for ag.ID() == "" {
		if time.Now().After(deadline) {
			t.Fatal("agent did not attest within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return a
}

// Stop stops the agent now.
func (a *Agent) Stop() { a.stop() }

// Addr is the Workload API address for go-spiffe's workloadapi.WithAddr.
func (a *Agent) Addr() string { return "unix://" + a.SocketPath() }

// TestLogger sends logs to t.Log at debug level, so a failing test shows them.
func TestLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}

// Eventually polls cond every 10ms until it holds, failing the test after
// timeout. Use it instead of sleeps wherever a test waits for the system.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
