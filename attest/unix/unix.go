package unix

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/user"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/shortleaf/shortleaf/attest"
)

// SelectorType is the type of every selector this attestor produces.
const SelectorType = "unix"

// Caller is what the kernel told us about the peer.
type Caller struct {
	PID int32
	UID uint32
	GID uint32
}

// Attestor produces unix selectors for callers.
type Attestor struct {
	// ProcRoot is where /proc is mounted; tests may point it elsewhere.
	ProcRoot string

	mu     sync.Mutex
	hashes map[fileKey]string
}

type fileKey struct {
	dev, ino uint64
	size     int64
	mtime    time.Time
}

// New returns an attestor reading /proc.
func New() *Attestor {
	return &Attestor{ProcRoot: "/proc", hashes: make(map[fileKey]string)}
}

// Attest returns the selectors of the caller. uid and gid always come back;
// user and group names when they resolve; path and sha256 when the
// executable is readable (the agent runs as root or as the workload's user).
func (a *Attestor) Attest(c Caller) ([]attest.Selector, error) {
	sels := []attest.Selector{
		sel("uid", strconv.FormatUint(uint64(c.UID), 10)),
		sel("gid", strconv.FormatUint(uint64(c.GID), 10)),
	}
	if u, err := user.LookupId(strconv.FormatUint(uint64(c.UID), 10)); err == nil {
		sels = append(sels, sel("user", u.Username))
	}
	if g, err := user.LookupGroupId(strconv.FormatUint(uint64(c.GID), 10)); err == nil {
		sels = append(sels, sel("group", g.Name))
	}
	if c.PID <= 0 {
		return sels, nil
	}
	// A process we cannot inspect (gone, or another user's while the agent is
	// not root) still gets its uid and gid selectors; path and hash are absent.
	exeLink := fmt.Sprintf("%s/%d/exe", a.ProcRoot, c.PID)
	if path, err := os.Readlink(exeLink); err == nil {
		sels = append(sels, sel("path", path))
		if sum, err := a.hashExecutable(exeLink); err == nil {
			sels = append(sels, sel("sha256", sum))
		}
	}
	return sels, nil
}

func sel(key, value string) attest.Selector {
	return attest.Selector{Type: SelectorType, Value: key + ":" + value}
}

// hashExecutable hashes the file behind /proc/<pid>/exe (which still points at
// the running binary even if its path was replaced).
func (a *Attestor) hashExecutable(exeLink string) (string, error) {
	f, err := os.Open(exeLink) //nolint:gosec // reading the caller's executable is the point
	if err != nil {
		return "", err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return "", err
	}
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return "", fmt.Errorf("unix: no stat for %s", exeLink)
	}
	key := fileKey{dev: st.Dev, ino: st.Ino, size: info.Size(), mtime: info.ModTime()}
	a.mu.Lock()
	sum, ok := a.hashes[key]
	a.mu.Unlock()
	if ok {
		return sum, nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	sum = hex.EncodeToString(h.Sum(nil))
	a.mu.Lock()
	if len(a.hashes) > 4096 {
		clear(a.hashes) // bounded: a fresh start beats unbounded growth
	}
	a.hashes[key] = sum
	a.mu.Unlock()
	return sum, nil
}
