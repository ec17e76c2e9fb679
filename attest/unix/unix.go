package unix

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
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

// Caller is what the kernel told us about the peer when it connected.
type Caller struct {
	PID int32
	UID uint32
	GID uint32
	// Exe was read from /proc at connect; Running reports whether the
	// process that connected still runs (see uds.PeerCred). Empty or nil:
	// unknown, and path and hash are withheld.
	Exe     string
	Running func() bool
}

// Options say what one attestation needs. Selectors no entry uses change
// no match, so the agent asks only for those its entries use.
type Options struct {
	// Path asks for the unix:path selector: a readlink of /proc/<pid>/exe
	// and a check that the process is still the one that connected.
	Path bool
	// Hash asks for the unix:sha256 selector (and implies Path). Hashing
	// reads the whole executable, so it is done only when an entry uses it.
	Hash bool
}

// DefaultMaxHashSize bounds the executables hashed for unix:sha256.
const DefaultMaxHashSize = 256 << 20

// Attestor produces unix selectors for callers.
type Attestor struct {
	// ProcRoot is where /proc is mounted; tests may point it elsewhere.
	ProcRoot string
	// MaxHashSize: a larger executable gets no unix:sha256 selector.
	MaxHashSize int64
	Logger      *slog.Logger

	mu     sync.Mutex
	hashes map[fileKey]string
	names  nameCache
}

// fileKey names one version of a file: a replaced or rewritten executable
// changes its inode, size, mtime or ctime, so its hash is computed again.
type fileKey struct {
	dev, ino     uint64
	size         int64
	mtime, ctime time.Time
}

// New returns an attestor reading /proc.
func New() *Attestor {
	return &Attestor{ProcRoot: "/proc", MaxHashSize: DefaultMaxHashSize, Logger: slog.New(slog.DiscardHandler), hashes: make(map[fileKey]string)}
}

// Attest returns the selectors of the caller. uid and gid always come back;
// user and group names when they resolve; path (and sha256 if asked) when
// the executable is readable (the agent runs as root or as the workload's
// user) and the process is still the one that connected, running the
// executable it ran then. ctx ends the hashing of a large executable when the
// caller goes away.
func (a *Attestor) Attest(ctx context.Context, c Caller, opts Options) ([]attest.Selector, error) {
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
	if c.PID <= 0 || (!opts.Path && !opts.Hash) {
		return sels, nil
	}
	// A process we cannot inspect (gone, or another user's while the agent is
	// not root) still gets its uid and gid selectors; path and hash are absent.
	exeLink := fmt.Sprintf("%s/%d/exe", a.ProcRoot, c.PID)
	path, err := os.Readlink(exeLink)
	if err != nil {
		return sels, nil //nolint:nilerr // a process we cannot inspect is attested by uid and gid alone
	}
	var exeSels []attest.Selector
	exeSels = append(exeSels, sel("path", path))
	if opts.Hash {
		switch sum, err := a.hashExecutable(ctx, exeLink); {
		case err == nil:
			exeSels = append(exeSels, sel("sha256", sum))
		case errors.Is(err, errTooLarge):
			a.Logger.WarnContext(ctx, "executable too large to hash; no unix:sha256 selector", slog.String("path", path), slog.Int64("max_bytes", a.MaxHashSize))
		case ctx.Err() != nil:
			return nil, ctx.Err()
		}
	}
	// Path and hash describe the process only if it is still the one that
	// connected (same start time: the PID was not reused) and still runs the
	// executable it ran then (no exec since connecting).
	if !a.sameProcess(c, path) {
		a.Logger.WarnContext(ctx, "caller exec'd or exited since it connected; attested by uid and gid only",
			slog.Int("pid", int(c.PID)), slog.String("exe_at_connect", c.Exe), slog.String("exe_now", path))
		return sels, nil
	}
	return append(sels, exeSels...), nil
}

// sameProcess checks, after the executable was read, that the process that
// connected still runs (so PID was not reused by another) and runs what it
// ran then (no exec since).
func (a *Attestor) sameProcess(c Caller, exeNow string) bool {
	if c.Running == nil || c.Exe == "" {
		return false // nothing to compare with: do not vouch for the executable
	}
	return exeNow == c.Exe && c.Running()
}

func sel(key, value string) attest.Selector {
	return attest.Selector{Type: SelectorType, Value: key + ":" + value}
}

func keyOf(info os.FileInfo) (fileKey, bool) {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return fileKey{}, false
	}
	return fileKey{dev: st.Dev, ino: st.Ino, size: info.Size(), mtime: info.ModTime(), ctime: time.Unix(st.Ctim.Unix())}, true
}

var errTooLarge = errors.New("unix: executable is larger than the hashing limit")

// ctxReader stops a read when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// hashExecutable hashes the file behind /proc/<pid>/exe (which still points at
// the running binary even if its path was replaced). A stat answers from the
// cache; the file is opened and read only for a binary not seen before, and
// only up to MaxHashSize.
func (a *Attestor) hashExecutable(ctx context.Context, exeLink string) (string, error) {
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
	if info.Size() > a.MaxHashSize {
		return "", errTooLarge
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(ctxReader{ctx, f}, a.MaxHashSize)); err != nil {
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
