package uds

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/shortleaf/shortleaf/pkg/safefile"
)

// PeerCred is the kernel's word on the process at the other end of a socket,
// taken when the connection was accepted.
type PeerCred struct {
	PID int32
	UID uint32
	GID uint32
	// Exe is /proc/<pid>/exe read when the connection was accepted, and
	// pidfd a pidfd of that very process: attestation later checks that the
	// process still runs (a PID now naming another process fails this) and
	// still runs Exe (an exec since connecting fails this). Empty and 0 when
	// /proc or pidfd_open were refused.
	Exe   string
	pidfd int
}

// Running reports whether the process that connected still runs: its pidfd
// accepts signal 0. False when no pidfd was taken or the connection closed.
func (c PeerCred) Running() bool {
	return c.pidfd > 0 && unix.PidfdSendSignal(c.pidfd, 0, nil, 0) == nil
}

// AuthInfo carries PeerCred through gRPC's peer information.
type AuthInfo struct {
	credentials.CommonAuthInfo
	Cred PeerCred
}

// AuthType names the credential kind.
func (AuthInfo) AuthType() string { return "uds-peercred" }

type peerCredentials struct{}

// NewCredentials returns server transport credentials that record each
// connection's peer credentials. The connection itself is not encrypted: the
// socket's file mode and the caller's attestation protect it.
func NewCredentials() credentials.TransportCredentials { return peerCredentials{} }

func (peerCredentials) ClientHandshake(_ context.Context, _ string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return conn, AuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}, nil
}

// ServerHandshake records the peer's credentials, its executable and a
// pidfd of it; the returned connection closes the pidfd with itself.
func (peerCredentials) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	cred, err := PeerCredOf(conn)
	if err != nil {
		return nil, nil, err
	}
	info := AuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}
	if cred.PID <= 0 {
		info.Cred = cred
		return conn, info, nil
	}
	cred.Exe, _ = os.Readlink(fmt.Sprintf("/proc/%d/exe", cred.PID))
	fd, err := unix.PidfdOpen(int(cred.PID), 0)
	if err != nil {
		info.Cred = cred
		return conn, info, nil //nolint:nilerr // without a pidfd the process is attested by uid and gid alone
	}
	cred.pidfd = fd
	info.Cred = cred
	return &pidfdConn{Conn: conn, pidfd: fd}, info, nil
}

// pidfdConn closes the peer's pidfd when the connection closes.
type pidfdConn struct {
	net.Conn
	pidfd int
	once  sync.Once
}

func (c *pidfdConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { _ = unix.Close(c.pidfd) })
	return err
}

func (peerCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "uds-peercred"}
}
func (p peerCredentials) Clone() credentials.TransportCredentials { return p }
func (peerCredentials) OverrideServerName(string) error           { return nil }

// PeerCredOf reads SO_PEERCRED from a Unix socket connection (or a wrapper
// that exposes the socket through syscall.Conn).
func PeerCredOf(conn net.Conn) (PeerCred, error) {
	uc, ok := conn.(syscall.Conn)
	if !ok {
		return PeerCred{}, fmt.Errorf("uds: connection is %T, not a Unix socket", conn)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return PeerCred{}, fmt.Errorf("uds: %w", err)
	}
	var ucred *unix.Ucred
	var sockErr error
	if err := raw.Control(func(fd uintptr) {
		ucred, sockErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return PeerCred{}, fmt.Errorf("uds: %w", err)
	}
	if sockErr != nil {
		return PeerCred{}, fmt.Errorf("uds: SO_PEERCRED: %w", sockErr)
	}
	return PeerCred{PID: ucred.Pid, UID: ucred.Uid, GID: ucred.Gid}, nil
}

// ByUID keys connections by the peer's uid, for per-uid connection caps.
func ByUID(conn net.Conn) (string, error) {
	c, err := PeerCredOf(conn)
	if err != nil {
		return "", err
	}
	return strconv.FormatUint(uint64(c.UID), 10), nil
}

// PeerFromContext returns the caller's credentials inside a gRPC handler.
func PeerFromContext(ctx context.Context) (PeerCred, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return PeerCred{}, false
	}
	info, ok := p.AuthInfo.(AuthInfo)
	if !ok {
		return PeerCred{}, false
	}
	return info.Cred, true
}

// Listen creates the socket at path with the given file mode, creating its
// directory (0755) and replacing a stale socket left by a previous run; a
// socket that something still answers on is refused, never taken over. It
// refuses to replace anything that is not a socket, and refuses a directory
// it cannot trust: one owned by another uid, or writable by group or others,
// could have been made by another user to put a socket of their own in our
// place (the squatting attack).
func Listen(path string, mode os.FileMode) (net.Listener, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("uds: socket path %q must be absolute", path)
	}
	// Workloads must be able to reach the Workload API socket, so its directory
	// is world-traversable; the admin socket is protected by its own mode.
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil { //nolint:gosec // see above
		return nil, fmt.Errorf("uds: create socket directory: %w", err)
	}
	if err := safefile.CheckPrivateDir(dir); err != nil {
		return nil, fmt.Errorf("uds: socket %w", err)
	}
	if info, err := os.Lstat(path); err == nil {
		if info.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("uds: %s exists and is not a socket", path)
		}
		if err := checkDead(path); err != nil {
			return nil, err
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("uds: remove stale socket: %w", err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("uds: %w", err)
	}
	lis, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("uds: listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, mode); err != nil {
		_ = lis.Close()
		return nil, fmt.Errorf("uds: chmod %s: %w", path, err)
	}
	return lis, nil
}

// ErrSocketInUse means a process still answers on a socket path.
var ErrSocketInUse = errors.New("is in use: a running process answers on it")

// checkDead reports whether the socket at path is stale: nothing accepts a
// connection on it. Taking over a live socket would silently cut its
// owner's workloads off (another agent, a second dev instance).
func checkDead(path string) error {
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		_ = conn.Close()
		return fmt.Errorf("uds: socket %s %w (another agent or dev instance?); stop it or use another socket path", path, ErrSocketInUse)
	}
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return fmt.Errorf("uds: cannot tell whether socket %s is still in use: %w", path, err)
}
