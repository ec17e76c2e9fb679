package harness_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	bolt "go.etcd.io/bbolt"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/pkg/harness"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// crashCycles is how many SIGKILLs the crash tests deal: 20 in make test,
// more with SHORTLEAF_CRASH_CYCLES (make soak runs 200).
func crashCycles(t *testing.T) int {
	t.Helper()
	if v := os.Getenv("SHORTLEAF_CRASH_CYCLES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("SHORTLEAF_CRASH_CYCLES=%q is not a positive number", v)
		}
		return n
	}
	return 20
}

// acked records the writes the server acknowledged.
type acked struct {
	mu      sync.Mutex
	entries map[string]string    // entry ID → SPIFFE ID
	tokens  map[string]time.Time // token ID → expiry (expired ones are purged, as they should be)
}

// A real server process is killed with SIGKILL at random moments while
// entries, join tokens and forced rotations are being written. After every
// kill: the datastore file passes bbolt's consistency check, every write the
// server acknowledged is there, and the restarted server signs.
func TestServerSurvivesSIGKILLDuringWrites(t *testing.T) {
	dir := harness.ShortDir(t)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1)) //nolint:gosec // timing jitter, not security
	a := &acked{entries: map[string]string{}, tokens: map[string]time.Time{}}
	cycles := crashCycles(t)
	for cycle := range cycles {
		p := harness.StartServerProcess(t, harness.ProcessConfig{DataDir: dir})
		admin := p.Admin(t)
		verifyAfterRestart(t, cycle, admin, a)

		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for w := range 3 {
			wg.Go(func() { writeUntilKilled(ctx, admin, a, cycle, w) })
		}
		time.Sleep(time.Duration(20+rng.IntN(300)) * time.Millisecond)
		p.Kill()
		cancel()
		wg.Wait()
		checkBolt(t, filepath.Join(dir, "datastore.db"), a)
	}
	t.Logf("%d SIGKILLs during writes: %d entries and %d tokens acknowledged, none lost", cycles, len(a.entries), len(a.tokens))
}

// writeUntilKilled writes entries (worker 0), join tokens (worker 1) and
// forced rotations (worker 2) until the server dies.
func writeUntilKilled(ctx context.Context, admin adminv1.AdminAPIClient, a *acked, cycle, worker int) {
	for i := 0; ctx.Err() == nil; i++ {
		switch worker {
		case 0:
			id := fmt.Sprintf("spiffe://example.org/crash/c%d/e%d", cycle, i)
			e, err := admin.CreateEntry(ctx, &adminv1.CreateEntryRequest{Entry: &adminv1.Entry{
				SpiffeId: id, ParentId: "spiffe://example.org/agent/join_token/0123456789abcdef", Selectors: []string{"unix:uid:1000"},
			}})
			if err != nil {
				return
			}
			a.mu.Lock()
			a.entries[e.GetId()] = id
			a.mu.Unlock()
		case 1:
			tok, err := admin.CreateJoinToken(ctx, &adminv1.CreateJoinTokenRequest{})
			if err != nil {
				return
			}
			a.mu.Lock()
			a.tokens[tok.GetTokenId()] = time.Unix(tok.GetExpiresAt(), 0)
			a.mu.Unlock()
		default:
			kind := []string{"intermediate", "jwt"}[i%2]
			if _, err := admin.PrepareAuthority(ctx, &adminv1.PrepareAuthorityRequest{Kind: kind}); err != nil && ctx.Err() != nil {
				return
			}
			if _, err := admin.ActivateAuthority(ctx, &adminv1.ActivateAuthorityRequest{Kind: kind}); err != nil && ctx.Err() != nil {
				return
			}
		}
	}
}

// checkBolt runs bbolt's consistency check on the file a killed server left
// and looks for every acknowledged join token.
func checkBolt(t *testing.T, path string, a *acked) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("open the datastore after SIGKILL: %v", err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return fmt.Errorf("bbolt check: %w", err)
		}
		tokens := tx.Bucket([]byte("join_tokens"))
		a.mu.Lock()
		defer a.mu.Unlock()
		// A token is kept until it expires; the server purges it after
		// (every minute), so only tokens well before their expiry must be here.
		live := time.Now().Add(5 * time.Second)
		for id, exp := range a.tokens {
			if exp.After(live) && (tokens == nil || tokens.Get([]byte(id)) == nil) {
				return fmt.Errorf("acknowledged join token %s (expires %s) was lost", id, exp.Format(time.RFC3339))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// verifyAfterRestart checks every acknowledged entry is there and the CA
// signs.
func verifyAfterRestart(t *testing.T, cycle int, admin adminv1.AdminAPIClient, a *acked) {
	t.Helper()
	ctx := context.Background()
	have := map[string]string{}
	token := ""
	for {
		resp, err := admin.ListEntries(ctx, &adminv1.ListEntriesRequest{PageToken: token})
		if err != nil {
			t.Fatalf("cycle %d: list entries: %v", cycle, err)
		}
		for _, e := range resp.GetEntries() {
			have[e.GetId()] = e.GetSpiffeId()
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	a.mu.Lock()
	for id, spiffeID := range a.entries {
		if have[id] != spiffeID {
			a.mu.Unlock()
			t.Fatalf("cycle %d: acknowledged entry %s (%s) was lost", cycle, id, spiffeID)
		}
	}
	a.mu.Unlock()
	if _, err := admin.MintX509SVID(ctx, &adminv1.MintX509SVIDRequest{SpiffeId: "spiffe://example.org/crash/probe"}); err != nil {
		t.Fatalf("cycle %d: the restarted server does not sign: %v", cycle, err)
	}
}

// A real agent process is killed with SIGKILL at random moments while the
// server makes it rewrite its identity: every cycle taints the intermediate
// that signed the agent's SVID (the agent renews it within a sync interval:
// new key, RenewAgent, save, reconnect) and prepares a JWT key (a new
// bundle, saved too). After every kill the agent restarts with no join token
// and serves its workload an SVID that verifies.
func TestAgentSurvivesSIGKILLDuringRenewals(t *testing.T) {
	srv := harness.StartServer(t)
	token, agentID := srv.NewJoinToken(t)
	bundle, _ := srv.CA().Bundle()
	base := harness.ShortDir(t)
	dataDir := filepath.Join(base, "agent")
	if err := os.Mkdir(dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(base, "wl", "agent.sock")
	addr := "unix://" + sock
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/crash-workload", ParentId: agentID, Selectors: []string{uidSelector()}})
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 2)) //nolint:gosec // timing jitter, not security
	cycles := crashCycles(t)
	renewals := 0
	for cycle := range cycles {
		tok := ""
		if cycle == 0 {
			tok = token
		}
		p := harness.StartAgentProcess(t, harness.AgentProcessConfig{ServerAddr: srv.AgentAddr(), Bundle: bundle.X509Authorities(),
			JoinToken: tok, DataDir: dataDir, SocketPath: sock})
		x, err := fetchX509(t, addr, 30*time.Second)
		if err != nil {
			t.Fatalf("cycle %d: the restarted agent serves no SVID: %v\n%s", cycle, err, p.Logs())
		}
		current, _ := srv.CA().Bundle()
		if _, _, err := x509svid.Verify(x.DefaultSVID().Certificates, current); err != nil {
			t.Fatalf("cycle %d: the served SVID does not verify: %v", cycle, err)
		}
		taintActiveIntermediate(t, srv)
		if _, err := srv.Admin.PrepareAuthority(context.Background(), &adminv1.PrepareAuthorityRequest{Kind: "jwt"}); err != nil {
			t.Fatal(err)
		}
		if _, err := srv.Admin.ActivateAuthority(context.Background(), &adminv1.ActivateAuthorityRequest{Kind: "jwt"}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(rng.IntN(1500)) * time.Millisecond)
		p.Kill()
		renewals += strings.Count(p.Logs(), "agent SVID renewed")
	}
	t.Logf("%d SIGKILLs of the agent; %d agent SVID renewals completed between them, the rest cut short", cycles, renewals)
}

// taintActiveIntermediate rotates the intermediate and taints the one that
// was active, so every agent replaces what it signed.
func taintActiveIntermediate(t *testing.T, srv *harness.Server) {
	t.Helper()
	ctx := context.Background()
	var oldID string
	for _, a := range srv.CA().Authorities() {
		if a.Kind == ca.KindIntermediate && a.State == ca.StateActive {
			oldID = a.ID
		}
	}
	if _, err := srv.Admin.PrepareAuthority(ctx, &adminv1.PrepareAuthorityRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Admin.ActivateAuthority(ctx, &adminv1.ActivateAuthorityRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Admin.TaintAuthority(ctx, &adminv1.TaintAuthorityRequest{Id: oldID}); err != nil {
		t.Fatal(err)
	}
}
