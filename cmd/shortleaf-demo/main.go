// Command shortleaf-demo shows shortleaf end to end from a workload's side. It
// uses only go-spiffe: one X509Source acts as a server workload (the SVID with
// hint "server"), another as a client workload (the SVID without a hint);
// they talk mTLS with spiffetls, each authorizing the other's SPIFFE ID. It
// prints both identities, the chain and lifetimes, waits for the agent to
// renew the client's SVID, shows the new serial, and talks mTLS again.
//
// It reads SPIFFE_ENDPOINT_SOCKET like any go-spiffe program; make demo runs
// it against `shortleaf dev`.
package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func main() {
	timeout := flag.Duration("timeout", 80*time.Second, "give up after this long")
	serverHint := flag.String("server-hint", "server", "hint of the SVID the server workload uses")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := run(ctx, *serverHint); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// pick returns a picker choosing the SVID with the given hint.
func pick(hint string) func([]*x509svid.SVID) *x509svid.SVID {
	return func(svids []*x509svid.SVID) *x509svid.SVID {
		for _, s := range svids {
			if s.Hint == hint {
				return s
			}
		}
		return svids[0]
	}
}

func run(ctx context.Context, serverHint string) error {
	serverSource, err := workloadapi.NewX509Source(ctx, workloadapi.WithDefaultX509SVIDPicker(pick(serverHint)))
	if err != nil {
		return fmt.Errorf("server workload: X509Source: %w", err)
	}
	defer serverSource.Close()
	clientSource, err := workloadapi.NewX509Source(ctx, workloadapi.WithDefaultX509SVIDPicker(pick("")))
	if err != nil {
		return fmt.Errorf("client workload: X509Source: %w", err)
	}
	defer clientSource.Close()

	serverSVID, err := waitForHint(ctx, serverSource, serverHint)
	if err != nil {
		return err
	}
	clientSVID, err := clientSource.GetX509SVID()
	if err != nil {
		return err
	}
	fmt.Println("== identities from the SPIFFE Workload API")
	describe("server workload", serverSVID)
	describe("client workload", clientSVID)

	lis, err := spiffetls.ListenWithMode(ctx, "tcp", "127.0.0.1:0",
		spiffetls.MTLSServerWithSource(tlsconfig.AuthorizeID(clientSVID.ID), serverSource))
	if err != nil {
		return fmt.Errorf("server workload: listen: %w", err)
	}
	defer lis.Close()
	go serve(lis)

	fmt.Println("\n== mTLS with the first SVIDs")
	if err := request(ctx, lis.Addr().String(), serverSVID.ID, clientSource); err != nil {
		return err
	}

	fmt.Printf("\n== waiting for the agent to renew the client SVID (serial %s, half-life %s)\n",
		clientSVID.Certificates[0].SerialNumber.Text(16), time.Until(clientSVID.Certificates[0].NotAfter)/2)
	renewed, err := waitForRenewal(ctx, clientSource, clientSVID.Certificates[0])
	if err != nil {
		return err
	}
	describe("client workload (renewed)", renewed)
	fmt.Println("\n== mTLS with the renewed SVID")
	if err := request(ctx, lis.Addr().String(), serverSVID.ID, clientSource); err != nil {
		return err
	}
	fmt.Println("\ndemo finished: both workloads authenticated each other and the SVID renewed before expiry")
	return nil
}

func describe(role string, s *x509svid.SVID) {
	leaf := s.Certificates[0]
	fmt.Printf("%s: %s\n", role, s.ID)
	for i, c := range s.Certificates {
		kind := "leaf"
		if i > 0 {
			kind = "intermediate"
		}
		fmt.Printf("  %-12s serial %s  subject %q  issuer %q\n", kind, c.SerialNumber.Text(16), c.Subject.String(), c.Issuer.CommonName)
		fmt.Printf("  %-12s valid %s .. %s (%s)\n", "", c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339), c.NotAfter.Sub(c.NotBefore))
	}
	if len(leaf.DNSNames) > 0 {
		fmt.Printf("  DNS names: %v\n", leaf.DNSNames)
	}
}

func waitForHint(ctx context.Context, src *workloadapi.X509Source, hint string) (*x509svid.SVID, error) {
	for {
		if s, err := src.GetX509SVID(); err == nil && s.Hint == hint {
			return s, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no SVID with hint %q arrived (is the demo entry registered?)", hint)
		case <-src.Updated():
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func waitForRenewal(ctx context.Context, src *workloadapi.X509Source, old *x509.Certificate) (*x509svid.SVID, error) {
	for {
		s, err := src.GetX509SVID()
		if err == nil && s.Certificates[0].SerialNumber.Cmp(old.SerialNumber) != 0 {
			if time.Now().After(old.NotAfter) {
				return nil, errors.New("the SVID was renewed only after it expired")
			}
			return s, nil
		}
		select {
		case <-ctx.Done():
			return nil, errors.New("no renewal arrived in time")
		case <-src.Updated():
		}
	}
}

// serve answers each connection with the peer's SPIFFE ID.
func serve(lis net.Listener) {
	for {
		conn, err := lis.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			line, err := bufio.NewReader(conn).ReadString('\n')
			if err != nil {
				return
			}
			peer, err := spiffetls.PeerIDFromConn(conn)
			if err != nil {
				return
			}
			fmt.Fprintf(conn, "server saw %s say %q\n", peer, line[:len(line)-1])
		}()
	}
}

func request(ctx context.Context, addr string, serverID spiffeid.ID, src *workloadapi.X509Source) error {
	conn, err := spiffetls.DialWithMode(ctx, "tcp", addr, spiffetls.MTLSClientWithSource(tlsconfig.AuthorizeID(serverID), src))
	if err != nil {
		return fmt.Errorf("client workload: mTLS dial: %w", err)
	}
	defer conn.Close()
	if _, err := fmt.Fprintln(conn, "hello"); err != nil {
		return err
	}
	reply, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return fmt.Errorf("client workload: read: %w", err)
	}
	peer, _ := spiffetls.PeerIDFromConn(conn)
	fmt.Printf("client authenticated server %s; %s", peer, reply)
	return nil
}
