package rpclimit

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Refusal reasons passed to the OnRefuse callback.
const (
	ReasonMessageSize     = "message_size"
	ReasonConnectionLimit = "connection_limit"
)

// Limits are one gRPC server's resource limits. Zero fields are unlimited
// (or gRPC's default), so every server states its own.
type Limits struct {
	// MaxRecvMsgSize is the largest message the transport reads for any
	// method. A stalled stream holds at most this much, so with
	// MaxConcurrentStreams and MaxConnections it bounds the memory a client
	// can pin.
	MaxRecvMsgSize int
	// MethodRecvSize holds tighter per-method limits (full method name →
	// bytes), checked before the handler runs.
	MethodRecvSize map[string]int
	// MaxConcurrentStreams per connection.
	MaxConcurrentStreams uint32
	// MaxConnections in total, and per caller (the listener's key).
	MaxConnections, MaxConnectionsPerCaller int
	// MaxConnectionIdle closes a connection with no open stream for this
	// long; MaxConnectionAge closes any connection after this long (plus
	// the grace for its open calls), so clients reconnect and rebalance.
	MaxConnectionIdle, MaxConnectionAge, MaxConnectionAgeGrace time.Duration
	// HandshakeTimeout bounds the TLS handshake and HTTP/2 preface.
	HandshakeTimeout time.Duration
	// KeepaliveMinTime: a client pinging more often is disconnected.
	KeepaliveMinTime time.Duration
	// UnaryTimeout is the deadline given to every unary handler.
	UnaryTimeout time.Duration
}

// ServerOptions are the grpc.ServerOptions that enforce l. onRefuse, when not
// nil, is told the reason of every refusal (for a metric).
func (l Limits) ServerOptions(onRefuse func(reason string)) []grpc.ServerOption {
	if onRefuse == nil {
		onRefuse = func(string) {}
	}
	opts := []grpc.ServerOption{
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle: l.MaxConnectionIdle, MaxConnectionAge: l.MaxConnectionAge, MaxConnectionAgeGrace: l.MaxConnectionAgeGrace,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: l.KeepaliveMinTime, PermitWithoutStream: true}),
		grpc.ChainUnaryInterceptor(l.unaryInterceptor(onRefuse)),
		grpc.ChainStreamInterceptor(l.streamInterceptor(onRefuse)),
	}
	if l.MaxRecvMsgSize > 0 {
		opts = append(opts, grpc.MaxRecvMsgSize(l.MaxRecvMsgSize))
	}
	if l.MaxConcurrentStreams > 0 {
		opts = append(opts, grpc.MaxConcurrentStreams(l.MaxConcurrentStreams))
	}
	if l.HandshakeTimeout > 0 {
		opts = append(opts, grpc.ConnectionTimeout(l.HandshakeTimeout))
	}
	return opts
}

// checkSize refuses a request larger than its method's own limit.
func (l Limits) checkSize(method string, req any) error {
	max, ok := l.MethodRecvSize[method]
	if !ok {
		return nil
	}
	m, ok := req.(proto.Message)
	if !ok {
		return nil
	}
	if n := proto.Size(m); n > max {
		return status.Errorf(codes.ResourceExhausted, "%s: request of %d bytes is larger than the limit of %d", method, n, max)
	}
	return nil
}

func (l Limits) unaryInterceptor(onRefuse func(string)) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if err := l.checkSize(info.FullMethod, req); err != nil {
			onRefuse(ReasonMessageSize)
			return nil, err
		}
		if l.UnaryTimeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, l.UnaryTimeout)
			defer cancel()
		}
		return h(ctx, req)
	}
}

func (l Limits) streamInterceptor(onRefuse func(string)) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if _, ok := l.MethodRecvSize[info.FullMethod]; !ok {
			return h(srv, ss)
		}
		return h(srv, &sizedStream{ServerStream: ss, limits: l, method: info.FullMethod, onRefuse: onRefuse})
	}
}

// sizedStream applies the per-method limit to every message received.
type sizedStream struct {
	grpc.ServerStream
	limits   Limits
	method   string
	onRefuse func(string)
}

func (s *sizedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if err := s.limits.checkSize(s.method, m); err != nil {
		s.onRefuse(ReasonMessageSize)
		return err
	}
	return nil
}
