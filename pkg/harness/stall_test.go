package harness_test

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/shortleaf/shortleaf/pkg/harness"
	agentv1 "github.com/shortleaf/shortleaf/proto/agent/v1"
)

// stallConn is an HTTP/2 client that opens gRPC streams, declares a message
// of a given length and sends all of it but the last byte, then stalls: the
// way to make a server hold as much memory per stream as it will.
type stallConn struct {
	conn net.Conn
	fr   *http2.Framer
	wmu  sync.Mutex // the framer's writes are not safe for concurrent use

	mu         sync.Mutex
	cond       *sync.Cond
	connWindow int64
	streamWin  map[uint32]int64
	initialWin int64
	reset      map[uint32]bool
	closed     bool
}

func dialStall(t *testing.T, addr string) *stallConn {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{
		MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}, InsecureSkipVerify: true, //nolint:gosec // an attacker's client
	})
	if err != nil {
		t.Fatal(err)
	}
	s := &stallConn{conn: conn, fr: http2.NewFramer(conn, conn), connWindow: 65535, initialWin: 65535,
		streamWin: map[uint32]int64{}, reset: map[uint32]bool{}}
	s.cond = sync.NewCond(&s.mu)
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	if err := s.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	go s.read()
	t.Cleanup(func() { _ = conn.Close() })
	return s
}

// read applies the server's flow-control updates and notes refused streams.
func (s *stallConn) read() {
	defer func() {
		s.mu.Lock()
		s.closed = true
		s.cond.Broadcast()
		s.mu.Unlock()
	}()
	for {
		f, err := s.fr.ReadFrame()
		if err != nil {
			return
		}
		s.mu.Lock()
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
					for id := range s.streamWin {
						s.streamWin[id] += int64(v) - s.initialWin
					}
					s.initialWin = int64(v)
				}
				s.mu.Unlock()
				_ = s.write(func() error { return s.fr.WriteSettingsAck() })
				continue
			}
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				s.connWindow += int64(f.Increment)
			} else {
				s.streamWin[f.StreamID] += int64(f.Increment)
			}
		case *http2.RSTStreamFrame:
			s.reset[f.StreamID] = true
		case *http2.HeadersFrame:
			if f.StreamEnded() {
				s.reset[f.StreamID] = true // trailers only: the call was answered with an error
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				s.mu.Unlock()
				_ = s.write(func() error { return s.fr.WritePing(true, f.Data) })
				continue
			}
		}
		s.cond.Broadcast()
		s.mu.Unlock()
	}
}

func (s *stallConn) write(f func() error) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return f()
}

// stall opens stream id for method, declares a message of declared bytes
// and sends declared-1 of them, or less if the server refuses the stream.
func (s *stallConn) stall(t *testing.T, id uint32, method string, declared int) {
	t.Helper()
	var hdr bytes.Buffer
	enc := hpack.NewEncoder(&hdr)
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "https"}, {":path", method}, {":authority", "x"},
		{"content-type", "application/grpc"}, {"te", "trailers"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	s.mu.Lock()
	s.streamWin[id] = s.initialWin
	s.mu.Unlock()
	if err := s.write(func() error {
		return s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hdr.Bytes(), EndHeaders: true})
	}); err != nil {
		t.Fatal(err)
	}
	prefix := make([]byte, 5)
	binary.BigEndian.PutUint32(prefix[1:], uint32(declared)) //nolint:gosec // test sizes are small
	payload := append(prefix, make([]byte, declared-1)...)
	const chunk = 16 << 10
	for len(payload) > 0 {
		s.mu.Lock()
		for !s.closed && !s.reset[id] && (s.connWindow <= 0 || s.streamWin[id] <= 0) {
			s.cond.Wait()
		}
		if s.closed || s.reset[id] {
			s.mu.Unlock()
			return
		}
		n := int(min(int64(len(payload)), chunk, s.connWindow, s.streamWin[id]))
		s.connWindow -= int64(n)
		s.streamWin[id] -= int64(n)
		s.mu.Unlock()
		if err := s.write(func() error { return s.fr.WriteData(id, false, payload[:n]) }); err != nil {
			if errors.Is(err, io.EOF) {
				return
			}
			t.Fatal(err)
		}
		payload = payload[n:]
	}
}

// 200 streams that declare 4 MB messages and stall pin nothing (the
// transport refuses each on its length prefix), and 200 that declare the
// largest message the agent API takes and stall grow the server's RSS by
// less than 50 MiB. Once they close the memory is reused, not leaked: a
// second wave grows RSS no further. (Go hands freed memory back to the OS
// only after its next periodic GC, minutes later, so RSS itself is not
// awaited.)
func TestStalledStreamsDoNotExhaustServerMemory(t *testing.T) {
	p := harness.StartServerProcess(t, harness.ProcessConfig{})
	const conns, perConn = 4, 50
	method := agentv1.AgentAPI_BatchNewX509SVID_FullMethodName
	base := p.RSS(t)

	// wave opens conns×perConn stalled streams and returns the RSS growth;
	// with wantRefused it first waits for the server to refuse every stream.
	wave := func(t *testing.T, declared int, wantRefused bool) (grown int64) {
		var open []*stallConn
		for range conns {
			c := dialStall(t, p.AgentAddr)
			open = append(open, c)
			for i := range perConn {
				c.stall(t, uint32(2*i+1), method, declared) //nolint:gosec // small
			}
		}
		refused := func() int {
			n := 0
			for _, c := range open {
				c.mu.Lock()
				n += len(c.reset)
				c.mu.Unlock()
			}
			return n
		}
		if wantRefused {
			harness.Eventually(t, 30*time.Second, func() bool { return refused() == conns*perConn })
		} else if n := refused(); n != 0 {
			t.Fatalf("%d streams at the size limit were refused, want 0 (the test must pin memory to measure it)", n)
		}
		grown = p.RSS(t) - base
		for _, c := range open {
			_ = c.conn.Close()
		}
		t.Logf("%d stalled streams of %d bytes (refused: %v): server RSS %+d MiB", conns*perConn, declared, wantRefused, grown>>20)
		if grown >= 50<<20 {
			t.Fatalf("200 stalled streams grew the server's RSS by %d MiB, want < 50", grown>>20)
		}
		return grown
	}

	wave(t, 4<<20, true)
	first := wave(t, 128<<10, false)
	second := wave(t, 128<<10, false)
	if second-first >= 10<<20 {
		t.Fatalf("a second wave grew RSS by %d MiB more than the first: memory of closed streams is not reused", (second-first)>>20)
	}
}

// Once stalled streams close, the server frees what they held: measured in
// process on the Go heap after a collection (the runtime returns freed pages
// to the OS only lazily, so the process's RSS is the wrong gauge here; the
// test above shows the pages are reused).
func TestStalledStreamMemoryIsFreedOnClose(t *testing.T) {
	srv := harness.StartServer(t)
	heapInUse := func() int64 {
		runtime.GC()
		runtime.GC() // a second cycle frees what the first only unlinked (sync.Pools)
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return int64(m.HeapInuse) //nolint:gosec // far below 2^63
	}
	base := heapInUse()
	var open []*stallConn
	for range 4 {
		c := dialStall(t, srv.AgentAddr())
		open = append(open, c)
		for i := range 50 {
			c.stall(t, uint32(2*i+1), agentv1.AgentAPI_BatchNewX509SVID_FullMethodName, 128<<10) //nolint:gosec // small
		}
	}
	held := heapInUse() - base
	for _, c := range open {
		_ = c.conn.Close()
	}
	harness.Eventually(t, 30*time.Second, func() bool { return heapInUse()-base < 4<<20 })
	t.Logf("200 stalled streams held %d MiB of Go heap; after they closed, %+d MiB", held>>20, (heapInUse()-base)>>20)
	if held < 10<<20 {
		t.Fatalf("the stalled streams held only %d MiB: the test did not pin what it measures", held>>20)
	}
}
