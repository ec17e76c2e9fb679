package harness_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/shortleaf/shortleaf/ca/catest"
	"github.com/shortleaf/shortleaf/pkg/agent"
	"github.com/shortleaf/shortleaf/pkg/harness"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// agentConfig is an agent of srv with a fresh token, logging into logs.
func agentConfig(t *testing.T, srv *harness.Server, logs *harness.LogBuffer) agent.Config {
	t.Helper()
	token, _ := srv.NewJoinToken(t)
	bundle, _ := srv.CA().Bundle()
	return agent.Config{
		ServerAddrs: []string{srv.AgentAddr()}, TrustDomain: srv.Config.TrustDomain, TrustBundle: bundle.X509Authorities(),
		JoinToken: token, DataDir: t.TempDir(), SocketPath: filepath.Join(harness.ShortDir(t), "agent.sock"),
		SyncInterval: 200 * time.Millisecond,
		Logger:       slog.New(slog.NewJSONHandler(logs, nil)),
	}
}

// runUntilExit runs an agent that must stop by itself, and returns why.
func runUntilExit(t *testing.T, cfg agent.Config) error {
	t.Helper()
	ag, err := agent.New(context.Background(), cfg)
	if err != nil {
		return err
	}
	defer ag.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = ag.Run(ctx)
	if ctx.Err() != nil {
		t.Fatalf("the agent kept retrying a permanent error (%v)", err)
	}
	return err
}

func wantPermanent(t *testing.T, err error, wantIn ...string) {
	t.Helper()
	var perm *agent.PermanentError
	if !errors.As(err, &perm) {
		t.Fatalf("got %v, want a permanent error", err)
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") {
		t.Errorf("message is not one line: %q", msg)
	}
	for _, w := range wantIn {
		if !strings.Contains(msg, w) {
			t.Errorf("message %q does not say %q", msg, w)
		}
	}
}

// Errors no retry can cure end the agent with one line that says what to do.
func TestAgentStopsOnPermanentErrors(t *testing.T) {
	srv := harness.StartServer(t)

	t.Run("used join token", func(t *testing.T) {
		first := harness.StartAgent(t, srv)
		cfg := agentConfig(t, srv, &harness.LogBuffer{})
		cfg.JoinToken = first.Config.JoinToken
		wantPermanent(t, runUntilExit(t, cfg), "refused the join token", "--join-token", "already used")
	})
	t.Run("unknown join token", func(t *testing.T) {
		cfg := agentConfig(t, srv, &harness.LogBuffer{})
		cfg.JoinToken = "0123456789abcdef.notthesecret"
		wantPermanent(t, runUntilExit(t, cfg), "refused the join token")
	})
	t.Run("trust bundle that does not verify the server", func(t *testing.T) {
		cfg := agentConfig(t, srv, &harness.LogBuffer{})
		other, _ := catest.New(t).Bundle()
		cfg.TrustBundle = other.X509Authorities()
		wantPermanent(t, runUntilExit(t, cfg), "trust_bundle_path", "does not verify")
	})
	t.Run("trust domain mismatch", func(t *testing.T) {
		cfg := agentConfig(t, srv, &harness.LogBuffer{})
		cfg.TrustDomain = spiffeid.RequireTrustDomainFromString("other.org")
		wantPermanent(t, runUntilExit(t, cfg), "trust domain mismatch", "spiffe://example.org", "other.org")
	})
	t.Run("evicted with its token spent", func(t *testing.T) {
		logs := &harness.LogBuffer{}
		cfg := agentConfig(t, srv, logs)
		ag, err := agent.New(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer ag.Close()
		done := make(chan error, 1)
		go func() { done <- ag.Run(context.Background()) }()
		harness.Eventually(t, 10*time.Second, func() bool { return strings.Contains(logs.String(), `"msg":"agent running"`) })
		if _, err := srv.Admin.EvictAgent(context.Background(), &adminv1.EvictAgentRequest{SpiffeId: ag.ID()}); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			wantPermanent(t, err, "no longer accepts "+ag.ID(), "--join-token")
		case <-time.After(30 * time.Second):
			t.Fatal("the evicted agent kept retrying")
		}
	})
}

// A transient failure (no server yet) keeps the backoff, and "agent
// running" is logged only once the first sync has completed; before that
// the log says what the agent waits for.
func TestAgentRunningOnlyAfterFirstSync(t *testing.T) {
	srv := harness.StartServer(t)
	logs := &harness.LogBuffer{}
	cfg := agentConfig(t, srv, logs)
	real := cfg.ServerAddrs
	cfg.ServerAddrs = []string{"127.0.0.1:1"} // nothing listens: a transient error
	ag, err := agent.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ag.Run(ctx) }()
	harness.Eventually(t, 10*time.Second, func() bool { return strings.Contains(logs.String(), `"msg":"attestation failed"`) })
	out := logs.String()
	if strings.Contains(out, `"msg":"agent running"`) {
		t.Fatalf("logged agent running before attesting:\n%s", out)
	}
	if !strings.Contains(out, `"waiting_for":"attestation with the join token, then the first sync"`) {
		t.Fatalf("the start line does not say what it waits for:\n%s", out)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("a transient error ended the agent: %v", err)
	}
	_ = ag.Close()

	// Against the real server: attested, synced, then running.
	logs = &harness.LogBuffer{}
	cfg.ServerAddrs, cfg.Logger = real, slog.New(slog.NewJSONHandler(logs, nil))
	a := harness.RunAgent(t, cfg)
	harness.Eventually(t, 10*time.Second, func() bool { return strings.Contains(logs.String(), `"msg":"agent running"`) })
	out = logs.String()
	attested, running := strings.Index(out, `"msg":"attested"`), strings.Index(out, `"msg":"agent running"`)
	if attested < 0 || running < attested || !strings.Contains(out[running:], `"agent_id":"`+a.ID()+`"`) {
		t.Fatalf("want attested, then agent running with the agent ID:\n%s", out)
	}
}

// An evicted agent restarted with a new join token attests again instead
// of ignoring the token, and serves its new identity's entries.
func TestNewJoinTokenReattestsEvictedAgent(t *testing.T) {
	srv := harness.StartServer(t)
	logs := &harness.LogBuffer{}
	cfg := agentConfig(t, srv, logs)
	first := harness.RunAgent(t, cfg)
	oldID := first.ID()
	first.Stop()
	if _, err := srv.Admin.EvictAgent(context.Background(), &adminv1.EvictAgentRequest{SpiffeId: oldID}); err != nil {
		t.Fatal(err)
	}
	token, newID := srv.NewJoinToken(t)
	cfg.JoinToken = token
	second := harness.RunAgent(t, cfg) // same data dir: resumes the stored, evicted identity first
	harness.Eventually(t, 15*time.Second, func() bool { return second.ID() == newID })
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/after-eviction", ParentId: newID, Selectors: []string{uidSelector()}})
	svid, err := fetchX509(t, second.Addr(), 15*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got := svid.DefaultSVID().ID.String(); got != "spiffe://example.org/after-eviction" {
		t.Fatalf("served %s", got)
	}
	if !strings.Contains(logs.String(), `"msg":"the server no longer accepts this agent (evicted?); attesting again","agent_id":"`+oldID+`","attestor":"join_token"`) {
		t.Errorf("no log of the re-attestation:\n%s", logs.String())
	}
}

// A damaged stored identity with a join token: attest again.
func TestNewJoinTokenReplacesUnusableIdentity(t *testing.T) {
	srv := harness.StartServer(t)
	cfg := agentConfig(t, srv, &harness.LogBuffer{})
	first := harness.RunAgent(t, cfg)
	first.Stop()
	for _, name := range []string{"agent_identity.json", "agent_identity.json.prev"} {
		if err := os.WriteFile(filepath.Join(cfg.DataDir, name), []byte("{damaged"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg.JoinToken = ""
	if _, err := agent.New(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "--join-token") {
		t.Fatalf("without a token: %v, want an error that asks for a new --join-token", err)
	}
	token, newID := srv.NewJoinToken(t)
	cfg.JoinToken = token
	second := harness.RunAgent(t, cfg)
	if second.ID() != newID {
		t.Fatalf("agent is %s, want the new token's %s", second.ID(), newID)
	}
}

// The command: a permanent error exits 1 with one line on stderr.
func TestAgentCommandExitsOnPermanentError(t *testing.T) {
	srv := harness.StartServer(t)
	first := harness.StartAgent(t, srv)
	bundle, _ := srv.CA().Bundle()
	dir := harness.ShortDir(t)
	cfgPath := harness.WriteAgentYAML(t, harness.AgentProcessConfig{ServerAddr: srv.AgentAddr(), Bundle: bundle.X509Authorities(),
		JoinToken: first.Config.JoinToken, DataDir: filepath.Join(dir, "data"), SocketPath: filepath.Join(dir, "a.sock")})
	cmd := exec.Command(harness.Binary(t), "agent", "--config", cfgPath) //nolint:gosec // the binary the harness built
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("exit: %v, want status 1\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	last := lines[len(lines)-1]
	if !strings.HasPrefix(last, "shortleaf: agent: the server refused the join token") {
		t.Fatalf("last line %q, want the refusal", last)
	}
}

// A second server on a running server's data dir is refused naming the
// first one's PID (not a bbolt timeout); a second agent on a live socket is
// refused naming the socket, and the first keeps serving.
func TestSecondInstanceIsRefused(t *testing.T) {
	first := harness.StartServerProcess(t, harness.ProcessConfig{})
	second := exec.Command(harness.Binary(t), "server", "--config", filepath.Join(first.DataDir, "server.yaml")) //nolint:gosec // the binary the harness built
	second.Env = append(os.Environ(), "SHORTLEAF_KEY_PASSPHRASE="+harness.Passphrase)
	out, err := second.CombinedOutput()
	var exit *exec.ExitError
	want := fmt.Sprintf("data dir %s is in use by another shortleaf (pid %d)", first.DataDir, first.Cmd.Process.Pid)
	if !errors.As(err, &exit) || !strings.Contains(string(out), want) {
		t.Fatalf("second server: %v\n%s\nwant %q", err, out, want)
	}

	srv := harness.StartServer(t)
	running := harness.StartAgent(t, srv)
	cfg := agentConfig(t, srv, &harness.LogBuffer{})
	cfg.SocketPath = running.SocketPath()
	if _, err := agent.New(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), running.SocketPath()+" is in use") {
		t.Fatalf("second agent on a live socket: %v", err)
	}
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/first", ParentId: running.ID(), Selectors: []string{uidSelector()}})
	if _, err := fetchX509(t, running.Addr(), 10*time.Second); err != nil {
		t.Fatalf("the first agent's socket was disturbed: %v", err)
	}
}
