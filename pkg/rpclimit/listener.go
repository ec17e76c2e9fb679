package rpclimit

import (
	"net"
	"sync"
	"syscall"
)

// KeyFunc names the caller of a new connection, for the per-caller cap.
// An error closes the connection.
type KeyFunc func(net.Conn) (string, error)

// ByRemoteIP keys TCP connections by the client's IP address.
func ByRemoteIP(c net.Conn) (string, error) { return HostOf(c.RemoteAddr()), nil }

// HostOf is the IP address of a TCP address (the whole address if it has no
// port), the key of every per-source limit.
func HostOf(addr net.Addr) string {
	if addr == nil {
		return "unknown"
	}
	host, _, err := net.SplitHostPort(addr.String())
	if err != nil {
		return addr.String()
	}
	return host
}

// Listener wraps lis so that at most l.MaxConnections connections are open
// at once, and at most l.MaxConnectionsPerCaller per key. A connection over
// a limit is closed at once (the client backs off and retries) rather than
// left waiting in the backlog, so a flood never delays Accept for others.
func (l Limits) Listener(lis net.Listener, key KeyFunc, onRefuse func(reason string)) net.Listener {
	if onRefuse == nil {
		onRefuse = func(string) {}
	}
	return &limitListener{Listener: lis, limits: l, key: key, onRefuse: onRefuse, perKey: map[string]int{}}
}

type limitListener struct {
	net.Listener
	limits   Limits
	key      KeyFunc
	onRefuse func(string)

	mu     sync.Mutex
	total  int
	perKey map[string]int
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		k := ""
		if l.key != nil {
			if k, err = l.key(c); err != nil {
				_ = c.Close()
				continue
			}
		}
		if !l.admit(k) {
			l.onRefuse(ReasonConnectionLimit)
			_ = c.Close()
			continue
		}
		return &countedConn{Conn: c, release: func() { l.release(k) }}, nil
	}
}

func (l *limitListener) admit(k string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.limits.MaxConnections > 0 && l.total >= l.limits.MaxConnections {
		return false
	}
	if l.limits.MaxConnectionsPerCaller > 0 && l.perKey[k] >= l.limits.MaxConnectionsPerCaller {
		return false
	}
	l.total++
	l.perKey[k]++
	return true
}

func (l *limitListener) release(k string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.perKey[k]--; l.perKey[k] <= 0 {
		delete(l.perKey, k)
	}
}

// countedConn gives its slot back once, on the first Close. It keeps the
// underlying connection's SyscallConn reachable, for SO_PEERCRED.
type countedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// SyscallConn exposes the underlying socket.
func (c *countedConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, syscall.EINVAL
	}
	return sc.SyscallConn()
}
