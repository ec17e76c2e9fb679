package harness_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/shortleaf/shortleaf/pkg/audit"
	"github.com/shortleaf/shortleaf/pkg/harness"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// The audit log of a real server through a workload's life: the agent's
// attestation, the workload's X.509-SVID (found by the serial the workload
// holds), its JWT-SVID, a mint, entry changes and an eviction by an admin
// (named by uid and user), a refused caller, and the CA's transitions. The
// chain verifies against the trust bundle, and no token or JWT is in it.
func TestAuditLogRecordsWhoGotWhatAndWhoChangedWhat(t *testing.T) {
	srv := harness.StartServer(t)
	token, agentID := srv.NewJoinToken(t)
	_, rawCSR := harness.NewCSR(t, spiffeid.ID{})
	if _, err := harness.Attest(t, srv, token, rawCSR); err != nil {
		t.Fatal(err)
	}
	ag := harness.StartAgent(t, srv)
	web := "spiffe://example.org/web"
	entry := srv.CreateEntry(t, &adminv1.Entry{SpiffeId: web, ParentId: ag.ID(), Selectors: []string{uidSelector()}})
	x, err := fetchX509(t, ag.Addr(), 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	held := x.SVIDs[0].Certificates[0]

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(ag.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	jwt, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db", Subject: spiffeid.RequireFromString(web)})
	if err != nil {
		t.Fatal(err)
	}
	minted, err := srv.Admin.MintJWTSVID(ctx, &adminv1.MintJWTSVIDRequest{SpiffeId: "spiffe://example.org/tool", Audience: []string{"ci"}})
	if err != nil {
		t.Fatal(err)
	}
	mintedX509, err := srv.Admin.MintX509SVID(ctx, &adminv1.MintX509SVIDRequest{SpiffeId: "spiffe://example.org/tool"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Admin.DeleteEntry(ctx, &adminv1.DeleteEntryRequest{Id: "no-such-entry"}); err == nil {
		t.Fatal("deleting a missing entry succeeded")
	}
	if _, err := srv.Admin.EvictAgent(ctx, &adminv1.EvictAgentRequest{SpiffeId: agentID}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Admin.PrepareAuthority(ctx, &adminv1.PrepareAuthorityRequest{Kind: "x509"}); err != nil {
		t.Fatal(err)
	}
	// A replay of a used join token is refused.
	if _, err := harness.Attest(t, srv, token, rawCSR); err == nil {
		t.Fatal("a join token was used twice")
	}
	srv.Stop() // checks the chain (harness.CheckAuditLog)
	dir := srv.Config.AuditDir()

	find := func(f audit.Filter, want int) []audit.Record {
		t.Helper()
		got, err := audit.Query(dir, f, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) < want {
			t.Fatalf("query %+v: %d records, want at least %d", f, len(got), want)
		}
		return got
	}
	// The workload's SVID, by the serial it holds.
	r := find(audit.Filter{Serial: fmt.Sprintf("%x", held.SerialNumber)}, 1)[0]
	if r.Action != audit.ActionX509SVIDIssue || r.Actor != ag.ID() || r.Object != entry.GetId() || r.SPIFFEID != web ||
		r.SignerKeyID != fmt.Sprintf("%x", held.AuthorityKeyId) || !r.NotAfter.Equal(held.NotAfter) || !r.NotBefore.Equal(held.NotBefore) {
		t.Errorf("issuance record %+v does not describe the SVID the workload holds", r)
	}
	// Its JWT-SVID: key ID and expiry, not the token.
	jwts := find(audit.Filter{SPIFFEID: web, Action: audit.ActionJWTSVIDIssue}, 1)
	if j := jwts[0]; j.Actor != ag.ID() || j.SignerKeyID == "" || j.NotAfter.Unix() != jwt.Expiry.Unix() || j.Details["audience"] != "db" {
		t.Errorf("JWT record %+v", j)
	}
	// The agent's attestation and renewal records carry its serials.
	find(audit.Filter{Actor: ag.ID(), Action: audit.ActionAgentAttest}, 1)
	// An admin's calls, named by uid and user.
	u, _ := user.Current()
	admin := "admin uid=" + strconv.Itoa(os.Getuid()) + " user=" + u.Username
	if c := find(audit.Filter{Action: "admin.CreateEntry"}, 1); c[0].Actor != admin || c[0].Object != entry.GetId() {
		t.Errorf("entry creation %+v, want actor %q", c[0], admin)
	}
	if d := find(audit.Filter{Action: "admin.DeleteEntry"}, 1); d[0].Result != audit.ResultInvalid || d[0].Object != "no-such-entry" {
		t.Errorf("refused deletion %+v", d[0])
	}
	if e := find(audit.Filter{Action: "admin.EvictAgent"}, 1); e[0].Object != agentID {
		t.Errorf("eviction %+v", e[0])
	}
	if m := find(audit.Filter{Actor: admin, Action: audit.ActionX509SVIDIssue}, 1); m[0].SPIFFEID != "spiffe://example.org/tool" || m[0].Serial == "" {
		t.Errorf("mint %+v", m[0])
	}
	tok := find(audit.Filter{Action: "admin.CreateJoinToken"}, 2)
	if tok[0].Object == "" {
		t.Errorf("join token creation without the token's ID: %+v", tok[0])
	}
	refused := find(audit.Filter{Action: audit.ActionAgentAttest}, 1)
	if last := refused[len(refused)-1]; last.Result != audit.ResultDenied || last.Object != "join_token" {
		t.Errorf("the replayed token's refusal %+v", last)
	}
	trans := find(audit.Filter{Action: audit.ActionCATransition}, 3) // root, intermediate, JWT key at first start; the prepared one
	if last := trans[len(trans)-1]; last.Details["transition"] != "prepared" || last.Actor != audit.ActorServer {
		t.Errorf("last CA transition %+v", last)
	}

	// No secret: the join tokens (secret part included), the JWTs, the
	// minted key.
	var all []byte
	files, _ := filepath.Glob(filepath.Join(dir, "*"))
	for _, f := range files {
		b, err := os.ReadFile(f) //nolint:gosec // the test's own files
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	control := []byte(web)
	if !bytes.Contains(all, control) {
		t.Fatal("the control string is not in the log: the scan below proves nothing")
	}
	for name, secret := range map[string]string{"join token": token, "JWT-SVID": jwt.Marshal(), "minted JWT": minted.GetToken(),
		"minted key": string(mintedX509.GetPrivateKey())} {
		if bytes.Contains(all, []byte(secret)) {
			t.Errorf("the audit log holds a %s", name)
		}
	}
	if _, secret, _ := bytes.Cut([]byte(token), []byte(".")); bytes.Contains(all, secret) {
		t.Error("the audit log holds a join token's secret")
	}
}
