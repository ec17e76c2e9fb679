package harness_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/client-go/rest"

	"github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/attest/k8spsat"
	"github.com/shortleaf/shortleaf/attest/k8spsat/k8spsattest"
	"github.com/shortleaf/shortleaf/attest/x509pop"
	"github.com/shortleaf/shortleaf/attest/x509pop/x509poptest"
	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/pkg/agent"
	"github.com/shortleaf/shortleaf/pkg/harness"
	"github.com/shortleaf/shortleaf/pkg/server"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
	agentv1 "github.com/shortleaf/shortleaf/proto/agent/v1"
)

// withX509Pop has the server accept x509pop nodes of the machine CA m.
func withX509Pop(t *testing.T, m *x509poptest.CA) func(*server.Config) {
	return func(c *server.Config) {
		pop, err := x509pop.NewServer([]*x509.Certificate{m.Root}, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.NodeAttestors = map[string]attest.NodeServer{x509pop.Type: pop}
	}
}

// withNode has an agent attest with node's certificate instead of a token.
func withNode(node *x509poptest.NodeCert) func(*agent.Config) {
	return func(c *agent.Config) {
		c.JoinToken = ""
		c.NodeAttestor = &x509pop.FileClient{CertPath: node.CertPath, KeyPath: node.KeyPath}
	}
}

const fleetAlias = "spiffe://example.org/node-group/corp-machines"

// Two machines with certificates from the corporate CA attest by x509pop
// and belong to a node alias of that CA; one entry parented to the alias
// gives a go-spiffe workload on each machine its SVID. Each agent's ID is
// SPIRE's shape and its node selectors are stored with it.
func TestX509PopNodesServeTheirNodeAliasEntries(t *testing.T) {
	m := x509poptest.New(t, "corp")
	srv := harness.StartServer(t, withX509Pop(t, m))
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: fleetAlias, ParentId: ca.ServerID(harness.TrustDomain).String(),
		Selectors: []string{"x509pop:ca:fingerprint:" + x509pop.Fingerprint(m.Intermediate)}})
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/fleet/web", ParentId: fleetAlias, Selectors: []string{uidSelector()}})

	dir := t.TempDir()
	for _, cn := range []string{"host-a.corp", "host-b.corp"} {
		node := m.IssueNode(t, dir, cn, time.Time{}, time.Time{})
		ag := harness.StartAgent(t, srv, withNode(node))
		if want := "spiffe://example.org/agent/x509pop/" + x509pop.Fingerprint(node.Leaf); ag.ID() != want {
			t.Fatalf("agent ID %s, want %s", ag.ID(), want)
		}
		x, err := fetchX509(t, ag.Addr(), 15*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", cn, err)
		}
		if got := x.DefaultSVID().ID.String(); got != "spiffe://example.org/fleet/web" {
			t.Fatalf("%s served %s", cn, got)
		}
		a, err := srv.Admin.GetAgent(context.Background(), &adminv1.GetAgentRequest{SpiffeId: ag.ID()})
		if err != nil {
			t.Fatal(err)
		}
		if a.GetAttestationType() != "x509pop" || !strings.Contains(strings.Join(a.GetSelectors(), " "), "x509pop:subject:cn:"+cn) {
			t.Fatalf("agent record: %v", a)
		}
	}
}

// x509popAttestation is the first message of an x509pop attestation of
// node (its leaf and the intermediate) with a fresh CSR.
func x509popAttestation(t *testing.T, node *x509poptest.NodeCert, m *x509poptest.CA) *agentv1.AttestAgentRequest {
	payload, _ := json.Marshal(x509pop.Payload{CertChain: [][]byte{node.Leaf.Raw, m.Intermediate.Raw}})
	_, csr := harness.NewCSR(t, spiffeid.ID{})
	return &agentv1.AttestAgentRequest{Attestation: &agentv1.AttestAgentRequest_Data{Data: &agentv1.AttestationData{Type: x509pop.Type, Payload: payload}}, Csr: csr}
}

// What does not prove the node is refused, and nothing is signed or
// recorded for it: a signature replayed from an earlier exchange, a
// certificate whose key the caller does not hold, an expired certificate,
// one from another CA, an unknown attestor, a challenge left unanswered.
func TestX509PopRefusesReplayAndWrongKeyWithNothingSigned(t *testing.T) {
	m, other := x509poptest.New(t, "corp"), x509poptest.New(t, "other")
	srv := harness.StartServer(t, withX509Pop(t, m))
	dir := t.TempDir()
	node := m.IssueNode(t, dir, "host-a.corp", time.Time{}, time.Time{})
	honest, err := x509pop.NewClient([]*x509.Certificate{node.Leaf, m.Intermediate}, node.Key)
	if err != nil {
		t.Fatal(err)
	}
	// One honest attestation; its answer is recorded for the replay.
	var recorded []byte
	if _, err := harness.AttestWith(t, srv, x509popAttestation(t, node, m), func(ctx context.Context, ch []byte) ([]byte, error) {
		recorded, err = honest.Answer(ctx, ch)
		return recorded, err
	}); err != nil {
		t.Fatal(err)
	}
	agentsBefore, _ := srv.Admin.ListAgents(context.Background(), &adminv1.ListAgentsRequest{})
	before := agentsBefore.GetAgents()[0]

	thiefKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	expired := m.IssueNode(t, dir, "old.corp", time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour))
	foreign := other.IssueNode(t, dir, "host.other", time.Time{}, time.Time{})
	unknown := x509popAttestation(t, node, m)
	unknown.GetData().Type = "aws_iid"
	for name, tc := range map[string]struct {
		first  *agentv1.AttestAgentRequest
		answer attest.Challenger
		code   codes.Code
		msg    string
	}{
		"replayed signature": {x509popAttestation(t, node, m), func(context.Context, []byte) ([]byte, error) { return recorded, nil },
			codes.PermissionDenied, "not signed by the key"},
		"wrong key": {x509popAttestation(t, node, m), func(_ context.Context, ch []byte) ([]byte, error) {
			var c x509pop.Challenge
			_ = json.Unmarshal(ch, &c)
			sig, _ := ecdsa.SignASN1(rand.Reader, thiefKey, sha256Of(append([]byte("shortleaf x509pop challenge v1\x00"), c.Nonce...)))
			return json.Marshal(x509pop.Response{Signature: sig})
		}, codes.PermissionDenied, "not signed by the key"},
		"expired certificate": {x509popAttestation(t, expired, m), nil, codes.PermissionDenied, "expired"},
		"another CA":          {x509popAttestation(t, foreign, other), nil, codes.PermissionDenied, "does not verify"},
		"unknown attestor":    {unknown, nil, codes.InvalidArgument, "data.type"},
		"no answer":           {x509popAttestation(t, node, m), func(context.Context, []byte) ([]byte, error) { return nil, errors.New("hung up") }, codes.Canceled, ""},
	} {
		t.Run(name, func(t *testing.T) {
			resp, err := harness.AttestWith(t, srv, tc.first, tc.answer)
			if err == nil {
				t.Fatalf("attested: %v", resp.GetSvid().GetSpiffeId())
			}
			if tc.code == codes.Canceled {
				return // the agent gave up; nothing to read from the server
			}
			if st := status.Convert(err); st.Code() != tc.code || !strings.Contains(st.Message(), tc.msg) {
				t.Fatalf("got %v, want %s naming %q", err, tc.code, tc.msg)
			}
		})
	}
	after, _ := srv.Admin.ListAgents(context.Background(), &adminv1.ListAgentsRequest{})
	if n := len(after.GetAgents()); n != 1 {
		t.Fatalf("%d agents recorded, want only the honest one", n)
	}
	if got := after.GetAgents()[0]; got.GetSerialNumber() != before.GetSerialNumber() {
		t.Fatalf("the honest agent's SVID changed from %s to %s: something was signed", before.GetSerialNumber(), got.GetSerialNumber())
	}
}

func sha256Of(b []byte) []byte {
	h := sha256.Sum256(b)
	return h[:]
}

// A banned agent is cut off and cannot come back by re-attesting, though
// its node still holds a good certificate; once unbanned it re-attests by
// itself and its workloads are served again.
func TestBannedAgentStaysOutUntilUnbanned(t *testing.T) {
	m := x509poptest.New(t, "corp")
	srv := harness.StartServer(t, withX509Pop(t, m))
	node, ag := startServingNode(t, srv, m)
	id := ag.ID()
	ctx := context.Background()
	if _, err := srv.Admin.BanAgent(ctx, &adminv1.BanAgentRequest{SpiffeId: id}); err != nil {
		t.Fatal(err)
	}
	// The agent learns at its next sync, tries to re-attest and is refused.
	_, err := harness.AttestWith(t, srv, x509popAttestation(t, node, m), mustClient(t, node, m).Answer)
	if st := status.Convert(err); st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), "banned") {
		t.Fatalf("attestation of a banned node: %v", err)
	}
	harness.Eventually(t, 10*time.Second, func() bool {
		a, err := srv.Admin.GetAgent(ctx, &adminv1.GetAgentRequest{SpiffeId: id})
		return err == nil && a.GetBanned() && a.GetSerialNumber() == ""
	})
	time.Sleep(time.Second) // several sync intervals: it stays out
	if a, _ := srv.Admin.GetAgent(ctx, &adminv1.GetAgentRequest{SpiffeId: id}); !a.GetBanned() || a.GetSerialNumber() != "" {
		t.Fatalf("banned agent got back in: %v", a)
	}
	if _, err := srv.Admin.UnbanAgent(ctx, &adminv1.UnbanAgentRequest{SpiffeId: id}); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 40*time.Second, func() bool {
		a, err := srv.Admin.GetAgent(ctx, &adminv1.GetAgentRequest{SpiffeId: id})
		return err == nil && !a.GetBanned() && a.GetSerialNumber() != ""
	})
	if _, err := fetchX509(t, ag.Addr(), 15*time.Second); err != nil {
		t.Fatalf("after unban: %v", err)
	}
}

// startServingNode starts an x509pop agent for a new node of m, with an
// entry for this test process that it serves.
func startServingNode(t *testing.T, srv *harness.Server, m *x509poptest.CA) (*x509poptest.NodeCert, *harness.Agent) {
	t.Helper()
	node := m.IssueNode(t, t.TempDir(), "host-a.corp", time.Time{}, time.Time{})
	ag := harness.StartAgent(t, srv, withNode(node))
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/web", ParentId: ag.ID(), Selectors: []string{uidSelector()}})
	if _, err := fetchX509(t, ag.Addr(), 15*time.Second); err != nil {
		t.Fatal(err)
	}
	return node, ag
}

func mustClient(t *testing.T, node *x509poptest.NodeCert, m *x509poptest.CA) *x509pop.Client {
	c, err := x509pop.NewClient([]*x509.Certificate{node.Leaf, m.Intermediate}, node.Key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The server is down for longer than the agent SVID lives: when it is
// back, the agent, holding only an expired SVID, proves its node again by
// itself (no new token) and goes on serving its workloads under the same
// agent ID.
func TestAgentReattestsAfterItsSVIDExpiredWhileServerWasDown(t *testing.T) {
	m := x509poptest.New(t, "corp")
	srv := harness.StartServer(t, withX509Pop(t, m), func(c *server.Config) {
		c.AgentSVIDTTL, c.DefaultSVIDTTL, c.MaxSVIDTTL = 4*time.Second, 4*time.Second, 4*time.Second
	})
	srv.Config.AgentAPIAddr = srv.AgentAddr() // where the agent looks for it after the restart
	_, ag := startServingNode(t, srv, m)
	id := ag.ID()
	srv.Stop()
	time.Sleep(5 * time.Second) // past the agent SVID's 4s life
	srv = srv.Restart(t)
	harness.Eventually(t, 40*time.Second, func() bool {
		a, err := srv.Admin.GetAgent(context.Background(), &adminv1.GetAgentRequest{SpiffeId: id})
		return err == nil && a.GetSerialNumber() != "" && time.Unix(a.GetNotAfter(), 0).After(time.Now())
	})
	// Its workload SVIDs expired meanwhile too: they are renewed on the
	// new agent SVID.
	harness.Eventually(t, 15*time.Second, func() bool {
		x, err := fetchX509(t, ag.Addr(), 5*time.Second)
		return err == nil && x.DefaultSVID().Certificates[0].NotAfter.After(time.Now())
	})
	if ag.ID() != id {
		t.Fatalf("agent ID changed from %s to %s", id, ag.ID())
	}
}

// Node aliases change under running agents: an alias created after the
// agent connected brings its entries to the agent's sync stream, and
// deleting it takes them away again.
func TestNodeAliasChangesReachRunningAgents(t *testing.T) {
	m := x509poptest.New(t, "corp")
	srv := harness.StartServer(t, withX509Pop(t, m))
	node := m.IssueNode(t, t.TempDir(), "host-a.corp", time.Time{}, time.Time{})
	ag := harness.StartAgent(t, srv, withNode(node))
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/fleet/web", ParentId: fleetAlias, Selectors: []string{uidSelector()}})
	if _, err := fetchX509(t, ag.Addr(), 2*time.Second); err == nil {
		t.Fatal("served an entry of an alias the agent does not belong to")
	}
	alias := srv.CreateEntry(t, &adminv1.Entry{SpiffeId: fleetAlias, ParentId: ca.ServerID(harness.TrustDomain).String(),
		Selectors: []string{"x509pop:subject:cn:host-a.corp"}})
	x, err := fetchX509(t, ag.Addr(), 15*time.Second)
	if err != nil {
		t.Fatalf("after the alias was created: %v", err)
	}
	if got := x.DefaultSVID().ID.String(); got != "spiffe://example.org/fleet/web" {
		t.Fatalf("served %s", got)
	}
	if _, err := srv.Admin.DeleteEntry(context.Background(), &adminv1.DeleteEntryRequest{Id: alias.GetId()}); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 15*time.Second, func() bool {
		_, err := fetchX509(t, ag.Addr(), 500*time.Millisecond)
		return err != nil
	})
}

// A DaemonSet agent attests with its projected service-account token; the
// server checks it with the cluster's TokenReview API (client-go against a
// stand-in API server) and reads the pod's node. The agent ID names the
// cluster and node, and a node alias of the cluster's labelled nodes gives
// a go-spiffe workload on it its SVID. A token the cluster does not
// authenticate attests nothing.
func TestKubernetesPSATAgentServesItsClustersAlias(t *testing.T) {
	api := k8spsattest.NewAPIServer(t, "projected-agent-token", map[string]string{"pool": "payments"})
	v, err := k8spsat.NewTokenReviewValidatorFor(&rest.Config{Host: api.URL, BearerToken: k8spsattest.APIToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: api.CAPEM()}})
	if err != nil {
		t.Fatal(err)
	}
	psat, err := k8spsat.NewServer([]*k8spsat.Cluster{{Name: "prod", AllowedServiceAccounts: []string{"shortleaf:shortleaf-agent"}, Validator: v}})
	if err != nil {
		t.Fatal(err)
	}
	srv := harness.StartServer(t, func(c *server.Config) { c.NodeAttestors = map[string]attest.NodeServer{k8spsat.Type: psat} })
	const alias = "spiffe://example.org/k8s/prod/payments-nodes"
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: alias, ParentId: ca.ServerID(harness.TrustDomain).String(),
		Selectors: []string{"k8s_psat:cluster:prod", "k8s_psat:agent_node_label:pool:payments"}})
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/payments/api", ParentId: alias, Selectors: []string{uidSelector()}})

	tokenPath := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenPath, []byte("projected-agent-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ag := harness.StartAgent(t, srv, func(c *agent.Config) {
		c.JoinToken, c.NodeAttestor = "", &k8spsat.Client{Cluster: "prod", TokenPath: tokenPath}
	})
	if want := "spiffe://example.org/agent/k8s_psat/prod/" + k8spsattest.NodeUID; ag.ID() != want {
		t.Fatalf("agent ID %s, want %s", ag.ID(), want)
	}
	x, err := fetchX509(t, ag.Addr(), 15*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got := x.DefaultSVID().ID.String(); got != "spiffe://example.org/payments/api" {
		t.Fatalf("served %s", got)
	}
	payload, _ := json.Marshal(k8spsat.Payload{Cluster: "prod", Token: "a-token-the-cluster-never-issued"})
	_, csr := harness.NewCSR(t, spiffeid.ID{})
	_, err = harness.AttestWith(t, srv, &agentv1.AttestAgentRequest{Csr: csr,
		Attestation: &agentv1.AttestAgentRequest_Data{Data: &agentv1.AttestationData{Type: k8spsat.Type, Payload: payload}}}, nil)
	if st := status.Convert(err); st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), "did not authenticate") {
		t.Fatalf("forged token: %v", err)
	}
	if strings.Contains(status.Convert(err).Message(), "a-token-the-cluster-never-issued") {
		t.Fatal("the refusal echoes the token")
	}
}

// The shortleaf binaries, configured by their YAML files alone: a server
// process accepting x509pop nodes of a CA bundle file, and an agent process
// attesting with a certificate and key on disk, serve a go-spiffe workload
// the entry of a node alias.
func TestX509PopProcessesFromTheirConfigFiles(t *testing.T) {
	m := x509poptest.New(t, "corp")
	dir := harness.ShortDir(t)
	caPath := filepath.Join(dir, "machine-ca.pem")
	if err := os.WriteFile(caPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: m.Root.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := harness.StartServerProcess(t, harness.ProcessConfig{Extra: "node_attestors:\n  x509pop:\n    ca_bundle_path: " + caPath + "\n"})
	admin := srv.Admin(t)
	ctx := context.Background()
	for _, e := range []*adminv1.Entry{
		{SpiffeId: fleetAlias, ParentId: ca.ServerID(harness.TrustDomain).String(), Selectors: []string{"x509pop:ca:fingerprint:" + x509pop.Fingerprint(m.Root)}},
		{SpiffeId: "spiffe://example.org/fleet/web", ParentId: fleetAlias, Selectors: []string{uidSelector()}},
	} {
		if _, err := admin.CreateEntry(ctx, &adminv1.CreateEntryRequest{Entry: e}); err != nil {
			t.Fatal(err)
		}
	}
	b, err := admin.GetBundle(ctx, &adminv1.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var roots []*x509.Certificate
	for _, der := range b.GetX509Authorities() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		roots = append(roots, c)
	}
	node := m.IssueNode(t, dir, "host-a.corp", time.Time{}, time.Time{})
	ag := harness.StartAgentProcess(t, harness.AgentProcessConfig{ServerAddr: srv.AgentAddr, Bundle: roots,
		DataDir: filepath.Join(dir, "agent"), SocketPath: filepath.Join(dir, "agent.sock"),
		Extra: "node_attestor:\n  x509pop:\n    certificate_path: " + node.CertPath + "\n    private_key_path: " + node.KeyPath + "\n"})
	x, err := fetchX509(t, "unix://"+filepath.Join(dir, "agent.sock"), 15*time.Second)
	if err != nil {
		t.Fatalf("%v\n%s", err, ag.Logs())
	}
	if got := x.DefaultSVID().ID.String(); got != "spiffe://example.org/fleet/web" {
		t.Fatalf("served %s", got)
	}
	if !strings.Contains(ag.Logs(), "agent/x509pop/"+x509pop.Fingerprint(node.Leaf)) {
		t.Fatalf("the agent did not attest as its certificate's agent ID:\n%s", ag.Logs())
	}
}
