package workloadapi

import (
	"net"
	"time"

	"google.golang.org/grpc"

	"github.com/shortleaf/shortleaf/pkg/rpclimit"
	"github.com/shortleaf/shortleaf/pkg/uds"
)

// Limits bound what local processes can make the agent hold. Zero fields
// take the defaults below.
type Limits struct {
	// MaxConnections in total (default 4096) and per uid (default 256);
	// over either a connection is closed at once, so one user's flood never
	// takes the slots another user's workloads need.
	MaxConnections, MaxConnectionsPerUID int
	// IdleTimeout closes a connection that has no open call for this long
	// (default 1m); a connection that never completes the HTTP/2 preface is
	// closed after at most 10s.
	IdleTimeout time.Duration
}

// Default Workload API limits.
const (
	DefaultMaxConnections       = 4096
	DefaultMaxConnectionsPerUID = 256
	DefaultIdleTimeout          = time.Minute
	maxHandshake                = 10 * time.Second
	// Requests are tiny (a ValidateJWTSVID token is the largest); streams
	// stay open for a workload's life, so connections have no maximum age.
	maxRequestSize = 64 << 10
)

func (l Limits) withDefaults() Limits {
	if l.MaxConnections == 0 {
		l.MaxConnections = DefaultMaxConnections
	}
	if l.MaxConnectionsPerUID == 0 {
		l.MaxConnectionsPerUID = DefaultMaxConnectionsPerUID
	}
	if l.IdleTimeout == 0 {
		l.IdleTimeout = DefaultIdleTimeout
	}
	return l
}

func (l Limits) rpc() rpclimit.Limits {
	l = l.withDefaults()
	return rpclimit.Limits{
		MaxRecvMsgSize:          maxRequestSize,
		MaxConcurrentStreams:    64,
		MaxConnections:          l.MaxConnections,
		MaxConnectionsPerCaller: l.MaxConnectionsPerUID,
		MaxConnectionIdle:       l.IdleTimeout,
		HandshakeTimeout:        min(maxHandshake, l.IdleTimeout),
		KeepaliveMinTime:        10 * time.Second,
	}
}

// Listener applies the connection caps to the socket's listener.
func (l Limits) Listener(lis net.Listener, onRefuse func(reason string)) net.Listener {
	return l.rpc().Listener(lis, uds.ByUID, onRefuse)
}

// NewGRPCServer returns a gRPC server with the Workload API and Envoy SDS v3
// registered, the peer-credential transport both need, and the limits l.
func NewGRPCServer(s *Server, l Limits) *grpc.Server {
	g := grpc.NewServer(append(l.rpc().ServerOptions(nil), grpc.Creds(uds.NewCredentials()))...)
	registerServices(g, s)
	return g
}
