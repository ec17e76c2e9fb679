package harness_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shortleaf/shortleaf/pkg/agent"
	"github.com/shortleaf/shortleaf/pkg/datastore"
	"github.com/shortleaf/shortleaf/pkg/etcdtest"
	"github.com/shortleaf/shortleaf/pkg/harness"
	"github.com/shortleaf/shortleaf/pkg/keymanager/keymanagertest"
	"github.com/shortleaf/shortleaf/pkg/server"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// haLeaseTTL is the replicas' etcd lease in the HA tests: how long a
// crashed or partitioned replica keeps its claims.
const haLeaseTTL = 2 * time.Second

// haRotation keeps the ratios of production's defaults: SVIDs are renewed
// with half their life left (4s), twice the replicas' etcd lease (2s), as
// 1-minute SVIDs are renewed with 30s left on a 15s lease. Intermediates
// live 20s: the next one is prepared at 10s and takes over at 12s.
func haRotation(c *server.Config) {
	c.IntermediateTTL = 20 * time.Second
	c.DefaultSVIDTTL, c.AgentSVIDTTL, c.MaxSVIDTTL = 8*time.Second, 8*time.Second, 8*time.Second
	c.RotationInterval = 50 * time.Millisecond
	c.AgentLiveness = time.Minute
}

// haNode is one server replica of an HA test, reached only through
// proxies: by agents through agentProxy, and reaching etcd through one
// proxy per member. Cutting them all is, for everyone else, the replica's
// process dying: connections reset, no resignation, its etcd lease left to
// expire. Pausing the etcd proxies is a partition from etcd (or a frozen
// process) while agents still reach it.
type haNode struct {
	id          string
	srv         *harness.Server
	agentProxy  *harness.Proxy
	etcdProxies []*harness.Proxy
	etcdTargets []string
	// halted delivers the exit of a crashed server once it has stopped.
	halted chan error
}

func startHANode(t *testing.T, cluster *etcdtest.Cluster, id, prefix, keyManager string) *haNode {
	t.Helper()
	n := &haNode{id: id}
	var endpoints []string
	for _, e := range cluster.Endpoints() {
		target := strings.TrimPrefix(e, "http://")
		p := harness.StartProxy(t, target)
		n.etcdProxies, n.etcdTargets = append(n.etcdProxies, p), append(n.etcdTargets, target)
		endpoints = append(endpoints, "http://"+p.Addr())
	}
	n.srv = harness.StartServer(t, haRotation, func(c *server.Config) {
		c.KeyManagerURI, c.InsecureUnencryptedKeys = keyManager, false
		c.Etcd = &datastore.EtcdConfig{Endpoints: endpoints, Prefix: prefix, LockTTL: haLeaseTTL, LockWait: haLeaseTTL + 10*time.Second}
		c.ReplicaID = id
	})
	n.agentProxy = harness.StartProxy(t, n.srv.AgentAddr())
	return n
}

// crash makes the replica vanish as a killed process would; the server
// behind the proxies then stops in the background.
func (n *haNode) crash() {
	n.agentProxy.Cut()
	for _, p := range n.etcdProxies {
		p.Cut()
	}
	n.halted = make(chan error, 1)
	go func() { n.halted <- n.srv.Halt() }()
}

// partition stops the bytes between the replica and etcd; heal lets them
// flow again.
func (n *haNode) partition() {
	for _, p := range n.etcdProxies {
		p.Pause()
	}
}

func (n *haNode) heal() {
	for _, p := range n.etcdProxies {
		p.Resume()
	}
}

// restart starts the replica again on its data dir and replica ID, behind
// the same addresses; a running replica is stopped first, gracefully.
func (n *haNode) restart(t *testing.T) {
	t.Helper()
	if n.halted != nil {
		// Cut off, a crashed replica may have seen its lease lost first.
		if err := <-n.halted; err != nil && !errors.Is(err, datastore.ErrReplicaLeaseLost) {
			t.Errorf("crashed replica %s stopped with %v", n.id, err)
		}
		n.halted = nil
	} else {
		n.srv.Stop()
	}
	n.agentProxy.Cut()
	for i, p := range n.etcdProxies {
		p.Cut()
		if err := p.Reopen(n.etcdTargets[i]); err != nil {
			t.Fatal(err)
		}
	}
	n.srv = n.srv.Restart(t)
	if err := n.agentProxy.Reopen(n.srv.AgentAddr()); err != nil {
		t.Fatal(err)
	}
}

type haCluster struct {
	etcd  *etcdtest.Cluster
	nodes map[string]*haNode
	ids   []string
	down  map[string]bool
}

// view is what a running replica's `ca show` says.
func (c *haCluster) view(t *testing.T) replicaView {
	t.Helper()
	for _, id := range c.ids {
		if !c.down[id] {
			return viewOf(t, c.nodes[id].srv)
		}
	}
	t.Fatal("every replica is down")
	return replicaView{}
}

// waitLeader waits until every running replica names one leader among the
// running ones, and returns it.
func (c *haCluster) waitLeader(t *testing.T) string {
	t.Helper()
	var leader string
	harness.Eventually(t, 20*time.Second, func() bool {
		leaders := map[string]bool{}
		for _, id := range c.ids {
			if c.down[id] {
				continue
			}
			v := viewOf(t, c.nodes[id].srv)
			if v.live() != len(c.ids)-len(c.down) {
				return false
			}
			leader = v.leader()
			leaders[leader] = true
		}
		return len(leaders) == 1 && leader != "" && !c.down[leader]
	})
	return leader
}

// waitConverged waits until every replica runs, one leads, all hold the
// same bundle, and each signs with an active intermediate of its own under
// the active root.
func (c *haCluster) waitConverged(t *testing.T, timeout time.Duration) {
	t.Helper()
	harness.Eventually(t, timeout, func() bool {
		seqs, leaders := map[uint64]bool{}, map[string]bool{}
		for _, id := range c.ids {
			v := viewOf(t, c.nodes[id].srv)
			root := v.active("root", "")
			if v.live() != len(c.ids) || root == nil {
				return false
			}
			for _, r := range c.ids {
				if in := v.active("intermediate", r); in == nil || in.GetParentId() != root.GetId() {
					return false
				}
			}
			seqs[v.resp.GetPropagation().GetBundleSequence()] = true
			leaders[v.leader()] = true
		}
		return len(seqs) == 1 && len(leaders) == 1 && !leaders[""]
	})
}

func (c *haCluster) crash(id string) {
	c.nodes[id].crash()
	c.down[id] = true
}

func (c *haCluster) restart(t *testing.T, id string) {
	t.Helper()
	c.nodes[id].restart(t)
	delete(c.down, id)
}

func (c *haCluster) addrs(order ...string) []string {
	var out []string
	for _, id := range order {
		out = append(out, c.nodes[id].agentProxy.Addr())
	}
	return out
}

// Three replicas on a three-member etcd cluster, with two agents whose
// workloads handshake mTLS without pause, live through what HA is for: the
// replica an agent is connected to dies; the leader dies in the middle of
// an intermediate rotation, and another in the middle of a root rotation;
// the next leader is cut off from etcd before the old root retires, and
// its late writes arrive after another has taken over; an etcd member is
// lost; every replica restarts in turn, then all at once. Not one handshake fails, no workload ever holds an expired
// SVID, the replicas end on one bundle, and etcd's history of the journal
// shows every leader duty written by the leader of its term, and no other.
func TestReplicasKeepWorkloadsTalkingThroughFailures(t *testing.T) {
	// The replicas keep their keys in one SoftHSM2 token, as replicas on
	// an HSM or a KMS do. (On softkms every key file is encrypted under the
	// passphrase: about a second of PBKDF2 a key under the race detector,
	// which three replicas rotating every few seconds cannot afford.)
	hsm := keymanagertest.SoftHSM(t)
	prefix := etcdPrefix()
	c := &haCluster{etcd: etcdtest.Start(t, 3), nodes: map[string]*haNode{}, ids: []string{"a", "b", "c"}, down: map[string]bool{}}
	for _, id := range c.ids {
		c.nodes[id] = startHANode(t, c.etcd, id, prefix, hsm)
	}
	c.waitConverged(t, 20*time.Second)

	agA := harness.StartAgent(t, c.nodes["a"].srv, func(cfg *agent.Config) { cfg.ServerAddrs = c.addrs("a", "b", "c") })
	agB := harness.StartAgent(t, c.nodes["a"].srv, func(cfg *agent.Config) { cfg.ServerAddrs = c.addrs("b", "c", "a") })
	idA, idB := spiffeid.RequireFromString("spiffe://example.org/a"), spiffeid.RequireFromString("spiffe://example.org/b")
	c.nodes["c"].srv.CreateEntry(t, &adminv1.Entry{SpiffeId: idA.String(), ParentId: agA.ID(), Selectors: []string{uidSelector()}})
	c.nodes["c"].srv.CreateEntry(t, &adminv1.Entry{SpiffeId: idB.String(), ParentId: agB.ID(), Selectors: []string{uidSelector()}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	probe := startMTLSProbe(t, x509Source(ctx, t, agA), idA, x509Source(ctx, t, agB), idB)
	time.Sleep(2 * time.Second)

	// The replica agent A is connected to dies.
	var connected string
	harness.Eventually(t, 10*time.Second, func() bool {
		for _, id := range c.ids {
			if c.nodes[id].agentProxy.Open() > 0 {
				connected = id
				return true
			}
		}
		return false
	})
	t.Logf("killing replica %s, which has agents connected", connected)
	c.crash(connected)
	c.waitLeader(t)
	time.Sleep(2 * time.Second)
	c.restart(t, connected)
	c.waitConverged(t, 20*time.Second)

	// The leader dies while its next intermediate is prepared, not yet active.
	var leader string
	harness.Eventually(t, 30*time.Second, func() bool {
		v := c.view(t)
		leader = v.leader()
		for _, a := range v.resp.GetAuthorities() {
			if a.GetKind() == "intermediate" && a.GetState() == "prepared" && a.GetReplicaId() == leader {
				return true
			}
		}
		return false
	})
	t.Logf("killing leader %s in the middle of its intermediate rotation", leader)
	c.crash(leader)
	t.Logf("replica %s leads", c.waitLeader(t))
	time.Sleep(2 * time.Second)
	c.restart(t, leader)
	c.waitConverged(t, 20*time.Second)

	// A root rotation is started through a follower, and the leader dies
	// at once: the next leader activates the root.
	leader = c.waitLeader(t)
	var follower string
	for _, id := range c.ids {
		if id != leader {
			follower = id
		}
	}
	oldRoot := c.view(t).active("root", "").GetId()
	root, err := c.nodes[follower].srv.Admin.PrepareRoot(ctx, &adminv1.PrepareRootRequest{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("root %s prepared through %s; killing leader %s", root.GetId(), follower, leader)
	c.crash(leader)
	t.Logf("replica %s leads", c.waitLeader(t))
	harness.Eventually(t, 20*time.Second, func() bool { return c.view(t).active("root", "").GetId() == root.GetId() })
	c.restart(t, leader)

	// While the old root waits for its last intermediates to expire, the
	// leader that activated the new one is cut off from etcd: it gives its
	// lease up and stops before etcd expires it, its agents move to other
	// replicas, and another replica leads and retires the old root. What
	// the cut-off one sent meanwhile reaches etcd when the partition
	// heals, and is refused there.
	leader = c.waitLeader(t)
	if c.view(t).count("root") != 2 {
		t.Fatal("the old root retired before the test could cut its leader off")
	}
	t.Logf("partitioning leader %s from etcd", leader)
	cutOff := c.nodes[leader]
	cutOff.partition()
	select {
	case <-cutOff.srv.Exited():
	case <-time.After(20 * time.Second):
		t.Fatalf("replica %s kept running for 20s without renewing its etcd lease", leader)
	}
	c.down[leader] = true
	t.Logf("replica %s leads", c.waitLeader(t))
	cutOff.heal()
	if err := cutOff.srv.Halt(); !errors.Is(err, datastore.ErrReplicaLeaseLost) {
		t.Fatalf("the partitioned replica stopped with %v, want ErrReplicaLeaseLost", err)
	}
	c.restart(t, leader)
	harness.Eventually(t, 40*time.Second, func() bool {
		for _, id := range c.ids {
			for _, a := range viewOf(t, c.nodes[id].srv).resp.GetAuthorities() {
				if a.GetId() == oldRoot {
					return false
				}
			}
		}
		return true
	})
	c.waitConverged(t, 20*time.Second)

	// One etcd member of three is lost (quorum holds), and every replica
	// restarts in turn.
	c.etcd.StopMember(0)
	for _, id := range c.ids {
		c.restart(t, id)
		c.waitConverged(t, 30*time.Second)
	}
	if err := c.etcd.RestartMember(0); err != nil {
		t.Fatal(err)
	}
	// Then all of them stop at once, and start again: agents serve what
	// they hold meanwhile.
	for _, id := range c.ids {
		c.nodes[id].srv.Stop()
	}
	for _, id := range c.ids {
		c.restart(t, id)
	}
	c.waitConverged(t, 30*time.Second)
	time.Sleep(2 * time.Second)

	probe.requireClean(t)
	t.Logf("%d handshakes, 0 failed, none with an expired SVID, across %d intermediates", probe.ok.Load(), probe.intermediatesSeen())
	violations, writes, terms := leaderWrites(t, c.etcd.Client(t), prefix)
	for _, v := range violations {
		t.Error(v)
	}
	t.Logf("etcd's history: %d leader writes in %d terms, %d by anyone but the leader of the term", writes, terms, len(violations))
	if terms < 2 {
		t.Errorf("leader writes in %d terms: the test did not exercise a change of leader", terms)
	}
}

// leaderWrites replays etcd's history of the cluster journal record and of
// the leader election under prefix, and lists every leader duty written by
// any replica but the leader of that moment in its term, and every term
// that went backwards. It also counts the leader writes it checked, and
// the distinct terms they were made in.
func leaderWrites(t *testing.T, cli *clientv3.Client, prefix string) (violations []string, writes, terms int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	journalKey, electionPrefix := prefix+"meta/ca_journal", prefix+"leader/"
	cur, err := cli.Get(ctx, journalKey)
	if err != nil || len(cur.Kvs) == 0 {
		t.Fatalf("the journal record: %v, %v", cur, err)
	}
	last := cur.Kvs[0].ModRevision

	type candidate struct {
		created int64
		replica string
	}
	candidates := map[string]candidate{} // election keys present
	seen := map[int64]bool{}
	var lastTerm int64
	w := cli.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(1))
	for resp := range w {
		if err := resp.Err(); err != nil {
			t.Fatalf("watching etcd's history: %v", err)
		}
		for _, ev := range resp.Events {
			key := string(ev.Kv.Key)
			switch {
			case strings.HasPrefix(key, electionPrefix) && ev.Type == clientv3.EventTypePut:
				candidates[key] = candidate{created: ev.Kv.CreateRevision, replica: string(ev.Kv.Value)}
			case strings.HasPrefix(key, electionPrefix) && ev.Type == clientv3.EventTypeDelete:
				delete(candidates, key)
			case key == journalKey && ev.Type == clientv3.EventTypePut:
				var stamp struct {
					WrittenBy  string `json:"written_by"`
					LeaderTerm int64  `json:"leader_term"`
				}
				if err := json.Unmarshal(ev.Kv.Value, &stamp); err != nil {
					t.Fatalf("journal at revision %d: %v", ev.Kv.ModRevision, err)
				}
				if stamp.LeaderTerm == 0 {
					break
				}
				// The leader is the election key created first.
				var leader candidate
				for _, c := range candidates {
					if leader.created == 0 || c.created < leader.created {
						leader = c
					}
				}
				if stamp.LeaderTerm != leader.created || stamp.WrittenBy != leader.replica {
					violations = append(violations, fmt.Sprintf("at revision %d %s wrote a leader duty of term %d, but %q led in term %d",
						ev.Kv.ModRevision, stamp.WrittenBy, stamp.LeaderTerm, leader.replica, leader.created))
				}
				if stamp.LeaderTerm < lastTerm {
					violations = append(violations, fmt.Sprintf("at revision %d a leader duty of term %d follows one of term %d",
						ev.Kv.ModRevision, stamp.LeaderTerm, lastTerm))
				}
				lastTerm = stamp.LeaderTerm
				seen[stamp.LeaderTerm] = true
				writes++
			}
			if ev.Kv.ModRevision >= last {
				return violations, writes, len(seen)
			}
		}
	}
	t.Fatalf("etcd's history ended before revision %d", last)
	return nil, 0, 0
}

// The check of etcd's history finds a leader duty written by a replica
// that does not lead, and one written in a term that has ended.
func TestLeaderWriteCheckFindsWritesOutsideTheirTerm(t *testing.T) {
	cli := etcdtest.Start(t, 1).Client(t)
	ctx := context.Background()
	prefix := etcdPrefix()
	put := func(key, value string) int64 {
		t.Helper()
		resp, err := cli.Put(ctx, prefix+key, value)
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	stamp := func(by string, term int64) string {
		return fmt.Sprintf(`{"version":2,"written_by":%q,"leader_term":%d}`, by, term)
	}
	termA := put("leader/1", "a")
	put("meta/ca_journal", stamp("a", termA)) // a leads: fine
	termB := put("leader/2", "b")             // b waits behind a
	put("meta/ca_journal", stamp("b", termB)) // b does not lead
	if _, err := cli.Delete(ctx, prefix+"leader/1"); err != nil {
		t.Fatal(err)
	}
	put("meta/ca_journal", stamp("a", termA)) // a's term has ended
	put("meta/ca_journal", stamp("b", termB)) // b leads now: fine
	violations, writes, terms := leaderWrites(t, cli, prefix)
	if len(violations) != 3 || writes != 4 || terms != 2 {
		t.Fatalf("%d writes in %d terms, violations: %q; want 4 writes in 2 terms, 3 violations (b not leading, a after its term, a term going back)",
			writes, terms, violations)
	}
}

// A replica that is not the leader stops while etcd is out of its reach:
// its campaign, cancelled, must not hold the stop until etcd answers.
func TestFollowerStopsWhileEtcdIsOutOfReach(t *testing.T) {
	hsm := keymanagertest.SoftHSM(t)
	prefix := etcdPrefix()
	cluster := etcdtest.Start(t, 1)
	c := &haCluster{etcd: cluster, nodes: map[string]*haNode{}, ids: []string{"a", "b"}, down: map[string]bool{}}
	for _, id := range c.ids {
		c.nodes[id] = startHANode(t, cluster, id, prefix, hsm)
	}
	follower := "a"
	if c.waitLeader(t) == "a" {
		follower = "b"
	}
	c.crash(follower)
	select {
	case err := <-c.nodes[follower].halted:
		if err != nil && !errors.Is(err, datastore.ErrReplicaLeaseLost) {
			t.Fatalf("the follower stopped with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the follower cut off from etcd did not stop within 30s")
	}
}
