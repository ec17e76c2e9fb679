// Package grpcstream holds what the project's bidirectional gRPC handlers
// share: reading a stream's requests on a goroutine of their own, so that a
// handler can wait on a request and on something to send at once (a gRPC
// stream allows one goroutine to send and one to receive).
package grpcstream
