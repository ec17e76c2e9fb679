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
	names  nameCache
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
	if name, ok := a.names.lookup("u", c.UID, func(id string) (string, error) {
		u, err := user.LookupId(id)
		if err != nil {
			return "", err
		}
		return u.Username, nil
	}); ok {
		sels = append(sels, sel("user", name))
	}
	if name, ok := a.names.lookup("g", c.GID, func(id string) (string, error) {
		g, err := user.LookupGroupId(id)
		if err != nil {
			return "", err
		}
		return g.Name, nil
	}); ok {
		sels = append(sels, sel("group", name))
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

func keyOf(info os.FileInfo) (fileKey, bool) {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return fileKey{}, false
	}
	return fileKey{dev: st.Dev, ino: st.Ino, size: info.Size(), mtime: info.ModTime()}, true
}

// hashExecutable hashes the file behind /proc/<pid>/exe (which still points at
// the running binary even if its path was replaced). A stat answers from the
// cache; the file is opened and read only for a binary not seen before.
func (a *Attestor) hashExecutable(exeLink string) (string, error) {
	if info, err := os.Stat(exeLink); err == nil {
		if key, ok := keyOf(info); ok {
			a.mu.Lock()
			sum, hit := a.hashes[key]
			a.mu.Unlock()
			if hit {
				return sum, nil
			}
		}
	}
	f, err := os.Open(exeLink) //nolint:gosec // reading the caller's executable is the point
	if err != nil {
		return "", err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return "", err
	}
	key, ok := keyOf(info)
	if !ok {
		return "", fmt.Errorf("unix: no stat for %s", exeLink)
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	sum := hex.EncodeToString(h.Sum(nil))
	a.mu.Lock()
	if len(a.hashes) > 4096 {
		clear(a.hashes) // bounded: a fresh start beats unbounded growth
	}
	a.hashes[key] = sum
	a.mu.Unlock()
	return sum, nil
}

// nameTTL bounds how long a user or group name is trusted without looking
// it up again (renames are rare; the lookups cost a parse of the databases).
const nameTTL = 30 * time.Second

// nameCache remembers uid → user name and gid → group name lookups.
type nameCache struct {
	mu sync.Mutex
	m  map[string]cachedName
}

type cachedName struct {
	name string
	ok   bool
	at   time.Time
}

func (c *nameCache) lookup(kind string, id uint32, find func(string) (string, error)) (string, bool) {
	key := kind + strconv.FormatUint(uint64(id), 10)
	now := time.Now()
	c.mu.Lock()
	if e, ok := c.m[key]; ok && now.Sub(e.at) < nameTTL {
		c.mu.Unlock()
		return e.name, e.ok
	}
	c.mu.Unlock()
	name, err := find(strconv.FormatUint(uint64(id), 10))
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) > 4096 {
		c.m = map[string]cachedName{}
	}
	c.m[key] = cachedName{name: name, ok: err == nil, at: now}
	return name, err == nil
}
