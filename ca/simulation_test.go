package ca_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/ca/catest"
	"github.com/shortleaf/shortleaf/pkg/agent"
	"github.com/shortleaf/shortleaf/pkg/clock"
)

// The simulation runs the real CA (real keys, real certificates, the real
// schedule and admin operations) on a fake clock for 30 days, with agents
// that follow the real agent's renewal and taint policy (agent.RenewAt,
// agent.TaintedRenewAt) and sync every few seconds. go-spiffe's verifier is
// the judge: it verifies the first SVID of every (intermediate, bundle)
// pair; later SVIDs of the same intermediate differ from it only in their
// leaf fields, which are checked directly at every instant (validity,
// issuer). That keeps 30 days of one-minute SVIDs to under a minute.
const (
	simDays         = 30
	simStep         = 5 * time.Second
	simSync         = 5 * time.Second
	simWorkloadTTL  = time.Minute
	simAgentSVIDTTL = 5 * time.Minute
	simAgents       = 3
)

type simSVID struct {
	id      spiffeid.ID
	ttl     time.Duration
	key     crypto.Signer
	chain   []*x509.Certificate
	renewAt time.Time
	tainted bool
}

type simAgent struct {
	name     string
	bundle   *x509bundle.Bundle
	seq      uint64
	rootsKey string // identifies the bundle's X.509 content
	nextSync time.Time
	svids    []*simSVID
}

type simulation struct {
	t        *testing.T
	c        *ca.CA
	clk      *clock.Fake
	agents   []*simAgent
	verified map[string]bool // intermediate serial + bundle content that verified
	signed   int
}

func rootsKey(b *x509bundle.Bundle) string {
	h := sha256.New()
	for _, r := range b.X509Authorities() {
		h.Write(r.Raw)
	}
	return string(h.Sum(nil))
}

func (s *simulation) failf(format string, args ...any) {
	s.t.Helper()
	s.t.Fatalf("at %s (day %.2f): %s", s.clk.Now().Format(time.RFC3339), s.clk.Now().Sub(simStart).Hours()/24, fmt.Sprintf(format, args...))
}

var simStart = time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)

func newSimulation(t *testing.T) *simulation {
	clk := clock.NewFake(simStart)
	cfg := catest.Config(t)
	cfg.Clock, cfg.IntermediateTTL, cfg.MaxSVIDTTL = clk, time.Hour, simAgentSVIDTTL
	s := &simulation{t: t, c: catest.NewFromConfig(t, cfg), clk: clk, verified: map[string]bool{}}
	for i := range simAgents {
		a := &simAgent{name: fmt.Sprintf("spiffe://example.org/agent/sim/%d", i), nextSync: simStart.Add(time.Duration(i) * time.Second)}
		for _, spec := range []struct {
			path string
			ttl  time.Duration
		}{{fmt.Sprintf("/workload/%d", i), simWorkloadTTL}, {fmt.Sprintf("/agent/sim/%d", i), simAgentSVIDTTL}} {
			key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			a.svids = append(a.svids, &simSVID{id: spiffeid.RequireFromPath(catest.TrustDomain, spec.path), ttl: spec.ttl, key: key})
		}
		s.agents = append(s.agents, a)
		s.sync(a)
	}
	return s
}

// sync is what an agent learns from the server: the bundle and the tainted keys.
func (s *simulation) sync(a *simAgent) {
	now := s.clk.Now()
	a.bundle, a.seq = s.c.Bundle()
	a.rootsKey = rootsKey(a.bundle)
	tainted := map[string]bool{}
	for _, id := range s.c.TaintedKeyIDs() {
		tainted[string(id)] = true
	}
	for _, sv := range a.svids {
		if sv.chain != nil && !sv.tainted && tainted[string(sv.chain[0].AuthorityKeyId)] {
			sv.tainted = true
			sv.renewAt = agent.TaintedRenewAt(now, sv.renewAt, simSync)
		}
	}
	a.nextSync = now.Add(simSync)
}

// renew obtains a fresh SVID from the CA and checks what it must be.
func (s *simulation) renew(sv *simSVID) {
	now := s.clk.Now()
	chain, err := s.c.SignX509SVID(ca.X509SVIDParams{PublicKey: sv.key.Public(), SPIFFEID: sv.id, TTL: sv.ttl})
	if err != nil {
		s.failf("sign %s: %v", sv.id, err)
	}
	s.signed++
	leaf := chain[0]
	if !leaf.NotAfter.Equal(now.Add(sv.ttl)) {
		s.failf("%s got a lifetime cut to %s (want its full TTL %s)", sv.id, leaf.NotAfter.Sub(now), sv.ttl)
	}
	if leaf.NotAfter.After(chain[1].NotAfter) {
		s.failf("%s (until %s) outlives its signer (until %s)", sv.id, leaf.NotAfter, chain[1].NotAfter)
	}
	sv.chain, sv.tainted = chain, false
	sv.renewAt = agent.RenewAt(now, leaf.NotAfter)
}

// check is the invariant at this instant: every SVID any agent serves is
// valid now and verifies against every agent's current bundle.
func (s *simulation) check() {
	now := s.clk.Now()
	for _, holder := range s.agents {
		for _, sv := range holder.svids {
			for _, c := range sv.chain {
				if now.Before(c.NotBefore) || !now.Before(c.NotAfter) {
					s.failf("%s serves %s with a certificate valid %s..%s", holder.name, sv.id, c.NotBefore, c.NotAfter)
				}
			}
			leaf, inter := sv.chain[0], sv.chain[1]
			if string(leaf.AuthorityKeyId) != string(inter.SubjectKeyId) || string(leaf.RawIssuer) != string(inter.RawSubject) {
				s.failf("%s's SVID %s is not issued by the intermediate it is chained with", holder.name, sv.id)
			}
			for _, verifier := range s.agents {
				key := inter.SerialNumber.String() + verifier.rootsKey
				if s.verified[key] {
					continue
				}
				if _, _, err := x509svid.Verify(sv.chain, verifier.bundle, x509svid.WithTime(now)); err != nil {
					s.failf("%s's SVID %s does not verify against %s's bundle (sequence %d): %v", holder.name, sv.id, verifier.name, verifier.seq, err)
				}
				s.verified[key] = true
			}
		}
	}
}

func (s *simulation) inUse(keyID string) []string {
	var out []string
	for _, a := range s.agents {
		for _, sv := range a.svids {
			if fmt.Sprintf("%x", sv.chain[0].AuthorityKeyId) == keyID {
				out = append(out, a.name)
			}
		}
	}
	return out
}

func (s *simulation) lagging(seq uint64) []string {
	var out []string
	for _, a := range s.agents {
		if a.seq < seq {
			out = append(out, a.name)
		}
	}
	return out
}

func TestThirtyDaysOfRotation(t *testing.T) {
	if testing.Short() {
		t.Skip("the 30-day simulation takes a while")
	}
	s := newSimulation(t)
	for _, a := range s.agents {
		for _, sv := range a.svids {
			s.renew(sv)
		}
	}
	var (
		rootPreparedAt, rootActivatedAt, rootRetiredAt time.Time
		taintedAt, revokedAt                           time.Time
		taintedID, taintedKeyID                        string
		transitions                                    = map[string]int{}
	)
	end := simStart.Add(simDays * 24 * time.Hour)
	for s.clk.Now().Before(end) {
		s.clk.Add(simStep)
		now := s.clk.Now()
		if err := s.c.Rotate(ctx); err != nil {
			s.failf("rotate: %v", err)
		}
		day := now.Sub(simStart)

		// Day 10: root rotation, gated on every agent holding the new root.
		if rootPreparedAt.IsZero() && day >= 10*24*time.Hour {
			if _, err := s.c.PrepareRoot(ctx); err != nil {
				s.failf("root prepare: %v", err)
			}
			rootPreparedAt = now
		}
		if !rootPreparedAt.IsZero() && rootActivatedAt.IsZero() && now.After(rootPreparedAt) {
			if _, err := s.c.ActivateRoot(ctx, s.lagging, false); err == nil {
				rootActivatedAt = now
			} else if now.Sub(rootPreparedAt) > 2*simSync {
				s.failf("root activation still refused %s after prepare: %v", now.Sub(rootPreparedAt), err)
			}
		}
		if !rootActivatedAt.IsZero() && rootRetiredAt.IsZero() && now.Sub(rootActivatedAt) > time.Hour {
			if _, err := s.c.RetireRoot(ctx); err != nil {
				s.failf("root retire an hour after activation: %v", err)
			}
			rootRetiredAt = now
		}

		// Day 15: a forced rotation and taint of the replaced intermediate.
		if taintedAt.IsZero() && day >= 15*24*time.Hour {
			cur, _ := s.c.ActiveIntermediate()
			for _, a := range s.c.Authorities() {
				if a.Cert != nil && a.Cert.Equal(cur) {
					taintedID, taintedKeyID = a.ID, a.KeyID()
				}
			}
			if _, err := s.c.Prepare(ctx, ca.KindIntermediate); err != nil && !strings.Contains(err.Error(), "already prepared") {
				s.failf("prepare: %v", err)
			}
			if _, err := s.c.Activate(ctx, ca.KindIntermediate); err != nil {
				s.failf("activate: %v", err)
			}
			if _, err := s.c.Taint(ctx, taintedID); err != nil {
				s.failf("taint: %v", err)
			}
			taintedAt = now
		}
		if !taintedAt.IsZero() && revokedAt.IsZero() {
			users := s.inUse(taintedKeyID)
			// Within one sync interval (plus the spread window and a step) of
			// the taint, nothing signed by the tainted key is in use.
			if len(users) > 0 && now.Sub(taintedAt) > 2*simSync+simStep {
				s.failf("%v still hold SVIDs of tainted %s %s after the taint", users, taintedID, now.Sub(taintedAt))
			}
			if _, err := s.c.Revoke(ctx, taintedID, s.inUse); err == nil {
				revokedAt = now
			}
		}

		for _, a := range s.agents {
			if !now.Before(a.nextSync) {
				s.sync(a)
			}
			for _, sv := range a.svids {
				if !now.Before(sv.renewAt) {
					s.renew(sv)
				}
			}
		}
		s.check()
	}
	for _, a := range s.c.Authorities() {
		transitions[string(a.Kind)]++
	}
	if rootActivatedAt.IsZero() || rootRetiredAt.IsZero() || revokedAt.IsZero() {
		t.Fatalf("events missing: root activated %v, retired %v, taint revoked %v", rootActivatedAt, rootRetiredAt, revokedAt)
	}
	t.Logf("30 days: %d SVIDs signed, %d distinct verifications; root activated %s after prepare; tainted key revoked %s after taint",
		s.signed, len(s.verified), rootActivatedAt.Sub(rootPreparedAt), revokedAt.Sub(taintedAt))
}
