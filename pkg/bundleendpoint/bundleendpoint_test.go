package bundleendpoint_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"

	"github.com/shortleaf/shortleaf/ca/catest"
	"github.com/shortleaf/shortleaf/pkg/bundleendpoint"
)

func startEndpoint(t *testing.T) string {
	t.Helper()
	c := catest.New(t)
	// A self-signed https_web certificate is enough: the tests look at TLS
	// and timeouts, not at who the endpoint is.
	cert := selfSigned(t)
	ep, err := bundleendpoint.New(bundleendpoint.Config{
		Addr: "127.0.0.1:0", TrustDomain: catest.TrustDomain,
		Bundle:      func() *spiffebundle.Bundle { return c.SPIFFEBundle(time.Minute) },
		Certificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ep.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("endpoint stopped with error: %v", err)
		}
	})
	return ep.Addr()
}

// TLS 1.2 is limited to forward-secret AEAD suites: a client that offers
// only CBC suites is refused; one that offers GCM is served.
func TestTLS12OnlyAEAD(t *testing.T) {
	addr := startEndpoint(t)
	dial := func(suite uint16) error {
		conn, err := tls.Dial("tcp", addr, &tls.Config{
			MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{suite},
			InsecureSkipVerify: true, //nolint:gosec // only the cipher suite matters here
		})
		if err == nil {
			_ = conn.Close()
		}
		return err
	}
	if err := dial(tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA); err == nil { //nolint:gosec // the weak suite under test
		t.Fatal("a CBC-only TLS 1.2 client was served")
	}
	if err := dial(tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256); err != nil {
		t.Fatalf("an AEAD TLS 1.2 client: %v", err)
	}
}

// A client that connects and then sends its request headers too slowly
// (slowloris) is cut off by the read timeouts instead of holding a
// connection forever.
func TestSlowClientIsCutOff(t *testing.T) {
	addr := startEndpoint(t)
	conn, err := tls.Dial("tcp", addr, &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true}) //nolint:gosec // as an attacker
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n")); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 1024)
	for {
		_, err := conn.Read(buf)
		if err == nil {
			continue // a 408 or similar answer before the close is fine
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("the endpoint kept a half-sent request open for 30s")
		}
		return
	}
}
