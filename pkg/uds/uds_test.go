package uds_test

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shortleaf/shortleaf/pkg/uds"
)

// The squatting attack: another user creates the socket's directory first,
// so that the socket (or one they put there later) is theirs. Listen refuses
// such a directory and says why; it accepts one of its own.
func TestListenRefusesADirectoryAnotherUserControls(t *testing.T) {
	base := t.TempDir()
	cases := []struct {
		name    string
		prepare func(dir string) error
		want    string // "" means accepted
	}{
		{"fresh directory", func(string) error { return nil }, ""},
		{"own directory", func(dir string) error { return os.Mkdir(dir, 0o755) }, ""},
		{"world-writable", func(dir string) error {
			if err := os.Mkdir(dir, 0o755); err != nil {
				return err
			}
			return os.Chmod(dir, 0o777) //nolint:gosec // the attack under test
		}, "writable by group or others"},
		{"a symlink to a directory", func(dir string) error {
			target := dir + "-target"
			if err := os.Mkdir(target, 0o755); err != nil {
				return err
			}
			return os.Symlink(target, dir)
		}, "not a directory"},
	}
	if os.Getuid() == 0 {
		cases = append(cases, struct {
			name    string
			prepare func(dir string) error
			want    string
		}{"owned by another uid", func(dir string) error {
			if err := os.Mkdir(dir, 0o755); err != nil {
				return err
			}
			return os.Chown(dir, 4242, 4242)
		}, "owned by uid 4242"})
	} else {
		t.Log("not root: the other-uid case needs chown; it runs in CI and make test as root")
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(base, string(rune('a'+i)))
			if err := tc.prepare(dir); err != nil {
				t.Fatal(err)
			}
			lis, err := uds.Listen(filepath.Join(dir, "agent.sock"), 0o777)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				_ = lis.Close()
				return
			}
			if err == nil {
				_ = lis.Close()
				t.Fatalf("accepted; want a refusal saying %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
			if _, statErr := os.Lstat(filepath.Join(dir, "agent.sock")); statErr == nil {
				t.Fatal("a socket was created in a refused directory")
			}
		})
	}
}

// A socket something answers on is never taken over; one left by a dead
// process is replaced.
func TestListenRefusesALiveSocketAndReplacesADeadOne(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.sock")
	live, err := uds.Listen(path, 0o777)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := uds.Listen(path, 0o777); !errors.Is(err, uds.ErrSocketInUse) || !strings.Contains(err.Error(), path) {
		t.Fatalf("second listen on a live socket: %v, want ErrSocketInUse naming %s", err, path)
	}
	// The first listener still serves: nothing was unlinked.
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("the live socket was taken away: %v", err)
	}
	_ = conn.Close()
	_ = live.Close()

	// A dead socket: the file stays, nobody accepts.
	dead, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	dead.SetUnlinkOnClose(false)
	_ = dead.Close()
	again, err := uds.Listen(path, 0o777)
	if err != nil {
		t.Fatalf("listen over a dead socket: %v", err)
	}
	_ = again.Close()
}
