package agent

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/resolver"
)

// The agent reaches the server through every address it is given: several
// server_address entries, and every address a DNS name among them resolves
// to. gRPC's pick_first policy connects to one, in a shuffled order, and
// moves on to the next when it fails; when a connection ends (a replica
// stopped, or the server's maximum connection age sent it away) the names
// are resolved and shuffled again, so agents spread over the replicas that
// are up instead of piling onto the first.

// serversScheme is the resolver scheme of the agent's server addresses.
const serversScheme = "shortleaf-servers"

// pickFirstShuffled is the client's service config.
const pickFirstShuffled = `{"loadBalancingConfig":[{"pick_first":{"shuffleAddressList":true}}]}`

// minReresolve spaces out re-resolutions when connections fail in a row.
const minReresolve = time.Second

// serverAddrs is a resolver.Builder over a fixed list of host:port
// addresses, names resolved at each build and on each ResolveNow.
type serverAddrs struct {
	addrs      []string
	lookupHost func(ctx context.Context, host string) ([]string, error)
}

func newServerAddrs(addrs []string) *serverAddrs {
	return &serverAddrs{addrs: addrs, lookupHost: net.DefaultResolver.LookupHost}
}

// String is the list as logs show it.
func (s *serverAddrs) String() string { return strings.Join(s.addrs, ",") }

func (s *serverAddrs) Scheme() string { return serversScheme }

func (s *serverAddrs) Build(_ resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	ctx, cancel := context.WithCancel(context.Background())
	r := &serversResolver{servers: s, cc: cc, ctx: ctx, cancel: cancel, kick: make(chan struct{}, 1)}
	r.wg.Add(1)
	go r.run()
	r.ResolveNow(resolver.ResolveNowOptions{})
	return r, nil
}

// resolve returns every address of every entry; an entry whose name does
// not resolve is skipped while another entry gives addresses.
func (s *serverAddrs) resolve(ctx context.Context) ([]resolver.Address, error) {
	var out []resolver.Address
	var errs []string
	for _, a := range s.addrs {
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		if net.ParseIP(host) != nil {
			out = append(out, resolver.Address{Addr: a})
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ips, err := s.lookupHost(lctx, host)
		cancel()
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		for _, ip := range ips {
			out = append(out, resolver.Address{Addr: net.JoinHostPort(ip, port), ServerName: host})
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("agent: no server address resolves (%s): %s", s, strings.Join(errs, "; "))
	}
	// pick_first shuffles too; shuffling here as well keeps the order
	// random when gRPC keeps the previous list.
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] }) //nolint:gosec // spreads load; nothing secret depends on the order
	return out, nil
}

type serversResolver struct {
	servers *serverAddrs
	cc      resolver.ClientConn
	ctx     context.Context
	cancel  context.CancelFunc
	kick    chan struct{}
	wg      sync.WaitGroup
}

func (r *serversResolver) run() {
	defer r.wg.Done()
	var last time.Time
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-r.kick:
		}
		if wait := minReresolve - time.Since(last); !last.IsZero() && wait > 0 {
			select {
			case <-r.ctx.Done():
				return
			case <-time.After(wait):
			}
		}
		last = time.Now()
		addrs, err := r.servers.resolve(r.ctx)
		if err != nil {
			r.cc.ReportError(err)
			continue
		}
		_ = r.cc.UpdateState(resolver.State{Addresses: addrs})
	}
}

func (r *serversResolver) ResolveNow(resolver.ResolveNowOptions) {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

func (r *serversResolver) Close() {
	r.cancel()
	r.wg.Wait()
}
