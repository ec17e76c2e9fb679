package server

import (
	"context"
	"os"

	"google.golang.org/grpc"

	"github.com/shortleaf/shortleaf/pkg/api"
	"github.com/shortleaf/shortleaf/pkg/uds"
)

// adminPeerCheck admits callers on the admin socket whose uid is the
// server's own (or root); unary and streaming calls pass the same check.
var adminPeerCheck = api.AdminPeerCheck(func(ctx context.Context) (uint32, bool) {
	c, ok := uds.PeerFromContext(ctx)
	return c.UID, ok
}, uint32(os.Getuid())) //nolint:gosec // uids fit in uint32

func adminUnaryCheck(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := adminPeerCheck(ctx); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

func adminStreamCheck(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if err := adminPeerCheck(ss.Context()); err != nil {
		return err
	}
	return h(srv, ss)
}
