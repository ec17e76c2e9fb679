// Command shortleaf-load measures a real shortleaf server under the load its
// agents make. It starts `shortleaf server` as a child process (so the
// server's CPU time and memory are its own, not the load's), registers
// agents × entries through the admin API in batches (the registration
// burst), attests every simulated agent with a join token over the real
// agent API, and then drives, through BatchNewX509SVID over mTLS as agents
// do:
//
//   - the first issuance: every SVID at once;
//   - steady renewal at half-life (±10%) for --duration;
//   - a forced taint storm: every SVID replaced at once, as a taint of the
//     active intermediate makes every agent do.
//
// Each simulated agent sends each CSR's current NotAfter, renews the most
// urgent first and waits for the server's retry-after hint when shed, as
// the real agent does. For each phase it reports SVIDs/s, p50/p99 call
// latency, the server's CPU time per SVID and its ratio to the crypto bound
// measured in the same run (one CSR check and one signature on one core),
// the server's peak RSS, shed CSRs, and the most SVIDs past their NotAfter at
// any 100 ms sample (which must be 0).
//
//	shortleaf-load --shortleaf bin/shortleaf --agents 20 --entries 250 --ttl 1m --duration 40s
package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/shortleaf/shortleaf/pkg/adminclient"
	"github.com/shortleaf/shortleaf/pkg/agent"
	"github.com/shortleaf/shortleaf/pkg/api"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
	agentv1 "github.com/shortleaf/shortleaf/proto/agent/v1"
)

const trustDomain = "example.org"

type options struct {
	shortleaf       string
	agents, entries int
	ttl, duration   time.Duration
	signingCapacity float64
	signingQueue    int
	keep            bool
}

func main() {
	var o options
	flag.StringVar(&o.shortleaf, "shortleaf", "shortleaf", "the shortleaf binary to run as the server")
	flag.IntVar(&o.agents, "agents", 20, "simulated agents")
	flag.IntVar(&o.entries, "entries", 250, "entries (SVIDs) per agent")
	flag.DurationVar(&o.ttl, "ttl", time.Minute, "X.509-SVID lifetime (1m to 24h)")
	flag.DurationVar(&o.duration, "duration", 40*time.Second, "length of the steady renewal phase (renewals start at half the TTL)")
	flag.Float64Var(&o.signingCapacity, "signing-capacity", 0, "the server's limits.signing_capacity (SVIDs/s; 0: off)")
	flag.IntVar(&o.signingQueue, "signing-queue", 0, "the server's limits.signing_queue (0: default)")
	flag.BoolVar(&o.keep, "keep", false, "keep the server's data directory")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "shortleaf-load:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	dir, err := os.MkdirTemp("", "shortleaf-load-")
	if err != nil {
		return err
	}
	if !o.keep {
		defer os.RemoveAll(dir)
	}
	srv, err := startServer(o, dir)
	if err != nil {
		return err
	}
	defer srv.stop()
	ctx := context.Background()

	bound := cryptoBound()
	fmt.Printf("crypto bound: %.1f µs per SVID on one core (CSR signature check + P-256 signature)\n", bound*1e6)
	fmt.Printf("load: %d agents × %d entries = %d SVIDs of %s; server pid %d\n\n", o.agents, o.entries, o.agents*o.entries, o.ttl, srv.cmd.Process.Pid)

	// Registration burst.
	tokens := make([]*adminv1.CreateJoinTokenResponse, o.agents)
	for i := range tokens {
		if tokens[i], err = srv.admin.CreateJoinToken(ctx, &adminv1.CreateJoinTokenRequest{TtlSeconds: 3600}); err != nil {
			return err
		}
	}
	var all []*adminv1.Entry
	for a, tok := range tokens {
		for e := range o.entries {
			all = append(all, &adminv1.Entry{SpiffeId: fmt.Sprintf("spiffe://%s/load/%d/%d", trustDomain, a, e), ParentId: tok.GetAgentId(),
				Selectors: []string{"unix:uid:" + strconv.Itoa(10000+e)}})
		}
	}
	cpu0, start := srv.cpuSeconds(), time.Now()
	ids := make([]string, 0, len(all))
	for from := 0; from < len(all); from += 1000 {
		resp, err := srv.admin.BatchCreateEntry(ctx, &adminv1.BatchCreateEntryRequest{Entries: all[from:min(from+1000, len(all))]})
		if err != nil {
			return fmt.Errorf("register: %w", err)
		}
		for _, r := range resp.GetResults() {
			if r.GetStatusCode() != 0 {
				return fmt.Errorf("register: %s", r.GetStatusMessage())
			}
			ids = append(ids, r.GetEntry().GetId())
		}
	}
	took := time.Since(start)
	fmt.Printf("%-16s %d entries in %s: %.0f entries/s, server CPU %.1f µs per entry\n", "registration burst", len(ids), took.Round(time.Millisecond),
		float64(len(ids))/took.Seconds(), (srv.cpuSeconds()-cpu0)/float64(len(ids))*1e6)

	bundle, err := srv.admin.GetBundle(ctx, &adminv1.GetBundleRequest{})
	if err != nil {
		return err
	}
	roots, err := parseCerts(bundle.GetX509Authorities())
	if err != nil {
		return err
	}
	agents := make([]*simAgent, o.agents)
	for i, tok := range tokens {
		if agents[i], err = attest(ctx, srv.agentAddr, roots, tok.GetToken(), ids[i*o.entries:(i+1)*o.entries], o.entries, i); err != nil {
			return fmt.Errorf("agent %d: %w", i, err)
		}
		defer agents[i].conn.Close()
	}

	// Past-expiry sampling across every phase.
	var maxExpired atomic.Int64
	sampleCtx, stopSampling := context.WithCancel(ctx)
	defer stopSampling()
	go func() {
		for sampleCtx.Err() == nil {
			now := time.Now()
			n := 0
			for _, a := range agents {
				n += a.expired(now)
			}
			if int64(n) > maxExpired.Load() {
				maxExpired.Store(int64(n))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()

	phase := func(name string, drive func(ctx context.Context, a *simAgent) error, until func() bool) error {
		st := newStats()
		for _, a := range agents {
			a.stats = st
		}
		cpu0, rss0, start := srv.cpuSeconds(), srv.peakRSS(), time.Now()
		maxExpired.Store(0)
		pctx, cancel := context.WithCancel(ctx)
		defer cancel()
		var wg sync.WaitGroup
		errs := make(chan error, len(agents))
		for _, a := range agents {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := drive(pctx, a); err != nil && !errors.Is(err, context.Canceled) {
					errs <- err
				}
			}()
		}
		for !until() {
			select {
			case err := <-errs:
				cancel()
				wg.Wait()
				return err
			case <-time.After(50 * time.Millisecond):
			}
		}
		cancel()
		wg.Wait()
		took := time.Since(start)
		signed := st.signed.Load()
		cpu := srv.cpuSeconds() - cpu0
		perSVID := cpu / float64(max(signed, 1))
		p50, p99 := st.percentiles()
		cost := "server CPU -"
		if signed > 0 {
			cost = fmt.Sprintf("server CPU %5.1f µs/SVID = %.2fx crypto bound", perSVID*1e6, perSVID/bound)
		}
		fmt.Printf("%-16s %6d SVIDs in %7s: %6.0f/s  call p50 %6.1f ms p99 %6.1f ms  %s  shed %d  RSS %s→%s  past expiry (max) %d\n",
			name, signed, took.Round(time.Millisecond), float64(signed)/took.Seconds(), p50, p99, cost,
			st.shed.Load(), mib(rss0), mib(srv.peakRSS()), maxExpired.Load())
		return nil
	}

	total := o.agents * o.entries
	held := func() bool {
		for _, a := range agents {
			if a.heldCount() < o.entries {
				return false
			}
		}
		return true
	}
	if err := phase("first issuance", func(ctx context.Context, a *simAgent) error { return a.renewLoop(ctx, o.ttl) }, held); err != nil {
		return err
	}
	steadyEnd := time.Now().Add(o.duration)
	if err := phase("steady renewal", func(ctx context.Context, a *simAgent) error { return a.renewLoop(ctx, o.ttl) },
		func() bool { return time.Now().After(steadyEnd) }); err != nil {
		return err
	}
	for _, a := range agents {
		a.forceAll()
	}
	var replaced func() bool
	marker := time.Now()
	replaced = func() bool {
		n := 0
		for _, a := range agents {
			n += a.issuedSince(marker)
		}
		return n >= total
	}
	if err := phase("taint storm", func(ctx context.Context, a *simAgent) error { return a.renewLoop(ctx, o.ttl) }, replaced); err != nil {
		return err
	}
	metrics := srv.scrape("shortleaf_server_signing_shed_total", "shortleaf_server_signing_queue_wait_seconds_count")
	fmt.Printf("\nserver metrics: %s\n", metrics)
	return nil
}

// simAgent is one agent as the server sees it: an mTLS connection with its
// agent SVID and its entries, each with a pre-made CSR (the server does not
// look at whether a key is reused; making a key per renewal would only load
// this process) and the SVID it holds.
type simAgent struct {
	conn   *grpc.ClientConn
	client agentv1.AgentAPIClient
	stats  *stats

	mu       sync.Mutex
	ids      []string
	csrs     [][]byte
	notAfter []time.Time // of the SVID held; zero: none
	issuedAt []time.Time
	renewAt  []time.Time
}

func attest(ctx context.Context, addr string, roots []*x509.Certificate, token string, ids []string, n, index int) (*simAgent, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, err
	}
	serverID := spiffeid.RequireFromString("spiffe://" + trustDomain + "/shortleaf/server")
	bundle := x509BundleSource(roots)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(serverID)))))
	if err != nil {
		return nil, err
	}
	resp, err := agent.AttestCall(ctx, agentv1.NewAgentAPIClient(conn), &agentv1.AttestAgentRequest{
		Attestation: &agentv1.AttestAgentRequest_JoinToken{JoinToken: &agentv1.JoinTokenAttestation{Token: token}}, Csr: csr}, nil)
	_ = conn.Close()
	if err != nil {
		return nil, err
	}
	svid, err := x509svid.ParseRaw(bytes.Join(resp.GetSvid().GetCertChain(), nil), mustPKCS8(key))
	if err != nil {
		return nil, err
	}
	conn, err = grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(serverID)))))
	if err != nil {
		return nil, err
	}
	a := &simAgent{conn: conn, client: agentv1.NewAgentAPIClient(conn), ids: ids,
		notAfter: make([]time.Time, n), issuedAt: make([]time.Time, n), renewAt: make([]time.Time, n)}
	for e := range n {
		id := spiffeid.RequireFromString(fmt.Sprintf("spiffe://%s/load/%d/%d", trustDomain, index, e))
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, k)
		if err != nil {
			return nil, err
		}
		a.csrs = append(a.csrs, der)
	}
	return a, nil
}

// renewLoop renews, most urgent first and in batches of at most 500, every
// SVID whose renewal time has come, and waits for the server's hint when it
// sheds.
func (a *simAgent) renewLoop(ctx context.Context, ttl time.Duration) error {
	for ctx.Err() == nil {
		now := time.Now()
		due := a.due(now)
		if len(due) == 0 {
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		req := &agentv1.BatchNewX509SVIDRequest{}
		a.mu.Lock()
		for _, i := range due[:min(len(due), 500)] {
			p := &agentv1.NewX509SVIDParams{EntryId: a.ids[i], Csr: a.csrs[i]}
			if !a.notAfter[i].IsZero() {
				p.CurrentNotAfter = a.notAfter[i].Unix()
			}
			req.Params = append(req.Params, p)
		}
		a.mu.Unlock()
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		start := time.Now()
		resp, err := a.client.BatchNewX509SVID(cctx, req)
		cancel()
		a.stats.latency(time.Since(start))
		if st, ok := status.FromError(err); ok && err != nil && st.Code() == codes.ResourceExhausted {
			a.stats.shed.Add(int64(len(req.Params)))
			if !sleep(ctx, retryHint(st)) {
				return ctx.Err()
			}
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("BatchNewX509SVID: %w", err)
		}
		var hint time.Duration
		now = time.Now()
		a.mu.Lock()
		for k, r := range resp.GetResults() {
			i := due[k]
			switch {
			case r.GetStatusCode() == int32(codes.ResourceExhausted):
				a.stats.shed.Add(1)
				hint = max(hint, time.Duration(r.GetRetryAfterMs())*time.Millisecond)
			case r.GetStatusCode() != 0:
				a.mu.Unlock()
				return fmt.Errorf("entry %s: %s", a.ids[i], r.GetStatusMessage())
			default:
				leaf, err := x509.ParseCertificate(r.GetSvid().GetCertChain()[0])
				if err != nil {
					a.mu.Unlock()
					return err
				}
				a.notAfter[i], a.issuedAt[i] = leaf.NotAfter, now
				half := leaf.NotAfter.Sub(now) / 2
				a.renewAt[i] = now.Add(time.Duration(float64(half) * (0.9 + 0.2*mrand.Float64()))) //nolint:gosec // jitter
				a.stats.signed.Add(1)
			}
		}
		a.mu.Unlock()
		if hint > 0 && !sleep(ctx, hint+time.Duration(mrand.Int64N(int64(hint/2)+1))) { //nolint:gosec // jitter
			return ctx.Err()
		}
	}
	return ctx.Err()
}

// due lists the entries to renew, those without an SVID first, then by
// expiry.
func (a *simAgent) due(now time.Time) []int {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []int
	for i := range a.ids {
		if a.notAfter[i].IsZero() || !now.Before(a.renewAt[i]) {
			out = append(out, i)
		}
	}
	slices.SortFunc(out, func(x, y int) int { return a.notAfter[x].Compare(a.notAfter[y]) })
	return out
}

func (a *simAgent) forceAll() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := range a.renewAt {
		a.renewAt[i] = time.Time{}
	}
}

func (a *simAgent) expired(now time.Time) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, na := range a.notAfter {
		if !na.IsZero() && !now.Before(na) {
			n++
		}
	}
	return n
}

func (a *simAgent) heldCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, na := range a.notAfter {
		if !na.IsZero() {
			n++
		}
	}
	return n
}

func (a *simAgent) issuedSince(t time.Time) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, at := range a.issuedAt {
		if at.After(t) {
			n++
		}
	}
	return n
}

// stats are one phase's figures, shared by the agents.
type stats struct {
	signed, shed atomic.Int64
	mu           sync.Mutex
	calls        []time.Duration
}

func newStats() *stats { return &stats{} }

func (s *stats) latency(d time.Duration) {
	s.mu.Lock()
	s.calls = append(s.calls, d)
	s.mu.Unlock()
}

func (s *stats) percentiles() (p50, p99 float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.calls) == 0 {
		return 0, 0
	}
	slices.Sort(s.calls)
	at := func(q float64) float64 {
		return float64(s.calls[min(len(s.calls)-1, int(q*float64(len(s.calls))))].Microseconds()) / 1000
	}
	return at(0.50), at(0.99)
}

func retryHint(st *status.Status) time.Duration {
	if d, ok := api.RetryAfter(st); ok {
		return d
	}
	return time.Second
}

func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// cryptoBound is the CPU seconds one core needs for an SVID's unavoidable
// work: checking the CSR's signature and signing the certificate.
func cryptoBound() float64 {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	caTpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bound"}, NotBefore: now, NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTpl, caTpl, caKey.Public(), caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	id := spiffeid.RequireFromString("spiffe://" + trustDomain + "/bound")
	csrDER, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	n := 0
	start := time.Now()
	for time.Since(start) < 2*time.Second {
		csr, _ := x509.ParseCertificateRequest(csrDER)
		_ = csr.CheckSignature()
		tpl := &x509.Certificate{SerialNumber: big.NewInt(int64(n) + 2), NotBefore: now, NotAfter: now.Add(time.Minute), URIs: csr.URIs}
		_, _ = x509.CreateCertificate(rand.Reader, tpl, caCert, csr.PublicKey, caKey)
		n++
	}
	return time.Since(start).Seconds() / float64(n)
}

// server is the child `shortleaf server`.
type server struct {
	cmd         *exec.Cmd
	admin       *adminclient.Client
	agentAddr   string
	metricsAddr string
}

func startServer(o options, dir string) (*server, error) {
	agentAddr, metricsAddr := freeAddr(), freeAddr()
	ttl := o.ttl
	cfg := fmt.Sprintf(`trust_domain: %s
data_dir: %s
agent_api_address: %s
admin_socket: %s
metrics_address: %s
x509_svid_ttl: %s
max_x509_svid_ttl: 1h
log_level: warn
limits:
  attestations_per_second: -1
  svids_per_second: -1
  max_connections: 100000
`, trustDomain, filepath.Join(dir, "data"), agentAddr, filepath.Join(dir, "admin.sock"), metricsAddr, ttl)
	if o.signingCapacity > 0 {
		cfg += fmt.Sprintf("  signing_capacity: %g\n", o.signingCapacity)
	}
	if o.signingQueue > 0 {
		cfg += fmt.Sprintf("  signing_queue: %d\n", o.signingQueue)
	}
	path := filepath.Join(dir, "server.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command(o.shortleaf, "server", "--config", path) //nolint:gosec // the binary the operator named
	cmd.Env = append(os.Environ(), "SHORTLEAF_KEY_PASSPHRASE=load-test-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", o.shortleaf, err)
	}
	s := &server{cmd: cmd, agentAddr: agentAddr, metricsAddr: metricsAddr}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if c, err := adminclient.Dial(filepath.Join(dir, "admin.sock")); err == nil {
			if _, err := c.GetBundle(context.Background(), &adminv1.GetBundleRequest{}); err == nil {
				s.admin = c
				return s, nil
			}
			_ = c.Close()
		}
		if time.Now().After(deadline) {
			s.stop()
			return nil, errors.New("the server did not answer within 60s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (s *server) stop() {
	if s.admin != nil {
		_ = s.admin.Close()
	}
	_ = s.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
}

// cpuSeconds is the server's user+system CPU time so far, from /proc.
func (s *server) cpuSeconds() float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces) start after ')'.
	fields := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+1:]))
	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)
	return (utime + stime) / 100 // USER_HZ
}

// peakRSS is the server's peak resident set (VmHWM), in bytes.
func (s *server) peakRSS() int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// scrape returns the named series of the server's /metrics, one line each.
func (s *server) scrape(names ...string) string {
	resp, err := http.Get("http://" + s.metricsAddr + "/metrics") //nolint:noctx // loopback, at the end of the run
	if err != nil {
		return "(metrics unavailable: " + err.Error() + ")"
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return "(metrics unavailable: " + err.Error() + ")"
	}
	var keep []string
	for _, line := range strings.Split(string(out), "\n") {
		for _, n := range names {
			if strings.HasPrefix(line, n) && !strings.HasSuffix(line, " 0") {
				keep = append(keep, line)
			}
		}
	}
	return strings.Join(keep, "; ")
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func mib(b int64) string { return fmt.Sprintf("%.0fMiB", float64(b)/(1<<20)) }

func parseCerts(ders [][]byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for _, d := range ders {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

func x509BundleSource(roots []*x509.Certificate) *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString(trustDomain), roots)
}

func mustPKCS8(key *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		panic(err)
	}
	return der
}
