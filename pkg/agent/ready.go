package agent

import (
	"fmt"
	"time"
)

// Ready reports whether the agent serves what it should: it holds a valid
// agent SVID, the server answered a sync within SyncDeadline, and it holds
// a valid X.509-SVID for every entry it serves (on demand: every entry
// asked for). The error says which is not so.
func (a *Agent) Ready() error {
	now := a.cfg.Clock.Now()
	a.mu.Lock()
	chain := a.svidChain
	a.mu.Unlock()
	if len(chain) == 0 {
		return fmt.Errorf("no agent SVID: not attested yet")
	}
	if !now.Before(chain[0].NotAfter) {
		return fmt.Errorf("the agent SVID expired at %s: the server has been out of reach", chain[0].NotAfter.UTC().Format(time.RFC3339))
	}
	last := a.LastSync()
	if last.IsZero() {
		return fmt.Errorf("no sync with the server yet")
	}
	if age := now.Sub(last); age > a.cfg.SyncDeadline {
		return fmt.Errorf("no sync with the server for %s (sync deadline %s)", age.Round(time.Second), a.cfg.SyncDeadline)
	}
	if missing, expired, first := a.cache.unserved(now); missing+expired > 0 {
		return fmt.Errorf("%d of the entries served have no SVID yet and %d an expired one (%s among them)", missing, expired, first)
	}
	return nil
}

// LastSync is when the server last answered a sync; zero before the first.
func (a *Agent) LastSync() time.Time {
	if n := a.lastSync.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}
