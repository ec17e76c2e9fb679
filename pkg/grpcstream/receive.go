package grpcstream

import "context"

// Receive calls recv on a goroutine of its own until it fails, and hands
// each message on the first channel; recv's error (io.EOF when the client
// closed its side) arrives on the second. The goroutine stops when ctx
// ends, so a handler that returns leaves nothing behind once gRPC cancels
// the stream's context.
func Receive[T any](ctx context.Context, recv func() (T, error)) (<-chan T, <-chan error) {
	msgs := make(chan T)
	errs := make(chan error, 1)
	go func() {
		for {
			msg, err := recv()
			if err != nil {
				errs <- err
				return
			}
			select {
			case msgs <- msg:
			case <-ctx.Done():
				return
			}
		}
	}()
	return msgs, errs
}
