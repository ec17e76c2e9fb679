package api_test

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shortleaf/shortleaf/pkg/api"
)

func TestAdminPeerCheck(t *testing.T) {
	const serverUID = 500
	for _, tc := range []struct {
		name string
		uid  uint32
		ok   bool
		want codes.Code
	}{
		{"same uid", serverUID, true, codes.OK},
		{"root", 0, true, codes.OK},
		{"other uid", 1000, true, codes.PermissionDenied},
		{"no peer credentials", 0, false, codes.PermissionDenied},
	} {
		check := api.AdminPeerCheck(func(context.Context) (uint32, bool) { return tc.uid, tc.ok }, serverUID)
		if got := status.Code(check(context.Background())); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
