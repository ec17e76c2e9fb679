//go:build tpmsimulator

package harness_test

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	steptpm "go.step.sm/crypto/tpm"

	"github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/attest/tpm"
	"github.com/shortleaf/shortleaf/attest/tpm/tpmtest"
	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/pkg/agent"
	"github.com/shortleaf/shortleaf/pkg/harness"
	"github.com/shortleaf/shortleaf/pkg/server"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// A machine with a TPM (the reference simulator) whose EK certificate comes
// from a trusted manufacturer attests by credential activation; a node
// alias of its EK gives a go-spiffe workload its SVID. Evicted, the agent
// proves its TPM again by itself, under the same agent ID.
func TestTPMNodeServesItsAliasEntryAndReattests(t *testing.T) {
	sim := tpmtest.Open(t)
	maker := tpmtest.NewManufacturer(t, "Test TPM Maker")
	ekCert := maker.IssueEKCert(t, tpmtest.EKPublic(t, sim))
	hash, _ := tpm.PubHash(ekCert.PublicKey)
	attestor, err := tpm.NewServer([]*x509.Certificate{maker.Root}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := harness.StartServer(t, func(c *server.Config) { c.NodeAttestors = map[string]attest.NodeServer{tpm.Type: attestor} })
	const alias = "spiffe://example.org/node-group/tpm-machines"
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: alias, ParentId: ca.ServerID(harness.TrustDomain).String(), Selectors: []string{"tpm:pub_hash:" + hash}})
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/secure/db", ParentId: alias, Selectors: []string{uidSelector()}})

	ag := harness.StartAgent(t, srv, func(c *agent.Config) {
		c.JoinToken = ""
		c.NodeAttestor = &tpm.Client{Open: func() (*steptpm.TPM, error) { return sim, nil }, EKCert: ekCert}
	})
	id := ag.ID()
	if want := "spiffe://example.org/agent/tpm/" + hash; id != want {
		t.Fatalf("agent ID %s, want %s", id, want)
	}
	x, err := fetchX509(t, ag.Addr(), 15*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got := x.DefaultSVID().ID.String(); got != "spiffe://example.org/secure/db" {
		t.Fatalf("served %s", got)
	}
	before, _ := srv.Admin.GetAgent(context.Background(), &adminv1.GetAgentRequest{SpiffeId: id})
	if _, err := srv.Admin.EvictAgent(context.Background(), &adminv1.EvictAgentRequest{SpiffeId: id}); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 20*time.Second, func() bool {
		a, err := srv.Admin.GetAgent(context.Background(), &adminv1.GetAgentRequest{SpiffeId: id})
		return err == nil && a.GetSerialNumber() != "" && a.GetSerialNumber() != before.GetSerialNumber()
	})
}
