package harness_test

import (
	"context"
	"testing"

	workload "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// fetchWithoutHeader calls FetchX509SVID with a raw client that omits the
// security header go-spiffe always sends.
func fetchWithoutHeader(t *testing.T, socket string) error {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := workload.NewSpiffeWorkloadAPIClient(conn).FetchX509SVID(context.Background(), &workload.X509SVIDRequest{})
	if err != nil {
		return err
	}
	_, err = stream.Recv()
	return err
}
