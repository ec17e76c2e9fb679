package grpcstream_test

import (
	"context"
	"errors"
	"io"
	"testing"

	"github.com/shortleaf/shortleaf/pkg/grpcstream"
)

// Messages arrive in order, then the error that ended the stream.
func TestReceiveHandsMessagesThenTheError(t *testing.T) {
	in := []string{"a", "b", "c"}
	i := 0
	msgs, errs := grpcstream.Receive(context.Background(), func() (string, error) {
		if i == len(in) {
			return "", io.EOF
		}
		i++
		return in[i-1], nil
	})
	for _, want := range in {
		if got := <-msgs; got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
	if err := <-errs; !errors.Is(err, io.EOF) {
		t.Fatalf("error %v, want io.EOF", err)
	}
}
