package harness

import (
	"bufio"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shortleaf/shortleaf/pkg/adminclient"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// Binary builds cmd/shortleaf once per test process and returns its path.
// Tests that measure a server as an operator would (CPU time, RSS, SIGKILL)
// run it as a real process.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "shortleaf-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "shortleaf")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/shortleaf/shortleaf/cmd/shortleaf").CombinedOutput() //nolint:gosec // a path the harness made
		if err != nil {
			buildErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// Process is a shortleaf server or agent running as a child process.
type Process struct {
	Cmd         *exec.Cmd
	DataDir     string
	AdminSocket string
	AgentAddr   string
	logs        *LogBuffer
	exited      chan struct{}
}

// ProcessConfig is the server.yaml of a Process, before the keys the harness
// fills in (trust domain, data dir, addresses).
type ProcessConfig struct {
	DataDir string // reused across restarts; default a new temporary dir
	Extra   string // more YAML keys, e.g. "limits:\n  max_connections: 10\n"
}

// StartServerProcess runs `shortleaf server` and waits until it serves.
func StartServerProcess(t testing.TB, pc ProcessConfig) *Process {
	t.Helper()
	if pc.DataDir == "" {
		pc.DataDir = ShortDir(t)
	}
	p := &Process{DataDir: pc.DataDir, AdminSocket: filepath.Join(pc.DataDir, "admin.sock"), logs: &LogBuffer{}, exited: make(chan struct{})}
	cfgPath := filepath.Join(pc.DataDir, "server.yaml")
	yaml := fmt.Sprintf("trust_domain: %s\ndata_dir: %s\nagent_api_address: 127.0.0.1:0\nmetrics_address: \"off\"\nlog_level: debug\n%s",
		TrustDomain.Name(), pc.DataDir, pc.Extra)
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	p.Cmd = exec.Command(Binary(t), "server", "--config", cfgPath) //nolint:gosec // the binary the harness built
	p.Cmd.Env = append(os.Environ(), "SHORTLEAF_KEY_PASSPHRASE="+Passphrase)
	p.AgentAddr = p.start(t, "server running", "agent_api")
	return p
}

// AgentProcessConfig is an agent.yaml for StartAgentProcess.
type AgentProcessConfig struct {
	ServerAddr string
	Bundle     []*x509.Certificate // authenticates the server at the first attestation
	JoinToken  string              // needed only while DataDir holds no identity
	DataDir    string
	SocketPath string
	Extra      string // more YAML keys, e.g. a node_attestor section
}

// StartAgentProcess runs `shortleaf agent` and waits until it runs
// (attested and synced once).
func StartAgentProcess(t testing.TB, ac AgentProcessConfig) *Process {
	t.Helper()
	p := &Process{DataDir: ac.DataDir, logs: &LogBuffer{}, exited: make(chan struct{})}
	p.Cmd = exec.Command(Binary(t), "agent", "--config", WriteAgentYAML(t, ac)) //nolint:gosec // the binary the harness built
	p.start(t, "agent running", "socket")
	return p
}

// WriteAgentYAML writes the agent.yaml (and trust bundle) of ac beside its
// data dir and returns the config's path.
func WriteAgentYAML(t testing.TB, ac AgentProcessConfig) string {
	t.Helper()
	bundlePath := filepath.Join(ac.DataDir, "..", filepath.Base(ac.DataDir)+"-bundle.pem")
	var pemBundle []byte
	for _, c := range ac.Bundle {
		pemBundle = append(pemBundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	if err := os.WriteFile(bundlePath, pemBundle, 0o600); err != nil {
		t.Fatal(err)
	}
	yaml := fmt.Sprintf("server_address: %s\ntrust_domain: %s\ntrust_bundle_path: %s\ndata_dir: %s\nsocket_path: %s\nsync_interval: 1s\nlog_level: debug\n",
		ac.ServerAddr, TrustDomain.Name(), bundlePath, ac.DataDir, ac.SocketPath)
	if ac.JoinToken != "" {
		yaml += "join_token: " + ac.JoinToken + "\n"
	}
	yaml += ac.Extra
	cfgPath := filepath.Join(ac.DataDir, "..", filepath.Base(ac.DataDir)+"-agent.yaml")
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfgPath
}

// start runs p.Cmd and waits for the log line msg, returning its attribute
// attr.
func (p *Process) start(t testing.TB, msg, attr string) string {
	t.Helper()
	stderr, err := p.Cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan string, 1)
	go p.readLogs(stderr, msg, attr, ready)
	go func() { _ = p.Cmd.Wait(); close(p.exited) }()
	t.Cleanup(p.Kill)
	select {
	case v := <-ready:
		return v
	case <-p.exited:
		t.Fatalf("%s exited before %q:\n%s", p.Cmd.Args[1], msg, p.Logs())
	case <-time.After(60 * time.Second):
		t.Fatalf("%s did not log %q within 60s:\n%s", p.Cmd.Args[1], msg, p.Logs())
	}
	return ""
}

// readLogs keeps the process's JSON log and reports attribute attr of the
// first line whose message is msg.
func (p *Process) readLogs(r io.Reader, msg, attr string, ready chan<- string) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		_, _ = p.logs.Write(append(line, '\n'))
		var rec map[string]any
		if json.Unmarshal(line, &rec) == nil && rec["msg"] == msg {
			v, _ := rec[attr].(string)
			select {
			case ready <- v:
			default:
			}
		}
	}
}

// Logs is everything the server wrote to stderr so far.
func (p *Process) Logs() string { return p.logs.String() }

// Admin dials the admin socket.
func (p *Process) Admin(t testing.TB) *adminclient.Client {
	t.Helper()
	c, err := adminclient.Dial(p.AdminSocket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Kill sends SIGKILL and waits for the process to be gone.
func (p *Process) Kill() {
	_ = p.Cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times; 100 on Linux.
const clockTicks = 100

// CPUTime is the user plus system CPU time the process has used.
func (p *Process) CPUTime(t testing.TB) time.Duration {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name (which may hold spaces) start after ')'.
	fields := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / clockTicks
}

// RSS is the process's resident set size in bytes.
func (p *Process) RSS(t testing.TB) int64 {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/PID/status")
	return 0
}

// LogBuffer is an io.Writer safe for concurrent use, for tests that read
// what a server or agent logged.
type LogBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String is everything written so far.
func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
