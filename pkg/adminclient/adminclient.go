package adminclient

import (
	"fmt"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// Client is an admin API client and its connection.
type Client struct {
	adminv1.AdminAPIClient
	Conn *grpc.ClientConn
}

// Dial connects to the admin socket at path. The socket is local and
// protected by its mode and the server's peer-uid check, so no TLS is used.
func Dial(path string) (*Client, error) {
	if path == "" {
		return nil, fmt.Errorf("adminclient: no admin socket given (--admin-socket or SHORTLEAF_ADMIN_SOCKET)")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("adminclient: %w", err)
	}
	conn, err := grpc.NewClient("unix://"+abs, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("adminclient: %w", err)
	}
	return &Client{AdminAPIClient: adminv1.NewAdminAPIClient(conn), Conn: conn}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.Conn.Close() }
