package harness_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shortleaf/shortleaf/pkg/datastore"
	"github.com/shortleaf/shortleaf/pkg/etcdtest"
	"github.com/shortleaf/shortleaf/pkg/harness"
	"github.com/shortleaf/shortleaf/pkg/server"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

func etcdPrefix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "/shortleaf-test/" + hex.EncodeToString(b) + "/"
}

// A server on etcd does the whole job: an agent attests, a workload gets an
// SVID that verifies, and a restarted server finds its CA, agents and
// entries in etcd. A second process running as the same replica is refused
// while the first holds it, and so is a config that would leave the root
// key unsealed in etcd.
func TestServerOnEtcd(t *testing.T) {
	cluster := etcdtest.Start(t, 3)
	etcd := &datastore.EtcdConfig{Endpoints: cluster.Endpoints(), Prefix: etcdPrefix(), LockWait: time.Second}
	srv := harness.StartServer(t, harness.WithPassphrase, func(c *server.Config) { c.Etcd = etcd; c.ReplicaID = "one" })
	ag := harness.StartAgent(t, srv)
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/web", ParentId: ag.ID(), Selectors: []string{uidSelector()}})
	x, err := fetchX509(t, ag.Addr(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(x.DefaultSVID().Certificates, x.Bundles); err != nil {
		t.Fatalf("SVID from a server on etcd does not verify: %v", err)
	}
	rootsBefore := x.Bundles.Bundles()[0].X509Authorities()

	// Nothing in the data dir holds the records: a second server there
	// would be refused by the data-dir lock, so use another one.
	other := srv.Config
	other.DataDir = t.TempDir()
	other.AdminSocket = filepath.Join(harness.ShortDir(t), "admin.sock")
	other.AgentAPIAddr = "127.0.0.1:0"
	other.Registry = prometheus.NewRegistry()
	if s2, err := server.New(context.Background(), other); err == nil {
		s2.Close()
		t.Fatal("a second server started as the replica another server runs as")
	} else if !strings.Contains(err.Error(), `another shortleaf server runs as replica "one" under `+etcd.Prefix) {
		t.Fatalf("second server: %v, want a refusal naming the replica and the prefix", err)
	}
	unsealed := other
	unsealed.ReplicaID, unsealed.KeyPassphrase, unsealed.InsecureUnencryptedKeys = "two", nil, true
	if s2, err := server.New(context.Background(), unsealed); err == nil {
		s2.Close()
		t.Fatal("a server on etcd started without a key passphrase")
	} else if !strings.Contains(err.Error(), "set a key passphrase") {
		t.Fatalf("server on etcd without a passphrase: %v", err)
	}

	srv = srv.Restart(t)
	entries, err := srv.Admin.ListEntries(context.Background(), &adminv1.ListEntriesRequest{})
	if err != nil || len(entries.GetEntries()) != 1 {
		t.Fatalf("entries after restart: %v, %v", entries, err)
	}
	agents, err := srv.Admin.ListAgents(context.Background(), &adminv1.ListAgentsRequest{})
	if err != nil || len(agents.GetAgents()) != 1 {
		t.Fatalf("agents after restart: %v, %v", agents, err)
	}
	bundle, err := srv.Admin.GetBundle(context.Background(), &adminv1.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	roots := bundle.GetX509Authorities()
	if len(roots) != len(rootsBefore) || !bytes.Equal(roots[0], rootsBefore[0].Raw) {
		t.Fatal("the restarted server has another root: it made a new CA instead of loading its journal from etcd")
	}
	// The agent goes on under the restarted server.
	if _, err := fetchX509(t, ag.Addr(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

// A server whose etcd lease is lost (it ended while etcd was out of reach,
// and another process may run as this replica now) stops with an error
// naming the cause rather than rotate keys it no longer owns.
func TestServerStopsWhenItLosesItsEtcdLease(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	etcd := &datastore.EtcdConfig{Endpoints: cluster.Endpoints(), Prefix: etcdPrefix(), LockTTL: 2 * time.Second}
	cfg := server.Config{
		TrustDomain: harness.TrustDomain, DataDir: t.TempDir(), AgentAPIAddr: "127.0.0.1:0", KeyPassphrase: []byte(harness.Passphrase),
		AdminSocket: filepath.Join(harness.ShortDir(t), "admin.sock"), Etcd: etcd, Logger: harness.TestLogger(t), Registry: prometheus.NewRegistry(),
	}
	srv, err := server.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	done := make(chan error, 1)
	go func() { done <- srv.Run(context.Background()) }()

	cli := cluster.Client(t)
	locks, err := cli.Get(context.Background(), etcd.Prefix+"replicas/", clientv3.WithPrefix())
	if err != nil || len(locks.Kvs) != 1 {
		t.Fatalf("lock keys: %v, %v", locks, err)
	}
	if _, err := cli.Revoke(context.Background(), clientv3.LeaseID(locks.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, datastore.ErrReplicaLeaseLost) {
			t.Fatalf("server stopped with %v, want ErrReplicaLeaseLost", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the server kept running after losing its etcd lease")
	}
}
