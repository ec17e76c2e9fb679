// Package uds serves gRPC on Unix domain sockets and tells handlers who the
// caller is, from the kernel (SO_PEERCRED), not from anything the caller says.
//
//	lis, err := uds.Listen(path, 0o777)
//	srv := grpc.NewServer(grpc.Creds(uds.NewCredentials()))
//	// in a handler:
//	cred, ok := uds.PeerFromContext(ctx)
package uds
