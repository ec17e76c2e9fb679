package server

import (
	"context"
	"os"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/shortleaf/shortleaf/pkg/uds"
)

type fakeStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (f fakeStream) Context() context.Context { return f.ctx }

// Streaming admin calls (the health service's Watch today) pass the same
// peer uid check as unary ones: another user is refused before the handler
// runs.
func TestAdminStreamsCheckThePeerUID(t *testing.T) {
	other := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: uds.AuthInfo{Cred: uds.PeerCred{UID: 4242}}})
	called := false
	handler := func(any, grpc.ServerStream) error { called = true; return nil }
	err := adminStreamCheck(nil, fakeStream{ctx: other}, &grpc.StreamServerInfo{FullMethod: "/grpc.health.v1.Health/Watch"}, handler)
	if status.Code(err) != codes.PermissionDenied || called {
		t.Fatalf("stream from uid 4242: %v (handler called: %v), want PermissionDenied before the handler", err, called)
	}
	if _, err := adminUnaryCheck(other, nil, &grpc.UnaryServerInfo{}, func(context.Context, any) (any, error) { return nil, nil }); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("unary call from uid 4242: %v, want PermissionDenied", err)
	}
	own := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: uds.AuthInfo{Cred: uds.PeerCred{UID: uint32(os.Getuid())}}})
	if err := adminStreamCheck(nil, fakeStream{ctx: own}, &grpc.StreamServerInfo{}, handler); err != nil || !called {
		t.Fatalf("stream from the server's own uid: %v, handler called %v", err, called)
	}
}
