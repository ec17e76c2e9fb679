package harness_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// mtlsProbe is two go-spiffe workloads that handshake mTLS with each other
// without pause, from start until stop, and count what their users would
// see: failed handshakes, and moments a workload held an SVID past its
// NotAfter.
type mtlsProbe struct {
	ok, failed, expired atomic.Int64
	firstFailure        atomic.Value // string
	firstExpired        atomic.Value // string
	mu                  sync.Mutex
	intermediates       map[string]bool // subject key IDs seen in either chain
	cancel              context.CancelFunc
	done                chan struct{}
}

// startMTLSProbe serves echo over mTLS as server (authorizing client's ID)
// and dials it as client (authorizing server's ID) every 20ms.
func startMTLSProbe(t *testing.T, server *workloadapi.X509Source, serverID spiffeid.ID, client *workloadapi.X509Source, clientID spiffeid.ID) *mtlsProbe {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	lis, err := spiffetls.ListenWithMode(ctx, "tcp", "127.0.0.1:0", spiffetls.MTLSServerWithSource(tlsconfig.AuthorizeID(clientID), server))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	go echo(lis)
	p := &mtlsProbe{intermediates: map[string]bool{}, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		defer lis.Close()
		for ctx.Err() == nil {
			p.handshake(ctx, lis.Addr().String(), serverID, client)
			p.checkExpiry(server, client)
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(p.stop)
	return p
}

func echo(lis net.Listener) {
	for {
		conn, err := lis.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			if line, err := bufio.NewReader(conn).ReadString('\n'); err == nil {
				fmt.Fprint(conn, line)
			}
		}()
	}
}

func (p *mtlsProbe) handshake(ctx context.Context, addr string, serverID spiffeid.ID, client *workloadapi.X509Source) {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := spiffetls.DialWithMode(dctx, "tcp", addr, spiffetls.MTLSClientWithSource(tlsconfig.AuthorizeID(serverID), client))
	if err == nil {
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = fmt.Fprintln(conn, "ping")
		if err == nil {
			_, err = bufio.NewReader(conn).ReadString('\n')
		}
		_ = conn.Close()
	}
	switch {
	case ctx.Err() != nil: // stopped mid-handshake: not a failure
	case err != nil:
		p.failed.Add(1)
		p.firstFailure.CompareAndSwap(nil, fmt.Sprintf("%s: %v", time.Now().Format(time.StampMilli), err))
	default:
		p.ok.Add(1)
	}
}

// checkExpiry records each workload's current SVID: its intermediate, and
// whether it is past its NotAfter (what a workload must never hold).
func (p *mtlsProbe) checkExpiry(sources ...*workloadapi.X509Source) {
	now := time.Now()
	for _, src := range sources {
		svid, err := src.GetX509SVID()
		if err != nil {
			continue
		}
		leaf := svid.Certificates[0]
		if now.After(leaf.NotAfter) {
			p.expired.Add(1)
			p.firstExpired.CompareAndSwap(nil, fmt.Sprintf("%s held an SVID that expired at %s (now %s)",
				svid.ID, leaf.NotAfter.Format(time.StampMilli), now.Format(time.StampMilli)))
		}
		if len(svid.Certificates) > 1 {
			p.mu.Lock()
			p.intermediates[string(svid.Certificates[1].SubjectKeyId)] = true
			p.mu.Unlock()
		}
	}
}

func (p *mtlsProbe) stop() {
	p.cancel()
	<-p.done
}

// intermediatesSeen counts the distinct intermediates the workloads' SVIDs
// chained through.
func (p *mtlsProbe) intermediatesSeen() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.intermediates)
}

// requireClean stops the probe and fails the test if any handshake failed
// or any SVID was held past expiry.
func (p *mtlsProbe) requireClean(t *testing.T) {
	t.Helper()
	p.stop()
	if n := p.failed.Load(); n > 0 {
		t.Errorf("%d of %d handshakes failed; first: %v", n, n+p.ok.Load(), p.firstFailure.Load())
	}
	if n := p.expired.Load(); n > 0 {
		t.Errorf("a workload held an expired SVID %d times; first: %v", n, p.firstExpired.Load())
	}
	if p.ok.Load() == 0 {
		t.Error("no handshake succeeded")
	}
}
