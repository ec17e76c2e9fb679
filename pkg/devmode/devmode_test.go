package devmode_test

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/shortleaf/shortleaf/pkg/devmode"
	"github.com/shortleaf/shortleaf/pkg/harness"
)

// runDev starts dev mode and returns once it printed its export line.
func runDev(t *testing.T, dataDir, socket string) (stop func() error, out *harness.LogBuffer) {
	t.Helper()
	out = &harness.LogBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- devmode.Run(ctx, devmode.Config{DataDir: dataDir, SocketPath: socket, X509SVIDTTL: time.Minute, Out: out, Logger: harness.TestLogger(t)})
	}()
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(out.String(), "export SPIFFE_ENDPOINT_SOCKET=unix://"+socket) {
		select {
		case err := <-done:
			t.Fatalf("dev mode exited early: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("dev mode printed no export line: %q", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return func() error { cancel(); return <-done }, out
}

func TestDevModeServesTheInvokingUserAndRestarts(t *testing.T) {
	dir := harness.ShortDir(t)
	socket := filepath.Join(dir, "agent.sock")
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	want := "spiffe://example.org/dev/" + u.Username

	for run := range 2 { // the second run resumes from the same data dir
		stop, out := runDev(t, filepath.Join(dir, "data"), socket)
		if want := "export SHORTLEAF_ADMIN_SOCKET=" + filepath.Join(dir, "data", "admin.sock") + "\n"; !strings.Contains(out.String(), want) {
			t.Fatalf("run %d: no %q in:\n%s", run, want, out.String())
		}
		if run == 0 {
			// A second dev instance on the same data dir is refused, naming us.
			err := devmode.Run(context.Background(), devmode.Config{DataDir: filepath.Join(dir, "data"), SocketPath: socket, X509SVIDTTL: time.Minute,
				Out: &harness.LogBuffer{}, Logger: harness.TestLogger(t)})
			if want := fmt.Sprintf("is in use by another shortleaf (pid %d)", os.Getpid()); err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("second dev instance: %v, want %q", err, want)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		var x *workloadapi.X509Context
		for ctx.Err() == nil {
			if x, err = workloadapi.FetchX509Context(ctx, workloadapi.WithAddr("unix://"+socket)); err == nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		cancel()
		if err != nil {
			t.Fatalf("run %d: FetchX509Context: %v", run, err)
		}
		if got := x.DefaultSVID().ID.String(); got != want {
			t.Fatalf("run %d: SVID for %s, want %s", run, got, want)
		}
		if _, _, err := x509svid.Verify(x.DefaultSVID().Certificates, x.Bundles); err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
		if err := stop(); err != nil {
			t.Fatalf("run %d: dev mode stopped with %v", run, err)
		}
	}
}
