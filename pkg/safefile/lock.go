package safefile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// LockFileName is the lock a process holds on its data dir while it runs.
const LockFileName = "shortleaf.lock"

// ErrDirInUse means another process holds a data dir's lock.
var ErrDirInUse = errors.New("in use by another shortleaf")

// LockDir takes an exclusive lock on dir for the life of the process (or
// until release), and writes the process's PID into the lock file so that a
// second process can say who holds it. The kernel drops the lock when the
// holder dies, so a crash never leaves the dir locked.
func LockDir(dir string) (release func(), err error) {
	path := filepath.Join(dir, LockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600) //nolint:gosec // path is inside the checked data dir
	if err != nil {
		return nil, fmt.Errorf("lock data dir: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			raw, _ := os.ReadFile(path) //nolint:gosec // as above
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(raw))); perr == nil && pid > 0 {
				return nil, fmt.Errorf("data dir %s is %w (pid %d)", dir, ErrDirInUse, pid)
			}
			return nil, fmt.Errorf("data dir %s is %w", dir, ErrDirInUse)
		}
		return nil, fmt.Errorf("lock data dir: %w", err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return func() {
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		_ = f.Close()
	}, nil
}
