package harness

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// Proxy forwards TCP connections to a target address: a stand-in for one
// server replica's address, or for the network between a replica and etcd,
// which a test can take down (Cut: connections reset, as when the process
// behind it dies) or stall (Pause: bytes stop flowing but nothing is
// closed, as in a partition or a frozen process) while the process behind
// it stays up.
type Proxy struct {
	lis      net.Listener
	addr     string
	accepted atomic.Int64
	mu       sync.Mutex
	target   string
	conns    map[net.Conn]struct{}
	cut      bool
	// paused, while set, is closed by Resume; forwarding waits on it.
	paused chan struct{}
	wg     sync.WaitGroup
}

// StartProxy listens on a random loopback port and forwards to target.
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{lis: lis, addr: lis.Addr().String(), target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept(lis)
	t.Cleanup(p.Cut)
	return p
}

// Addr is the proxy's address; it stays the same across Reopen.
func (p *Proxy) Addr() string { return p.addr }

// Reopen listens again on the same address after Cut, forwarding to
// target: the address of a replica that was restarted.
func (p *Proxy) Reopen(target string) error {
	lis, err := net.Listen("tcp", p.addr)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.lis, p.target, p.cut = lis, target, false
	p.mu.Unlock()
	p.wg.Add(1)
	go p.accept(lis)
	return nil
}

// Pause stops forwarding bytes in both directions; connections stay open
// and new ones are accepted, but nothing reaches the other side until
// Resume.
func (p *Proxy) Pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.paused == nil {
		p.paused = make(chan struct{})
	}
}

// Resume lets bytes flow again after Pause.
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.paused != nil {
		close(p.paused)
		p.paused = nil
	}
}

// flowing waits while the proxy is paused.
func (p *Proxy) flowing() {
	p.mu.Lock()
	gate := p.paused
	p.mu.Unlock()
	if gate != nil {
		<-gate
	}
}

// Accepted counts the connections accepted so far.
func (p *Proxy) Accepted() int64 { return p.accepted.Load() }

// Open counts the client connections open now.
func (p *Proxy) Open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns) / 2
}

// Cut stops listening and drops every connection, as a replica that died.
func (p *Proxy) Cut() {
	p.mu.Lock()
	p.cut = true
	for c := range p.conns {
		_ = c.Close()
	}
	if p.paused != nil { // the held bytes go nowhere now
		close(p.paused)
		p.paused = nil
	}
	lis := p.lis
	p.mu.Unlock()
	_ = lis.Close()
	p.wg.Wait()
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut {
		_ = c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

func (p *Proxy) accept(lis net.Listener) {
	defer p.wg.Done()
	for {
		client, err := lis.Accept()
		if err != nil {
			return
		}
		p.accepted.Add(1)
		p.mu.Lock()
		target := p.target
		p.mu.Unlock()
		server, err := net.Dial("tcp", target)
		if err != nil {
			_ = client.Close()
			continue
		}
		if !p.track(client) || !p.track(server) {
			_ = client.Close()
			_ = server.Close()
			continue
		}
		p.wg.Add(2)
		pipe := func(dst, src net.Conn) {
			defer p.wg.Done()
			p.forward(dst, src)
			p.untrack(dst)
			p.untrack(src)
		}
		go pipe(client, server)
		go pipe(server, client)
	}
}

// forward copies src to dst until either fails, holding each read back
// while the proxy is paused.
func (p *Proxy) forward(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.flowing()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
