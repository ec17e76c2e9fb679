package agent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/pkg/api"
	"github.com/shortleaf/shortleaf/pkg/telemetry"
	"github.com/shortleaf/shortleaf/pkg/workloadapi"
	agentv1 "github.com/shortleaf/shortleaf/proto/agent/v1"
)

// manage is the agent's control loop: attest if needed, renew the agent
// SVID, sync entries and obtain workload SVIDs, each on its own schedule and
// each with its own backoff, and sleep until the earliest next deadline.
func (a *Agent) manage(ctx context.Context) error {
	attestB := backoff{min: time.Second, max: 30 * time.Second}
	renewB := backoff{min: time.Second, max: 30 * time.Second}
	syncB := backoff{min: time.Second, max: 30 * time.Second}
	svidB := backoff{min: time.Second, max: 30 * time.Second}
	var nextSync, svidRetry time.Time
	for {
		now := a.cfg.Clock.Now()
		if a.svidExpired(now) && a.cfg.NodeAttestor != nil {
			// Renewal cannot help an expired SVID (the server was out of
			// reach for its whole second half): prove the node again.
			a.cfg.Logger.Warn("the agent SVID has expired; attesting again", slog.String("attestor", a.attestorName()))
			a.dropIdentity()
		}
		if a.currentCert() == nil {
			if err := a.attest(ctx); err != nil {
				if perm := (*PermanentError)(nil); errors.As(err, &perm) {
					return perm
				}
				wait := attestB.next()
				a.cfg.Logger.Error("attestation failed", slog.Any("error", err), slog.Duration("retry_in", wait))
				if !a.sleep(ctx, wait) {
					return nil
				}
				continue
			}
			attestB.reset()
		}
		if a.conn == nil {
			if err := a.connect(); err != nil {
				return err
			}
		}
		a.mu.Lock()
		agentRenew := a.agentRenewAt
		a.mu.Unlock()
		if !now.Before(agentRenew) {
			if err := a.renewAgent(ctx); err != nil {
				if again, perr := a.refused(err); perr != nil {
					return perr
				} else if again {
					continue
				}
				wait := renewB.next()
				a.cfg.Logger.Error("agent SVID renewal failed", slog.Any("error", err), slog.Duration("retry_in", wait))
				a.mu.Lock()
				a.agentRenewAt = now.Add(wait)
				a.mu.Unlock()
			} else {
				renewB.reset()
				// The stream runs on the connection renewAgent replaced:
				// move it to the new one (it resumes from the revision held).
				if a.stream != nil {
					a.closeSync()
					nextSync = now
				}
			}
		}
		// Entry changes pushed by the server are applied as they arrive;
		// a request goes out every sync interval (it reports the bundle
		// and signers held, and its answer refreshes the bundle).
		answered, askNow, err := a.pumpSync()
		if err == nil && !now.Before(nextSync) {
			if err = a.requestSync(ctx); err == nil {
				nextSync = now.Add(a.cfg.SyncInterval)
			}
		}
		if err != nil {
			a.metrics.SyncFailures.Inc()
			if again, perr := a.refused(err); perr != nil {
				return perr
			} else if again {
				nextSync = time.Time{}
				continue
			}
			wait := syncB.next()
			a.logServerError("entry sync failed", err, wait)
			nextSync = now.Add(wait)
		}
		if askNow {
			nextSync = now
		}
		if answered {
			syncB.reset()
			a.lastSync.Store(a.cfg.Clock.Now().UnixNano())
			if !a.synced {
				a.synced = true
				a.cfg.Logger.Info("agent running", slog.String("agent_id", a.ID()), slog.String("socket", a.cfg.SocketPath),
					slog.String("server", a.servers.String()), slog.Int("entries", len(a.cache.entriesSnapshot())))
			}
		}
		due, nextRenew := a.cache.due(now)
		if len(due) > 0 && !now.Before(svidRetry) {
			if err := a.issue(ctx, due); err != nil {
				if busy := (*serverBusyError)(nil); errors.As(err, &busy) {
					// Not a failure: the server said when to come back. Up
					// to half the hint again spreads the agents it refused.
					wait := busy.RetryAfter + spread(busy.RetryAfter/2)
					a.logBusy(now, busy)
					svidRetry = now.Add(wait)
				} else {
					wait := svidB.next()
					a.logServerError("X.509-SVID issuance failed", err, wait)
					svidRetry = now.Add(wait)
				}
			} else {
				svidB.reset()
			}
			due, nextRenew = a.cache.due(now)
		}
		a.mu.Lock()
		wake := earliest(nextSync, a.agentRenewAt, nextRenew)
		a.mu.Unlock()
		if len(due) > 0 {
			wake = earliest(wake, svidRetry)
		}
		if !a.sleep(ctx, wake.Sub(a.cfg.Clock.Now())) {
			return nil
		}
	}
}

// logBusy logs that the server deferred CSRs, at most once a minute: in a
// storm it happens every few seconds, and the counter has the detail.
func (a *Agent) logBusy(now time.Time, busy *serverBusyError) {
	if now.Before(a.busyLoggedAt.Add(time.Minute)) {
		return
	}
	a.busyLoggedAt = now
	a.cfg.Logger.Warn("the server's signing queue is busy; renewing the most urgent SVIDs first and asking again at its hint",
		slog.Int("deferred", busy.Shed), slog.Duration("retry_in", busy.RetryAfter))
}

func (a *Agent) logServerError(msg string, err error, retry time.Duration) {
	if status.Code(err) == codes.Canceled {
		return // shutting down
	}
	a.cfg.Logger.Error(msg, slog.Any("error", err), slog.Duration("retry_in", retry))
}

// refused handles a renewal or sync the server refused because it no longer
// accepts this agent (evicted, or not its latest SVID: PermissionDenied), or
// that failed because the stored bundle no longer verifies the server. With
// a join token not yet tried, the stored identity is dropped and the agent
// attests again (again is true); otherwise the agent cannot go on and perr
// says why. Any other error is transient: both are zero.
func (a *Agent) refused(err error) (again bool, perr error) {
	rejected := a.check.take()
	switch {
	case rejected != nil && errors.Is(rejected, errTrustDomainMismatch):
		return false, &PermanentError{Msg: "agent: cannot reach the server", Err: rejected}
	case rejected != nil:
	case status.Code(err) == codes.PermissionDenied:
	default:
		return false, nil
	}
	id := a.ID()
	if !a.canAttest() {
		if rejected != nil {
			return false, &PermanentError{Msg: "agent: the stored trust bundle no longer verifies the server (offline across a root rotation?); restart the agent with a new --join-token and a current trust_bundle_path", Err: rejected}
		}
		return false, &PermanentError{Msg: fmt.Sprintf("agent: the server no longer accepts %s (evicted?); restart the agent with a new --join-token", id),
			Err: errors.New(status.Convert(err).Message())}
	}
	if rejected != nil {
		a.cfg.Logger.Warn("the stored trust bundle no longer verifies the server; attesting again", slog.String("agent_id", id), slog.String("attestor", a.attestorName()), slog.Any("error", rejected))
		switch {
		case len(a.cfg.TrustBundle) > 0:
			a.cache.setBundle(a.cfg.TrustBundle, 0)
		case a.cfg.InsecureBootstrap:
			a.cache.setBundle(nil, 0)
		}
	} else {
		a.cfg.Logger.Warn("the server no longer accepts this agent (evicted?); attesting again", slog.String("agent_id", id), slog.String("attestor", a.attestorName()), slog.String("reason", status.Convert(err).Message()))
	}
	a.dropIdentity()
	return true, nil
}

// canAttest reports whether the agent can attest (again) by itself: with a
// node attestor always, with a join token once.
func (a *Agent) canAttest() bool {
	return a.cfg.NodeAttestor != nil || (a.cfg.JoinToken != "" && !a.tokenTried)
}

// attestorName names how the agent attests, for logs.
func (a *Agent) attestorName() string {
	if a.cfg.NodeAttestor != nil {
		return a.cfg.NodeAttestor.Type()
	}
	return "join_token"
}

// svidExpired reports whether the agent holds an SVID past its NotAfter.
func (a *Agent) svidExpired(now time.Time) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.svidChain) > 0 && !now.Before(a.svidChain[0].NotAfter)
}

// dropIdentity forgets the agent SVID and its connection, so that the next
// pass attests again; the entries held are kept until the new sync.
func (a *Agent) dropIdentity() {
	a.mu.Lock()
	a.svidChain, a.tlsCert, a.agentRenewAt = nil, nil, time.Time{}
	old := a.conn
	a.conn, a.client = nil, nil
	a.mu.Unlock()
	if old != nil {
		_ = old.Close()
	}
	a.closeSync()
	a.entriesRevision, a.federatedTDs = 0, nil
}

func earliest(ts ...time.Time) time.Time {
	var out time.Time
	for _, t := range ts {
		if !t.IsZero() && (out.IsZero() || t.Before(out)) {
			out = t
		}
	}
	return out
}

// sleep waits for d or ctx; it reports whether to go on.
func (a *Agent) sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	select {
	case <-a.cfg.Clock.After(d):
		return true
	case <-a.syncWake:
		return true
	case <-ctx.Done():
		return false
	}
}

// connect opens the connection to the server with the current agent SVID.
// A connection it replaces is closed once calls in flight on it are done.
func (a *Agent) connect() error {
	conn, err := dial(a.servers, tlsConfig(a.cfg.TrustDomain, a.bundleCerts, a.currentCert, &a.check))
	if err != nil {
		return err
	}
	a.mu.Lock()
	old := a.conn
	a.conn, a.client = conn, agentv1.NewAgentAPIClient(conn)
	a.mu.Unlock()
	if old != nil {
		time.AfterFunc(rpcTimeout, func() { _ = old.Close() })
	}
	return nil
}

// newKeyAndCSR makes a P-256 key and a CSR for id (no SANs when id is zero).
func newKeyAndCSR(id spiffeid.ID) (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tpl := &x509.CertificateRequest{}
	if !id.IsZero() {
		tpl.URIs = []*url.URL{id.URL()}
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, tpl, key)
	if err != nil {
		return nil, nil, err
	}
	return key, csr, nil
}

// attest proves the node on a one-off connection (no client certificate),
// with the node attestor or else the join token, and stores the resulting
// identity and bundle.
func (a *Agent) attest(ctx context.Context) error {
	check := &serverCheck{}
	tlsCfg := insecureBootstrapTLS()
	if len(a.bundleCerts()) > 0 {
		tlsCfg = tlsConfig(a.cfg.TrustDomain, a.bundleCerts, func() *tls.Certificate { return nil }, check)
	}
	conn, err := dial(a.servers, tlsCfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	key, csr, err := newKeyAndCSR(spiffeid.ID{})
	if err != nil {
		return fmt.Errorf("agent: key: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	a.cfg.Logger.Info("attesting", slog.String("attestor", a.attestorName()), slog.String("server", a.servers.String()))
	first := &agentv1.AttestAgentRequest{Csr: csr}
	var answer attest.Challenger
	if na := a.cfg.NodeAttestor; na != nil {
		payload, err := na.Payload(ctx)
		if err != nil {
			return fmt.Errorf("agent: attest: %w", err)
		}
		first.Attestation = &agentv1.AttestAgentRequest_Data{Data: &agentv1.AttestationData{Type: na.Type(), Payload: payload}}
		answer = na.Answer
	} else {
		first.Attestation = &agentv1.AttestAgentRequest_JoinToken{JoinToken: &agentv1.JoinTokenAttestation{Token: a.cfg.JoinToken}}
	}
	resp, err := AttestCall(ctx, agentv1.NewAgentAPIClient(conn), first, answer)
	if err != nil {
		return a.attestFailure(err, check.take())
	}
	a.tokenTried = a.cfg.NodeAttestor == nil
	chain, err := parseNonEmpty(resp.GetSvid().GetCertChain())
	if err != nil {
		return fmt.Errorf("agent: attest: server returned an unreadable SVID: %w", err)
	}
	if id, err := x509svid.IDFromCert(chain[0]); err != nil || id.TrustDomain() != a.cfg.TrustDomain {
		return &PermanentError{Msg: fmt.Sprintf("agent: %v: the server issued %s, this agent is configured for trust domain %s",
			errTrustDomainMismatch, resp.GetSvid().GetSpiffeId(), a.cfg.TrustDomain.Name())}
	}
	bundle, err := parseNonEmpty(resp.GetBundle().GetX509Authorities())
	if err != nil {
		return fmt.Errorf("agent: attest: server returned an unreadable bundle: %w", err)
	}
	if err := a.store.save(key, &persisted{SVIDChain: rawCerts(chain), Bundle: rawCerts(bundle), BundleSequence: resp.GetBundle().GetSequence()}); err != nil {
		return err
	}
	a.cache.setBundle(bundle, resp.GetBundle().GetSequence())
	a.setSVID(key, chain)
	a.cfg.Logger.Info("attested", slog.String("agent_id", resp.GetSvid().GetSpiffeId()), slog.Time("svid_not_after", chain[0].NotAfter))
	return nil
}

// attestFailure tells a refusal no retry can cure (the join token, the trust
// bundle, the trust domain) from a transient failure. A node attestor's
// refusal is retried: the node may be unbanned, its certificate replaced.
func (a *Agent) attestFailure(err, rejected error) error {
	switch {
	case rejected != nil && errors.Is(rejected, errTrustDomainMismatch):
		return &PermanentError{Msg: "agent: cannot attest", Err: rejected}
	case rejected != nil:
		return &PermanentError{Msg: "agent: cannot attest; check trust_bundle_path (it must hold the server's trust domain bundle)", Err: rejected}
	}
	switch status.Code(err) {
	case codes.PermissionDenied, codes.InvalidArgument, codes.NotFound:
		if a.cfg.NodeAttestor != nil {
			return fmt.Errorf("agent: the server refused the %s attestation: %s", a.cfg.NodeAttestor.Type(), status.Convert(err).Message())
		}
		return &PermanentError{Msg: "agent: the server refused the join token; create a new one (shortleaf token create) and restart the agent with --join-token",
			Err: errors.New(status.Convert(err).Message())}
	}
	return fmt.Errorf("agent: attest: %w", err)
}

// renewAgent replaces the agent SVID with a fresh one under a new key.
func (a *Agent) renewAgent(ctx context.Context) error {
	id, err := spiffeid.FromString(a.ID())
	if err != nil {
		return fmt.Errorf("agent: own ID: %w", err)
	}
	key, csr, err := newKeyAndCSR(id)
	if err != nil {
		return fmt.Errorf("agent: key: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	resp, err := a.client.RenewAgent(ctx, &agentv1.RenewAgentRequest{Csr: csr})
	if err != nil {
		return fmt.Errorf("agent: renew: %w", err)
	}
	chain, err := parseNonEmpty(resp.GetSvid().GetCertChain())
	if err != nil {
		return fmt.Errorf("agent: renew: server returned an unreadable SVID: %w", err)
	}
	bundle, seq := a.cache.getBundle()
	if err := a.store.save(key, &persisted{SVIDChain: rawCerts(chain), Bundle: rawCerts(bundle), BundleSequence: seq}); err != nil {
		return err
	}
	a.setSVID(key, chain)
	a.cfg.Logger.Info("agent SVID renewed", slog.Time("not_after", chain[0].NotAfter))
	// The server accepts the old SVID only until the new one is first used,
	// and a TLS connection keeps the certificate of its handshake: reconnect.
	return a.connect()
}

// parseFederated reads the foreign bundles of a sync; a malformed one is
// skipped (the server checked it, so this is a defect worth a warning).
func (a *Agent) parseFederated(in []*agentv1.FederatedBundle) map[spiffeid.TrustDomain]*spiffebundle.Bundle {
	out := make(map[spiffeid.TrustDomain]*spiffebundle.Bundle, len(in))
	for _, fb := range in {
		td, err := spiffeid.TrustDomainFromString(fb.GetTrustDomain())
		if err == nil {
			var b *spiffebundle.Bundle
			if b, err = spiffebundle.Parse(td, fb.GetBundle()); err == nil {
				out[td] = b
				continue
			}
		}
		a.cfg.Logger.Warn("skipping malformed federated bundle from server", slog.String("trust_domain", fb.GetTrustDomain()), slog.Any("error", err))
	}
	return out
}

// applyState applies the state a sync answer carries: the bundle (saved
// with the agent's identity when it changed), its JWT keys, and the bundles
// of the foreign trust domains the entries federate with.
func (a *Agent) applyState(pb *agentv1.Bundle, federated map[spiffeid.TrustDomain]*spiffebundle.Bundle) error {
	bundle, err := parseNonEmpty(pb.GetX509Authorities())
	if err != nil {
		return fmt.Errorf("agent: sync: unreadable bundle: %w", err)
	}
	old, oldSeq := a.cache.getBundle()
	if pb.GetSequence() != oldSeq || !sameCerts(old, bundle) {
		a.mu.Lock()
		chain, cert := a.svidChain, a.tlsCert
		a.mu.Unlock()
		key, ok := cert.PrivateKey.(crypto.Signer)
		if !ok {
			return fmt.Errorf("agent: own key is a %T", cert.PrivateKey)
		}
		if err := a.store.save(key, &persisted{SVIDChain: rawCerts(chain), Bundle: rawCerts(bundle), BundleSequence: pb.GetSequence()}); err != nil {
			return err
		}
		a.cfg.Logger.Info("trust bundle updated", slog.Uint64("sequence", pb.GetSequence()))
	}
	jwt := jwtbundle.New(a.cfg.TrustDomain)
	for _, k := range pb.GetJwtAuthorities() {
		pub, err := x509.ParsePKIXPublicKey(k.GetPublicKey())
		if err != nil {
			return fmt.Errorf("agent: sync: unreadable JWT key %s: %w", k.GetKeyId(), err)
		}
		if err := jwt.AddJWTAuthority(k.GetKeyId(), pub); err != nil {
			return fmt.Errorf("agent: sync: JWT key %s: %w", k.GetKeyId(), err)
		}
	}
	a.cache.setState(bundle, pb.GetSequence(), jwt, federated)
	return nil
}

// applyTaints schedules the replacement of everything signed by a tainted
// intermediate within one sync interval, the agent's own SVID included.
func (a *Agent) applyTaints(ids [][]byte) {
	if len(ids) == 0 {
		return
	}
	tainted := make(map[string]bool, len(ids))
	for _, id := range ids {
		tainted[string(id)] = true
	}
	now := a.cfg.Clock.Now()
	if n := a.cache.replaceTainted(tainted, now, a.cfg.SyncInterval); n > 0 {
		a.cfg.Logger.Info("replacing SVIDs signed by a tainted authority", slog.Int("svids", n))
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.svidChain) > 0 && tainted[string(a.svidChain[0].AuthorityKeyId)] && !a.agentTainted {
		a.agentTainted = true
		a.agentRenewAt = TaintedRenewAt(now, a.agentRenewAt, a.cfg.SyncInterval)
	}
}

// federatedTrustDomains is the union of the entries' federates_with.
func federatedTrustDomains(entries map[string]*entry) []string {
	seen := map[string]bool{}
	var out []string
	for _, e := range entries {
		for _, td := range e.FederatesWith {
			if !seen[td.Name()] {
				seen[td.Name()] = true
				out = append(out, td.Name())
			}
		}
	}
	slices.Sort(out)
	return out
}

func sameCerts(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}

func entryFromProto(pe *agentv1.Entry) (*entry, error) {
	id, err := spiffeid.FromString(pe.GetSpiffeId())
	if err != nil {
		return nil, err
	}
	sels := make([]attest.Selector, len(pe.GetSelectors()))
	for i, s := range pe.GetSelectors() {
		sels[i] = attest.Selector{Type: s.GetType(), Value: s.GetValue()}
	}
	if pe.GetX509SvidTtlSeconds() <= 0 {
		return nil, errors.New("entry has no TTL")
	}
	var feds []spiffeid.TrustDomain
	for _, name := range pe.GetFederatesWith() {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			return nil, err
		}
		feds = append(feds, td)
	}
	return &entry{
		ID:           pe.GetId(),
		Registration: workloadapi.Registration{EntryID: pe.GetId(), SPIFFEID: id, Hint: pe.GetHint(), Selectors: sels, FederatesWith: feds},
		TTL:          time.Duration(pe.GetX509SvidTtlSeconds()) * time.Second,
		JWTTTL:       time.Duration(pe.GetJwtSvidTtlSeconds()) * time.Second,
		DNSNames:     pe.GetDnsNames(), Revision: pe.GetRevision(),
	}, nil
}

// issue obtains SVIDs for due entries (most urgent first) in batches within
// the server's limits (count and CSR bytes). It returns an error if any
// request failed, so the caller backs off before retrying those; a
// *serverBusyError when the server's signing queue shed some, so the caller
// waits for the server's hint instead. A pass stops at the first batch the
// server shed: the rest are less urgent. While the server sheds, a pass
// sends at most issueWindow CSRs, twice what the server last took, so the
// agent does not make keys and CSRs only to have them refused.
func (a *Agent) issue(ctx context.Context, due []*entry) error {
	if a.issueWindow > 0 && len(due) > a.issueWindow {
		due = due[:a.issueWindow]
	}
	var failed error
	var busy *serverBusyError
	signed := 0
	var batch []*entry
	keys := make(map[string]crypto.Signer, min(len(due), api.MaxBatchSize))
	req := &agentv1.BatchNewX509SVIDRequest{}
	size := 0
	flush := func() {
		if len(batch) == 0 {
			return
		}
		n, err := a.issueBatch(ctx, batch, keys, req)
		signed += n
		if b := (*serverBusyError)(nil); errors.As(err, &b) {
			busy = b
		} else if err != nil {
			failed = err
		}
		batch, keys, req, size = nil, make(map[string]crypto.Signer, len(keys)), &agentv1.BatchNewX509SVIDRequest{}, 0
	}
	for _, e := range due {
		if busy != nil {
			break
		}
		key, csr, err := newKeyAndCSR(e.SPIFFEID)
		if err != nil {
			return fmt.Errorf("agent: key: %w", err)
		}
		if len(batch) == api.MaxBatchSize || size+len(csr) > api.MaxBatchCSRBytes {
			flush()
			if busy != nil {
				break
			}
		}
		p := &agentv1.NewX509SVIDParams{EntryId: e.ID, Csr: csr}
		if _, held := a.cache.lookup(e.ID); held != nil {
			p.CurrentNotAfter = held.NotAfter.Unix()
		}
		batch = append(batch, e)
		keys[e.ID] = key
		size += len(csr)
		req.Params = append(req.Params, p)
	}
	flush()
	switch {
	case busy != nil:
		a.issueWindow = max(2*signed, minIssueWindow)
		return busy
	case a.issueWindow > 0:
		if a.issueWindow *= 2; a.issueWindow >= maxIssueWindow {
			a.issueWindow = 0
		}
	}
	return failed
}

// The window of CSRs one issuance pass sends while the server sheds.
const (
	minIssueWindow = 32
	maxIssueWindow = 4 * api.MaxBatchSize // beyond this: no window
)

// serverBusyError is a batch the server's signing queue shed in part or in
// whole: ask again for those after RetryAfter.
type serverBusyError struct {
	Shed       int
	RetryAfter time.Duration
}

func (e *serverBusyError) Error() string {
	return fmt.Sprintf("agent: the server's signing queue is full: %d CSRs deferred; asking again in %s", e.Shed, e.RetryAfter.Round(time.Millisecond))
}

// issueBatch sends one batch and stores what was signed; it returns how
// many were.
func (a *Agent) issueBatch(ctx context.Context, batch []*entry, keys map[string]crypto.Signer, req *agentv1.BatchNewX509SVIDRequest) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	start := time.Now()
	resp, err := a.client.BatchNewX509SVID(ctx, req)
	telemetry.ObserveSince(a.metrics.IssueDuration, start)
	if err != nil {
		a.metrics.IssueResults.WithLabelValues(status.Code(err).String()).Add(float64(len(batch)))
	}
	for _, r := range resp.GetResults() {
		a.metrics.IssueResults.WithLabelValues(codes.Code(r.GetStatusCode()).String()).Inc()
	}
	if st, ok := status.FromError(err); ok && err != nil && st.Code() == codes.ResourceExhausted {
		a.serverBusy = true
		a.metrics.SVIDRequestsShed.Add(float64(len(batch)))
		hint, ok := api.RetryAfter(st)
		if !ok {
			hint = time.Second
		}
		return 0, &serverBusyError{Shed: len(batch), RetryAfter: hint}
	}
	if err != nil {
		return 0, fmt.Errorf("agent: new X.509-SVIDs: %w", err)
	}
	byID := make(map[string]*entry, len(batch))
	for _, e := range batch {
		byID[e.ID] = e
	}
	now := a.cfg.Clock.Now()
	issued := make(map[string]*svid, len(resp.GetResults()))
	var failed error
	var busy *serverBusyError
	for _, r := range resp.GetResults() {
		e, ok := byID[r.GetEntryId()]
		if !ok {
			continue
		}
		if codes.Code(r.GetStatusCode()) == codes.ResourceExhausted {
			if busy == nil {
				busy = &serverBusyError{}
			}
			busy.Shed++
			busy.RetryAfter = max(busy.RetryAfter, time.Duration(r.GetRetryAfterMs())*time.Millisecond)
			continue
		}
		if r.GetStatusCode() != 0 {
			failed = status.Error(codes.Code(r.GetStatusCode()), r.GetStatusMessage())
			a.cfg.Logger.Warn("server refused an X.509-SVID", slog.String("entry_id", e.ID), slog.String("reason", r.GetStatusMessage()))
			continue
		}
		s, err := a.cache.newSVID(e, keys[e.ID], r.GetSvid().GetCertChain(), now, resp.GetServerBusy())
		if err != nil {
			failed = err
			continue
		}
		_, old := a.cache.lookup(e.ID)
		a.metrics.SVIDRenewals.WithLabelValues(renewalCause(old, e)).Inc()
		issued[e.ID] = s
	}
	a.cache.setSVIDs(issued)
	a.serverBusy = resp.GetServerBusy() || busy != nil
	if busy != nil {
		a.metrics.SVIDRequestsShed.Add(float64(busy.Shed))
		if busy.RetryAfter <= 0 {
			busy.RetryAfter = time.Second
		}
		if failed == nil {
			return len(issued), busy
		}
	}
	return len(issued), failed
}

func renewAt(now, notAfter time.Time, serverBusy bool) time.Time {
	if serverBusy {
		return BusyRenewAt(now, notAfter)
	}
	return RenewAt(now, notAfter)
}

func renewalCause(old *svid, e *entry) string {
	switch {
	case old == nil:
		return "new"
	case old.Revision != e.Revision:
		return "entry_changed"
	default:
		return "scheduled"
	}
}

// newSVID holds a signed chain with its key. Its renewal is scheduled at
// half its life, or at a third while the server is busy. The leaf is parsed
// to check it and read its fields, then only its DER is kept; the
// intermediates are parsed and kept once for all the SVIDs they signed.
func (c *cache) newSVID(e *entry, key crypto.Signer, chainDER [][]byte, now time.Time, serverBusy bool) (*svid, error) {
	if len(chainDER) == 0 {
		return nil, fmt.Errorf("agent: server returned an empty chain for entry %s", e.ID)
	}
	leaf, err := x509.ParseCertificate(chainDER[0])
	if err != nil {
		return nil, fmt.Errorf("agent: server returned an unreadable SVID for entry %s: %w", e.ID, err)
	}
	// Chains are leaf + one intermediate: then no copy is made to look the
	// intermediate up.
	var rest []byte
	switch len(chainDER) {
	case 1:
	case 2:
		rest = chainDER[1]
	default:
		rest = bytes.Join(chainDER[1:], nil)
	}
	sg := c.lookupSigner(rest)
	if sg == nil {
		if _, err := x509.ParseCertificates(rest); err != nil {
			return nil, fmt.Errorf("agent: server returned an unreadable chain for entry %s: %w", e.ID, err)
		}
		sg = c.internSigner(leaf.AuthorityKeyId, rest)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("agent: marshal workload key: %w", err)
	}
	return &svid{
		SVID:     workloadapi.SVID{LeafDER: chainDER[0], IntermediatesDER: sg.DER, KeyDER: keyDER, Serial: leaf.SerialNumber.Text(16)},
		Revision: e.Revision,
		Signer:   sg,
		NotAfter: leaf.NotAfter,
		RenewAt:  renewAt(now, leaf.NotAfter, serverBusy),
	}, nil
}
