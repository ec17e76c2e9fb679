package harness_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/pkg/datastore"
	"github.com/shortleaf/shortleaf/pkg/harness"
	"github.com/shortleaf/shortleaf/pkg/server"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
	agentv1 "github.com/shortleaf/shortleaf/proto/agent/v1"
)

// BenchmarkEntrySync is what keeping one agent's entries current costs as
// the agent's entry count grows: after its first (full) read, each entry
// written through the admin API reaches the agent's Sync stream as one
// change. It reports the bytes of the first read (full-bytes), of each
// pushed change (push-bytes/change), and of what the polling SyncEntries
// resends after any change (poll-bytes/change: every entry); ns/op is one
// change from the admin call to its arrival on the stream, the bbolt commit
// included.
func BenchmarkEntrySync(b *testing.B) {
	for _, n := range []int{1_000, 10_000, 100_000} {
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			srv, a := serverWithEntries(b, n)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()

			stream, err := a.Client.Sync(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if err := stream.Send(&agentv1.SyncRequest{}); err != nil {
				b.Fatal(err)
			}
			var fullBytes, got int
			for {
				msg, err := stream.Recv()
				if err != nil {
					b.Fatal(err)
				}
				fullBytes += proto.Size(msg)
				got += len(msg.GetEntries())
				if msg.GetState() != nil {
					break
				}
			}
			if got != n {
				b.Fatalf("first read brought %d entries, want %d", got, n)
			}
			pollBytes := pollSize(b, a.Client)

			var pushBytes int
			i := 0
			for b.Loop() {
				i++
				srv.CreateEntry(b, &adminv1.Entry{SpiffeId: fmt.Sprintf("spiffe://example.org/new/%d", i), ParentId: a.ID.String(), Selectors: []string{"unix:uid:1"}})
				msg, err := stream.Recv()
				if err != nil {
					b.Fatal(err)
				}
				if len(msg.GetEntries()) != 1 {
					b.Fatalf("pushed %d entries for one change", len(msg.GetEntries()))
				}
				pushBytes += proto.Size(msg)
			}
			b.ReportMetric(float64(fullBytes), "full-bytes")
			b.ReportMetric(float64(pushBytes)/float64(i), "push-bytes/change")
			b.ReportMetric(float64(pollBytes), "poll-bytes/change")
		})
	}
}

// serverWithEntries starts a server with an attested raw agent holding n
// entries. The entries are imported into the datastore file in one
// transaction while the server is stopped: through the admin API, one
// commit each, 100k would take minutes.
func serverWithEntries(b *testing.B, n int) (*harness.Server, *harness.RawAgent) {
	b.Helper()
	srv := harness.StartServer(b, func(c *server.Config) { c.Logger = slog.New(slog.DiscardHandler) })
	a := harness.AttestRaw(b, srv)
	srv.Stop()
	ctx := context.Background()
	path := filepath.Join(srv.Config.DataDir, "datastore.db")
	st, err := datastore.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	snap, err := st.Export(ctx)
	st.Close()
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	for i := range n {
		snap.Entries = append(snap.Entries, &datastore.Entry{
			ID: fmt.Sprintf("bench%07d", i), SPIFFEID: fmt.Sprintf("spiffe://example.org/bench/%d", i), ParentID: a.ID.String(),
			Selectors: []attest.Selector{{Type: "unix", Value: "uid:1"}}, X509SVIDTTL: time.Hour, CreatedAt: now, Revision: 1,
		})
	}
	if err := os.Remove(path); err != nil {
		b.Fatal(err)
	}
	if st, err = datastore.Open(path); err != nil {
		b.Fatal(err)
	}
	err = st.Import(ctx, snap)
	st.Close()
	if err != nil {
		b.Fatal(err)
	}
	srv.Config.AgentAPIAddr = srv.AgentAddr() // where the raw agent's connection looks for it
	return srv.Restart(b), a
}

// pollSize is the bytes one SyncEntries poll brings once anything of the
// agent's changed: every entry, and the bundle.
func pollSize(b *testing.B, c agentv1.AgentAPIClient) int {
	b.Helper()
	stream, err := c.SyncEntries(context.Background(), &agentv1.SyncEntriesRequest{})
	if err != nil {
		b.Fatal(err)
	}
	size := 0
	for {
		msg, err := stream.Recv()
		if err != nil {
			b.Fatal(err)
		}
		size += proto.Size(msg)
		if !msg.GetMore() {
			return size
		}
	}
}

// BenchmarkSyncPages is an agent's full read of entries of three sizes
// (a plain entry, 9 KB and 60 KB, near the 64 KiB limit), about 5 MB of
// entries each: more than gRPC's 4 MiB message limit in one message. It
// reports the largest page against that limit (page/4MiB; it must stay well
// under 1) and the pages sent.
func BenchmarkSyncPages(b *testing.B) {
	for _, size := range []struct {
		name string
		n    int
		pad  int // bytes of unix:path selectors added to each entry
	}{{"plain", 20_000, 0}, {"9KB", 600, 9_000}, {"60KB", 90, 60_000}} {
		b.Run("entries="+size.name, func(b *testing.B) {
			srv := harness.StartServer(b, func(c *server.Config) { c.Logger = slog.New(slog.DiscardHandler) })
			a := harness.AttestRaw(b, srv)
			ctx := context.Background()
			per := min(100, (2<<20)/(size.pad+200)) // calls well under the admin API's 4 MiB
			for from := 0; from < size.n; from += per {
				req := &adminv1.BatchCreateEntryRequest{}
				for i := from; i < min(from+per, size.n); i++ {
					sels := []string{fmt.Sprintf("unix:uid:%d", 1000+i)}
					for k := 0; k < size.pad; k += 3000 { // a selector holds at most 4 KiB
						sels = append(sels, fmt.Sprintf("unix:path:/%d/%s", k, strings.Repeat("p", min(3000, size.pad-k))))
					}
					req.Entries = append(req.Entries, &adminv1.Entry{SpiffeId: fmt.Sprintf("spiffe://example.org/page/%d", i), ParentId: a.ID.String(), Selectors: sels})
				}
				resp, err := srv.Admin.BatchCreateEntry(ctx, req)
				if err != nil {
					b.Fatal(err)
				}
				if r := resp.GetResults()[0]; r.GetStatusCode() != 0 {
					b.Fatal(r.GetStatusMessage())
				}
			}
			largest, pages := 0, 0
			for b.Loop() {
				largest, pages = 0, 0
				sctx, cancel := context.WithCancel(ctx)
				stream, err := a.Client.Sync(sctx)
				if err != nil {
					b.Fatal(err)
				}
				if err := stream.Send(&agentv1.SyncRequest{}); err != nil {
					b.Fatal(err)
				}
				got := 0
				for {
					msg, err := stream.Recv()
					if err != nil {
						b.Fatal(err)
					}
					if n := len(msg.GetEntries()); n > 0 {
						got += n
						pages++
					}
					largest = max(largest, proto.Size(msg))
					if msg.GetState() != nil {
						break
					}
				}
				cancel()
				if got != size.n {
					b.Fatalf("read %d of %d entries", got, size.n)
				}
			}
			b.ReportMetric(float64(largest)/float64(4<<20), "page/4MiB")
			b.ReportMetric(float64(pages), "pages")
		})
	}
}
