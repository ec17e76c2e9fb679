package harness_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/shortleaf/shortleaf/pkg/agent"
	"github.com/shortleaf/shortleaf/pkg/harness"
	wl "github.com/shortleaf/shortleaf/pkg/workloadapi"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// helperFetchEnv makes this test binary, re-executed as another user, fetch
// an X.509-SVID from the socket it names and exit (see TestMain).
const helperFetchEnv = "SHORTLEAF_TEST_FETCH_SOCKET"

func TestMain(m *testing.M) {
	if addr := os.Getenv(helperFetchEnv); addr != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		// An X509Source waits for the first SVID (the entry may still be on
		// its way to the agent), retrying as go-spiffe does.
		src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(addr)))
		if err != nil {
			fmt.Fprintln(os.Stderr, "fetch:", err)
			os.Exit(1)
		}
		svid, err := src.GetX509SVID()
		_ = src.Close()
		if err != nil {
			fmt.Fprintln(os.Stderr, "fetch:", err)
			os.Exit(1)
		}
		fmt.Println(svid.ID)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// fetchAs runs a go-spiffe fetch on ag's socket as uid/gid and returns the
// SPIFFE ID it got and how long the fetch took.
func fetchAs(t *testing.T, ag *harness.Agent, uid, gid uint32) (string, time.Duration) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The test binary sits in a private build directory: copy it where the
	// other user can run it.
	dir, err := os.MkdirTemp("", "shortleaf-helper")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil { //nolint:gosec // the other user must reach it
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "helper")
	copyFile(t, self, bin)
	cmd := exec.Command(bin) //nolint:gosec // this test's own binary
	cmd.Env = append(os.Environ(), helperFetchEnv+"="+ag.Addr())
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	start := time.Now()
	out, err := cmd.Output()
	took := time.Since(start)
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok { //nolint:errorlint // exec returns it unwrapped
			stderr = ee.Stderr
		}
		t.Fatalf("fetch as uid %d: %v\n%s", uid, err, stderr)
	}
	return string(out[:len(out)-1]), took
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from) //nolint:gosec // the test binary
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY, 0o755) //nolint:gosec // an executable
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// 1,100 idle connections from one uid (more than the usual 1024 open-file
// limit) neither starve the agent of file descriptors nor delay another
// uid's fetch: the per-uid cap closes the excess at once, and the idle
// timeout closes the rest.
func TestIdleConnectionFloodDoesNotStarveOtherUsers(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to connect as a second user; CI and make test run as root")
	}
	const nobody = 65534
	srv := harness.StartServer(t)
	ag := harness.StartAgent(t, srv, func(c *agent.Config) {
		c.WorkloadAPI = wl.Limits{MaxConnectionsPerUID: 256, IdleTimeout: 2 * time.Second}
	})
	// The socket's directory is the harness's private one: open it to the
	// other user as /run/shortleaf would be.
	if err := os.Chmod(filepath.Dir(ag.SocketPath()), 0o755); err != nil { //nolint:gosec // as deployed
		t.Fatal(err)
	}
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/nobody", ParentId: ag.ID(), Selectors: []string{fmt.Sprintf("unix:uid:%d", nobody)}})
	want := "spiffe://example.org/nobody"
	if got, _ := fetchAs(t, ag, nobody, nobody); got != want {
		t.Fatalf("fetch before the flood got %q, want %q", got, want)
	}

	var flood []net.Conn
	for i := range 1100 {
		c, err := net.Dial("unix", ag.SocketPath())
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		flood = append(flood, c)
	}
	t.Cleanup(func() {
		for _, c := range flood {
			_ = c.Close()
		}
	})
	got, took := fetchAs(t, ag, nobody, nobody)
	if got != want {
		t.Fatalf("fetch during the flood got %q, want %q", got, want)
	}
	t.Logf("fetch as another uid during a flood of 1100 idle connections: %v", took)

	// Every flooding connection is closed by the agent: the excess at once,
	// the admitted ones (which get the server's HTTP/2 preface first) once
	// they have sent nothing for the handshake timeout.
	closed := 0
	deadline := time.Now().Add(30 * time.Second)
	for _, c := range flood {
		_ = c.SetReadDeadline(deadline)
		if _, err := io.Copy(io.Discard, c); err == nil || !isTimeout(err) {
			closed++
		}
	}
	if closed != len(flood) {
		t.Fatalf("the agent closed %d of %d idle connections", closed, len(flood))
	}
}
