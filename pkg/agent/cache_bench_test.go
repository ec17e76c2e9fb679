package agent

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net/url"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/pkg/workloadapi"
)

// svidFixture is n entries with one signed chain (leaf, intermediate) and
// key each, as the server would return them: made once per size, since
// signing 100k leaves takes seconds.
type svidFixture struct {
	entries map[string]*entry
	ids     []string
	chains  [][][]byte
	keys    []crypto.Signer
}

var fixtures = map[int]*svidFixture{}

func fixture(b *testing.B, n int) *svidFixture {
	if f, ok := fixtures[n]; ok {
		return f
	}
	b.Helper()
	now := time.Now()
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rootTpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	rootDER, _ := x509.CreateCertificate(rand.Reader, rootTpl, rootTpl, rootKey.Public(), rootKey)
	root, _ := x509.ParseCertificate(rootDER)
	intKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	intTpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "intermediate"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, URIs: []*url.URL{{Scheme: "spiffe", Host: "example.org"}}}
	intDER, _ := x509.CreateCertificate(rand.Reader, intTpl, root, intKey.Public(), rootKey)
	inter, _ := x509.ParseCertificate(intDER)
	f := &svidFixture{entries: make(map[string]*entry, n)}
	for i := range n {
		id := fmt.Sprintf("%032x", i)
		sid := spiffeid.RequireFromString("spiffe://example.org/workload/" + strconv.Itoa(i))
		f.entries[id] = &entry{ID: id, Revision: 1, Registration: workloadapi.Registration{EntryID: id, SPIFFEID: sid,
			Selectors: []attest.Selector{{Type: "unix", Value: "uid:" + strconv.Itoa(1000+i)}, {Type: "unix", Value: "gid:1000"}}}}
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		leafTpl := &x509.Certificate{SerialNumber: big.NewInt(int64(i) + 10), NotBefore: now.Add(-time.Minute), NotAfter: now.Add(5 * time.Minute),
			URIs: []*url.URL{sid.URL()}, KeyUsage: x509.KeyUsageDigitalSignature}
		leafDER, err := x509.CreateCertificate(rand.Reader, leafTpl, inter, key.Public(), intKey)
		if err != nil {
			b.Fatal(err)
		}
		f.ids = append(f.ids, id)
		f.chains = append(f.chains, [][]byte{leafDER, intDER})
		f.keys = append(f.keys, key)
	}
	fixtures[n] = f
	return f
}

// BenchmarkAgentCache fills an agent's cache with n SVIDs the way issuance
// does (each answer's chain parsed and stored, a batch of 500 published at
// once) and reports the agent's CPU per SVID (the server's signing and the
// agent's key generation left out: they cost the same at any size) and the
// live heap per SVID held, entries and the published state included.
func BenchmarkAgentCache(b *testing.B) {
	for _, n := range []int{1_000, 10_000, 100_000} {
		b.Run("entries="+strconv.Itoa(n), func(b *testing.B) {
			f := fixture(b, n)
			var c *cache
			var heap uint64
			for b.Loop() {
				b.StopTimer()
				c = nil //nolint:ineffassign // the previous cache is garbage before the baseline is read
				runtime.GC()
				var before runtime.MemStats
				runtime.ReadMemStats(&before)
				b.StartTimer()

				c = newCache(spiffeid.RequireTrustDomainFromString("example.org"))
				entries := make(map[string]*entry, n)
				for id, e := range f.entries {
					entries[id] = &entry{ID: e.ID, Revision: e.Revision, Registration: workloadapi.Registration{EntryID: e.ID, SPIFFEID: e.SPIFFEID,
						Selectors: append([]attest.Selector(nil), e.Selectors...)}}
				}
				c.setEntries(entries)
				now := time.Now()
				for from := 0; from < n; from += 500 {
					issued := make(map[string]*svid, 500)
					for i := from; i < min(from+500, n); i++ {
						s, err := c.newSVID(entries[f.ids[i]], f.keys[i], f.chains[i], now, false)
						if err != nil {
							b.Fatal(err)
						}
						issued[f.ids[i]] = s
					}
					c.setSVIDs(issued)
				}

				b.StopTimer()
				runtime.GC()
				var after runtime.MemStats
				runtime.ReadMemStats(&after)
				heap = after.HeapAlloc - before.HeapAlloc
				b.StartTimer()
			}
			runtime.KeepAlive(c)
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/svid")
			b.ReportMetric(float64(heap)/float64(n), "live-B/svid")
		})
	}
}
