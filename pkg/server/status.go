package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/shortleaf/shortleaf/pkg/statuspage"
)

// statusSampleInterval is how often the issuance counters are sampled into
// the status page's hour of history.
const statusSampleInterval = 10 * time.Second

// statusPage is the read-only status page on its own listener.
type statusPage struct {
	lis        net.Listener
	srv        *http.Server
	history    *statuspage.History
	sample     func()
	clockAfter func(time.Duration) <-chan time.Time
}

func (s *Server) newStatusPage(addr string) (*statusPage, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("server: status_address: %w", err)
	}
	history := &statuspage.History{}
	cfg := statuspage.Config{TrustDomain: s.cfg.TrustDomain, ReplicaID: s.cfg.ReplicaID, CA: s.ca, Store: s.store, Issuance: history, IssuedTotals: s.metrics.IssuedTotals,
		ClockSkews: func() map[string]time.Duration { return s.agentAPI.ClockSkews(s.cfg.AgentLiveness) }, AgentLiveness: s.cfg.AgentLiveness,
		Clock: s.cfg.Clock, Logger: s.cfg.Logger}
	if s.auditLog != nil {
		cfg.AuditHead = func() (uint64, time.Time) {
			st := s.auditLog.Stats()
			return st.Head, st.LastCheckpoint
		}
	}
	return &statusPage{
		lis: lis, history: history,
		srv:        &http.Server{Handler: statuspage.Handler(cfg), ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second},
		sample:     func() { history.Observe(s.cfg.Clock.Now(), s.metrics.IssuedTotals()) },
		clockAfter: s.cfg.Clock.After,
	}, nil
}

// run serves the page and samples the issuance counters until ctx ends.
func (p *statusPage) run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- p.srv.Serve(p.lis) }()
	for {
		p.sample()
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
			defer cancel()
			_ = p.srv.Shutdown(sctx)
			return nil
		case err := <-errc:
			if !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("server: status page: %w", err)
			}
			return nil
		case <-p.clockAfter(statusSampleInterval):
		}
	}
}

func (p *statusPage) close() error {
	err := p.srv.Close()
	_ = p.lis.Close() // Close does not know the listener before Serve runs
	return err
}

// StatusURL is the status page's address as a URL, or "" when it is off.
func (s *Server) StatusURL() string {
	if s.status == nil {
		return ""
	}
	return "http://" + s.status.lis.Addr().String() + "/"
}
