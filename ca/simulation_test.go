package ca_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/ca/catest"
	"github.com/shortleaf/shortleaf/pkg/drill"
)

// The simulations run the real CA (real certificates, the real schedules and
// propagation gate, scripted admin operations) on a fake clock with agents
// that follow the real agent's renewal and taint policy and sync every few
// seconds, checking at every 5-second step that every SVID served is valid
// and verifies at every agent and federated consumer (package drill; the
// same engine is `shortleaf ca drill`). No quiet span is skipped here.

var simStart = time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)

func simConfig() drill.Config {
	return drill.Config{
		CA:          ca.Config{TrustDomain: catest.TrustDomain, IntermediateTTL: time.Hour, MaxSVIDTTL: 5 * time.Minute},
		Start:       simStart,
		Agents:      3,
		WorkloadTTL: time.Minute, AgentSVIDTTL: 5 * time.Minute,
		AgentLiveness: 10 * time.Minute, BundleRefreshHint: 5 * time.Minute,
	}
}

func requireClean(t *testing.T, r *drill.Report) {
	t.Helper()
	for _, v := range r.Violations {
		t.Errorf("day %.3f (%s): %s", v.Day, v.At.Format(time.RFC3339), v.Reason)
	}
	if !r.OK() {
		t.FailNow()
	}
}

// Thirty days of one-hour intermediates with an admin's root rotation on
// day 10 (activated by the schedule once the gate passes, retired once its
// intermediates are gone) and a forced rotation, taint and revoke on day 15.
func TestThirtyDaysOfRotation(t *testing.T) {
	if testing.Short() {
		t.Skip("the 30-day simulation takes a while")
	}
	var (
		rootPreparedAt, rootActivatedAt, rootRetiredAt time.Time
		taintedAt, revokedAt                           time.Time
		preparedRoot, taintedID, taintedKeyID          string
	)
	cfg := simConfig()
	cfg.Duration = 30 * 24 * time.Hour
	cfg.BeforeStep = func(d *drill.Drill) {
		now := d.Clock.Now()
		day := now.Sub(simStart)
		st := d.CA.RootRotation()
		if rootPreparedAt.IsZero() && day >= 10*24*time.Hour {
			root, err := d.CA.PrepareRoot(ctx)
			if err != nil {
				d.Violate("root prepare: %v", err)
				return
			}
			rootPreparedAt, preparedRoot = now, root.ID
		}
		if !rootPreparedAt.IsZero() && rootActivatedAt.IsZero() {
			switch {
			case st.ActiveRootID == preparedRoot:
				rootActivatedAt = now
			case now.Sub(rootPreparedAt) > 3*5*time.Minute+2*time.Minute: // three refresh hints, then the next agent sync
				d.Violate("the prepared root is still not active %s after prepare; the gate says %v", now.Sub(rootPreparedAt), st.Blockers)
			}
		}
		if !rootActivatedAt.IsZero() && rootRetiredAt.IsZero() && st.OldRootID == "" {
			rootRetiredAt = now
		}

		if taintedAt.IsZero() && day >= 15*24*time.Hour {
			cur, _ := d.CA.ActiveIntermediate()
			for _, a := range d.CA.Authorities() {
				if a.Cert != nil && a.Cert.Equal(cur) {
					taintedID, taintedKeyID = a.ID, a.KeyID()
				}
			}
			if _, err := d.CA.Prepare(ctx, ca.KindIntermediate); err != nil && !strings.Contains(err.Error(), "already prepared") {
				d.Violate("prepare: %v", err)
			}
			if _, err := d.CA.Activate(ctx, ca.KindIntermediate); err != nil {
				d.Violate("activate: %v", err)
			}
			if _, err := d.CA.Taint(ctx, taintedID); err != nil {
				d.Violate("taint: %v", err)
			}
			taintedAt = now
		}
		if !taintedAt.IsZero() && revokedAt.IsZero() {
			// Within one sync interval (plus the spread window and a step) of
			// the taint, nothing signed by the tainted key is in use.
			if users := d.InUse(taintedKeyID); len(users) > 0 && now.Sub(taintedAt) > 2*5*time.Second+5*time.Second {
				d.Violate("%v still hold SVIDs of tainted %s %s after the taint", users, taintedID, now.Sub(taintedAt))
			}
			if _, err := d.CA.Revoke(ctx, taintedID, d.InUse); err == nil {
				revokedAt = now
			}
		}
	}
	r, err := drill.Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	requireClean(t, r)
	if rootActivatedAt.IsZero() || rootRetiredAt.IsZero() || revokedAt.IsZero() {
		t.Fatalf("events missing: root activated %v, retired %v, taint revoked %v", rootActivatedAt, rootRetiredAt, revokedAt)
	}
	t.Logf("30 days: %d SVIDs signed, %d distinct verifications; root activated %s after prepare and retired %s after that; tainted key revoked %s after taint",
		r.SVIDsSigned, r.Verifications, rootActivatedAt.Sub(rootPreparedAt), rootRetiredAt.Sub(rootActivatedAt), revokedAt.Sub(taintedAt))
}

// A root's whole life and more with nobody at the controls: 2-day roots,
// 1-hour intermediates, 1-minute SVIDs, 5 days. The schedule prepares,
// activates and retires roots on its own; one agent is offline across the
// first activation (longer than the liveness window, so the gate does not
// wait for it) and comes back to a new root.
func TestRootLifetimeRotation(t *testing.T) {
	if testing.Short() {
		t.Skip("the root-lifetime simulation takes a while")
	}
	cfg := simConfig()
	cfg.CA.RootTTL = 48 * time.Hour
	cfg.Duration = 5 * 24 * time.Hour
	// The first root is prepared 16h (a third of 48h) before it expires, at
	// hour 32: agent 2 is away from hour 31 to hour 34.
	cfg.Outages = []drill.Outage{{Agent: 2, From: 31 * time.Hour, To: 34 * time.Hour}}
	r, err := drill.Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	requireClean(t, r)
	if r.RootRotations < 2 {
		t.Fatalf("%d automatic root rotations in 5 days of 2-day roots, want at least 2; timeline: %v", r.RootRotations, r.Timeline)
	}
	var roots []string
	for _, e := range r.Timeline {
		if e.Kind == "root" || e.Kind == "agent" {
			roots = append(roots, fmt.Sprintf("day %.3f %s %s %s", e.Day, e.Kind, e.AuthorityID, e.What))
		}
	}
	t.Logf("5 days: %d root rotations, %d SVIDs signed, %d distinct verifications, 0 violations\n%s",
		r.RootRotations, r.SVIDsSigned, r.Verifications, strings.Join(roots, "\n"))
}
