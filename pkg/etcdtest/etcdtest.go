// Package etcdtest starts embedded etcd clusters inside a test process, so
// that the etcd datastore and several server replicas are tested against
// the real etcd server with nothing installed. Only tests import it: the
// shipped binary links the etcd client alone.
//
// Each cluster listens on its own random loopback address (127.x.y.z), so
// clusters of tests running side by side, even of two `make test` runs,
// never compete for a port.
package etcdtest

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

const (
	clientPort = 2379
	peerPort   = 2380
	startLimit = 60 * time.Second
)

// Cluster is a running embedded etcd cluster of one or more members.
type Cluster struct {
	dir   string
	token string
	// removeDir is set for a shared cluster, whose directory no test owns.
	removeDir bool
	mu        sync.Mutex
	members   []*member
}

type member struct {
	name    string
	host    string
	etcd    *embed.Etcd
	stopped bool
}

// Start starts a cluster of n members and waits until it is ready. It is
// stopped when the test ends.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	c, err := start(t.TempDir(), n)
	if c != nil {
		t.Cleanup(c.Stop)
	}
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// StartShared starts a cluster for a whole test binary (from TestMain),
// in a temporary directory that Stop removes.
func StartShared(n int) (*Cluster, error) {
	dir, err := os.MkdirTemp("", "etcdtest-")
	if err != nil {
		return nil, err
	}
	c, err := start(dir, n)
	if err != nil {
		if c != nil {
			c.Stop()
		}
		_ = os.RemoveAll(dir)
		return nil, err
	}
	c.removeDir = true
	return c, nil
}

func start(dir string, n int) (*Cluster, error) {
	c := &Cluster{dir: dir, token: "shortleaf-test-" + randomHex(4)}
	for i := range n {
		host, err := freeLoopback()
		if err != nil {
			return nil, err
		}
		c.members = append(c.members, &member{name: fmt.Sprintf("m%d", i), host: host})
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, m := range c.members {
		wg.Go(func() { errs[i] = c.startMember(m) })
	}
	wg.Wait()
	return c, errors.Join(errs...)
}

// Endpoints are the client URLs of every member, stopped or not (clients
// fail over among them).
func (c *Cluster) Endpoints() []string {
	out := make([]string, len(c.members))
	for i, m := range c.members {
		out[i] = "http://" + net.JoinHostPort(m.host, fmt.Sprint(clientPort))
	}
	return out
}

// Client returns a client of the whole cluster, closed when the test ends.
func (c *Cluster) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// StopMember stops member i, as a crash of its machine would; the others
// keep quorum while a majority runs.
func (c *Cluster) StopMember(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.members[i]
	if !m.stopped {
		m.etcd.Close()
		m.stopped = true
	}
}

// RestartMember starts member i again after StopMember, on its data: it
// rejoins the cluster and catches up from the others.
func (c *Cluster) RestartMember(i int) error {
	c.mu.Lock()
	m := c.members[i]
	stopped := m.stopped
	c.mu.Unlock()
	if !stopped {
		return nil
	}
	return c.startMember(m)
}

func (c *Cluster) startMember(m *member) error {
	cfg := embed.NewConfig()
	cfg.Name = m.name
	cfg.Dir = filepath.Join(c.dir, m.name)
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(c.dir, m.name+".log")}
	// A test cluster lives for seconds on a shared disk: skipping fsync
	// keeps its writes from queueing behind other processes' I/O.
	cfg.UnsafeNoFsync = true
	peer := url.URL{Scheme: "http", Host: net.JoinHostPort(m.host, fmt.Sprint(peerPort))}
	client := url.URL{Scheme: "http", Host: net.JoinHostPort(m.host, fmt.Sprint(clientPort))}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	var initial []string
	for _, o := range c.members {
		initial = append(initial, fmt.Sprintf("%s=http://%s", o.name, net.JoinHostPort(o.host, fmt.Sprint(peerPort))))
	}
	cfg.InitialCluster = strings.Join(initial, ",")
	cfg.InitialClusterToken = c.token
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("etcdtest: start %s: %w", m.name, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return fmt.Errorf("etcdtest: %s: %w", m.name, err)
	case <-time.After(startLimit):
		e.Close()
		return fmt.Errorf("etcdtest: %s not ready after %s", m.name, startLimit)
	}
	c.mu.Lock()
	m.etcd, m.stopped = e, false
	c.mu.Unlock()
	return nil
}

// Stop stops every member.
func (c *Cluster) Stop() {
	for i := range c.members {
		if c.members[i].etcd != nil {
			c.StopMember(i)
		}
	}
	if c.removeDir {
		_ = os.RemoveAll(c.dir)
	}
}

// freeLoopback picks a random 127.x.y.z address whose etcd ports are free.
func freeLoopback() (string, error) {
	for range 100 {
		b := make([]byte, 3)
		_, _ = rand.Read(b)
		if b[0] == 0 && b[1] == 0 { // keep clear of 127.0.0.x, where other servers live
			continue
		}
		host := fmt.Sprintf("127.%d.%d.%d", b[0], b[1], b[2]|1)
		if portsFree(host) {
			return host, nil
		}
	}
	return "", errors.New("etcdtest: no free loopback address")
}

func portsFree(host string) bool {
	for _, p := range []int{clientPort, peerPort} {
		l, err := net.Listen("tcp", net.JoinHostPort(host, fmt.Sprint(p)))
		if err != nil {
			return false
		}
		_ = l.Close()
	}
	return true
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x", b)
}
