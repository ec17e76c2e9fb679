package harness_test

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/shortleaf/shortleaf/pkg/agent"
	"github.com/shortleaf/shortleaf/pkg/datastore"
	"github.com/shortleaf/shortleaf/pkg/etcdtest"
	"github.com/shortleaf/shortleaf/pkg/harness"
	"github.com/shortleaf/shortleaf/pkg/server"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// replicaView is what one replica's `ca show` says.
type replicaView struct {
	resp *adminv1.ListAuthoritiesResponse
}

func viewOf(t *testing.T, s *harness.Server) replicaView {
	t.Helper()
	resp, err := s.Admin.ListAuthorities(context.Background(), &adminv1.ListAuthoritiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return replicaView{resp}
}

// active is the active authority of kind owned by replica ("" for roots).
func (v replicaView) active(kind, replica string) *adminv1.Authority {
	for _, a := range v.resp.GetAuthorities() {
		if a.GetKind() == kind && a.GetState() == "active" && a.GetReplicaId() == replica {
			return a
		}
	}
	return nil
}

func (v replicaView) count(kind string) int {
	n := 0
	for _, a := range v.resp.GetAuthorities() {
		if a.GetKind() == kind {
			n++
		}
	}
	return n
}

func (v replicaView) leader() string {
	for _, r := range v.resp.GetReplicas() {
		if r.GetLeader() {
			return r.GetId()
		}
	}
	return ""
}

func (v replicaView) live() int {
	n := 0
	for _, r := range v.resp.GetReplicas() {
		if r.GetLive() {
			n++
		}
	}
	return n
}

// Three replicas on a three-member etcd cluster are one trust domain: one
// root and one bundle, an intermediate and a JWT key of their own each, one
// leader. A join token made through one replica attests an agent through
// another (and raced across all three, attests one agent only), and an
// entry made through the third reaches it; the SVID chains
// through the intermediate of the replica that signed it. A root rotation
// started through one replica and finished through another moves every
// replica's intermediate onto the new root. When the replica the agent
// uses stops (and the leader, if that is another one) and an etcd member is
// lost, a live replica leads, the agent carries on through another replica,
// and a new entry still reaches it; after all replicas restart they share
// the same root and one bundle again.
func TestReplicasShareOneTrustDomain(t *testing.T) {
	cluster := etcdtest.Start(t, 3)
	etcd := &datastore.EtcdConfig{Endpoints: cluster.Endpoints(), Prefix: etcdPrefix(), LockTTL: 2 * time.Second, LockWait: time.Second}
	ids := []string{"a", "b", "c"}
	replicas := map[string]*harness.Server{}
	for _, id := range ids {
		replicas[id] = harness.StartServer(t, harness.WithPassphrase, func(c *server.Config) {
			c.Etcd, c.ReplicaID, c.RotationInterval = etcd, id, 100*time.Millisecond
		})
	}
	// Every replica sees the same: one root, three intermediates and JWT
	// keys (one each, active), three live replicas, one leader, and one bundle.
	var bundleSeq uint64
	harness.Eventually(t, 10*time.Second, func() bool {
		leaders, seqs := map[string]bool{}, map[uint64]bool{}
		for _, s := range replicas {
			v := viewOf(t, s)
			if v.count("root") != 1 || v.count("intermediate") != 3 || v.count("jwt") != 3 || v.live() != 3 {
				return false
			}
			for _, id := range ids {
				if v.active("intermediate", id) == nil || v.active("jwt", id) == nil {
					return false
				}
			}
			leaders[v.leader()] = true
			seqs[v.resp.GetPropagation().GetBundleSequence()] = true
			bundleSeq = v.resp.GetPropagation().GetBundleSequence()
		}
		return len(leaders) == 1 && !leaders[""] && len(seqs) == 1
	})
	for _, s := range replicas {
		b, err := s.Admin.GetBundle(context.Background(), &adminv1.GetBundleRequest{})
		if err != nil || len(b.GetX509Authorities()) != 1 || len(b.GetJwtAuthorities()) != 3 || b.GetSequence() != bundleSeq {
			t.Fatalf("bundle of replica %s: %d roots, %d JWT keys, sequence %d (want 1, 3, %d); %v", s.Config.ReplicaID,
				len(b.GetX509Authorities()), len(b.GetJwtAuthorities()), b.GetSequence(), bundleSeq, err)
		}
	}

	// A token made through a, an agent attested through b (then free to
	// use any replica), an entry made through c.
	ag := harness.StartAgent(t, replicas["a"], func(c *agent.Config) {
		c.ServerAddrs = []string{replicas["b"].AgentAddr(), replicas["a"].AgentAddr(), replicas["c"].AgentAddr()}
	})
	created := time.Now()
	replicas["c"].CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/web", ParentId: ag.ID(), Selectors: []string{uidSelector()}})
	x, err := fetchX509(t, ag.Addr(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("an entry made through replica c reached the agent in %s (sync interval %s)", time.Since(created).Round(time.Millisecond), ag.Config.SyncInterval)
	chain := x.DefaultSVID().Certificates
	if _, _, err := x509svid.Verify(chain, x.Bundles); err != nil {
		t.Fatalf("SVID does not verify against the bundle: %v", err)
	}
	signer := signingReplica(t, viewOf(t, replicas["a"]), chain[1])
	t.Logf("the agent's SVID was signed by replica %s", signer)

	// Root rotation: prepared through c; once the agent holds the new
	// bundle the leader activates it (or an admin through b, whichever
	// comes first); every replica moves onto the new root.
	root, err := replicas["c"].Admin.PrepareRoot(context.Background(), &adminv1.PrepareRootRequest{})
	if err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 10*time.Second, func() bool {
		_, _ = replicas["b"].Admin.ActivateRoot(context.Background(), &adminv1.ActivateRootRequest{})
		return viewOf(t, replicas["b"]).active("root", "").GetId() == root.GetId()
	})
	harness.Eventually(t, 10*time.Second, func() bool {
		for _, s := range replicas {
			v := viewOf(t, s)
			if v.active("root", "") == nil || v.active("root", "").GetId() != root.GetId() {
				return false
			}
			for _, id := range ids {
				if in := v.active("intermediate", id); in == nil || in.GetParentId() != root.GetId() {
					return false
				}
			}
		}
		return true
	})

	// Join tokens raced across replicas: each attests exactly one agent.
	for range 5 {
		token, _ := replicas["a"].NewJoinToken(t)
		var wg sync.WaitGroup
		var mu sync.Mutex
		won := 0
		for range 2 {
			for _, id := range ids {
				wg.Go(func() {
					_, csr := harness.NewCSR(t, spiffeid.ID{})
					if _, err := harness.Attest(t, replicas[id], token, csr); err == nil {
						mu.Lock()
						won++
						mu.Unlock()
					}
				})
			}
		}
		wg.Wait()
		if won != 1 {
			t.Fatalf("one join token attested %d agents across three replicas", won)
		}
	}

	// Stop the replica that signs for the agent, and the leader if that is
	// another one.
	stopped := map[string]bool{signer: true}
	leader := viewOf(t, replicas[signer]).leader()
	stopped[leader] = true
	for id := range stopped {
		replicas[id].Stop()
	}
	var survivor *harness.Server
	for _, id := range ids {
		if !stopped[id] {
			survivor = replicas[id]
		}
	}
	harness.Eventually(t, 15*time.Second, func() bool {
		v := viewOf(t, survivor)
		return v.leader() != "" && !stopped[v.leader()] && v.live() == len(ids)-len(stopped)
	})
	// One etcd member of three is lost as well: quorum holds.
	cluster.StopMember(0)
	survivor.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/after", ParentId: ag.ID(), Selectors: []string{uidSelector()}})
	waitForSVID(t, ag, "spiffe://example.org/after")

	// Everything restarts: the replicas find their keys and the shared root,
	// and converge on one bundle again.
	rootBefore := viewOf(t, survivor).active("root", "").GetId()
	for _, id := range ids {
		r := replicas[id]
		r.Config.AgentAPIAddr = r.AgentAddr() // where the agent looks for it
		replicas[id] = r.Restart(t)
	}
	harness.Eventually(t, 15*time.Second, func() bool {
		seqs := map[uint64]bool{}
		for _, s := range replicas {
			v := viewOf(t, s)
			if v.live() != 3 || v.leader() == "" || v.active("root", "").GetId() != rootBefore {
				return false
			}
			seqs[v.resp.GetPropagation().GetBundleSequence()] = true
		}
		return len(seqs) == 1
	})
	replicas["a"].CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/restarted", ParentId: ag.ID(), Selectors: []string{uidSelector()}})
	waitForSVID(t, ag, "spiffe://example.org/restarted")
}

// waitForSVID waits until the agent serves a verifying SVID for id.
func waitForSVID(t *testing.T, ag *harness.Agent, id string) {
	t.Helper()
	harness.Eventually(t, 15*time.Second, func() bool {
		x, err := fetchX509(t, ag.Addr(), 5*time.Second)
		if err != nil {
			return false
		}
		for _, s := range x.SVIDs {
			if s.ID.String() == id {
				_, _, err := x509svid.Verify(s.Certificates, x.Bundles)
				return err == nil
			}
		}
		return false
	})
}

// signingReplica names the replica whose intermediate is inter.
func signingReplica(t *testing.T, v replicaView, inter *x509.Certificate) string {
	t.Helper()
	for _, a := range v.resp.GetAuthorities() {
		if a.GetKind() == "intermediate" && a.GetKeyId() == hex.EncodeToString(inter.SubjectKeyId) {
			return a.GetReplicaId()
		}
	}
	t.Fatal("the SVID's intermediate belongs to no replica")
	return ""
}
