package entryfeed_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/shortleaf/shortleaf/pkg/datastore"
	"github.com/shortleaf/shortleaf/pkg/entryfeed"
)

// replaySource is a datastore that, once go is closed, replays prepared
// changes as fast as the feed takes them: the benchmark measures the feed,
// not a store's writes.
type replaySource struct {
	batches [][]datastore.EntryChange
	release <-chan struct{}
}

func (replaySource) EntriesRevision(context.Context, string) (uint64, uint64, error) {
	return 0, 0, nil
}

func (r replaySource) WatchEntries(ctx context.Context, _ uint64, fn func([]datastore.EntryChange, uint64) error) error {
	select {
	case <-r.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	for _, batch := range r.batches {
		if err := fn(batch, batch[len(batch)-1].Revision); err != nil {
			return err
		}
	}
	<-ctx.Done()
	return ctx.Err()
}

// BenchmarkFeedFanOut routes entry changes, each to one of many connected
// agents, until every agent has taken its own: the cost of a change stays
// flat as the number of agents grows, since it wakes only the agent it
// concerns. Each change comes alone, as each write of an entry does, with
// the default history kept. It reports changes/s.
func BenchmarkFeedFanOut(b *testing.B) {
	for _, agents := range []int{100, 10_000} {
		b.Run(fmt.Sprintf("agents=%d", agents), func(b *testing.B) {
			const batch = 1
			var batches [][]datastore.EntryChange
			for i := range b.N {
				if i%batch == 0 {
					batches = append(batches, nil)
				}
				e := &datastore.Entry{ID: fmt.Sprintf("e%d", i), ParentID: fmt.Sprintf("spiffe://td/agent/%d", i%agents)}
				batches[len(batches)-1] = append(batches[len(batches)-1], datastore.EntryChange{Revision: uint64(i + 1), Entry: e})
			}
			start := make(chan struct{})
			feed := entryfeed.New(replaySource{batches: batches, release: start}, entryfeed.Config{Queue: b.N + 1})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() { _ = feed.Run(ctx) }()
			var received atomic.Int64
			var wg sync.WaitGroup
			for i := range agents {
				sub, _, _, _, err := feed.Subscribe(ctx, entryfeed.NewParents(fmt.Sprintf("spiffe://td/agent/%d", i)), 0)
				if err != nil {
					b.Fatal(err)
				}
				wg.Go(func() {
					for {
						select {
						case <-sub.Ready():
							changes, _ := sub.Next()
							received.Add(int64(len(changes)))
						case <-ctx.Done():
							return
						}
					}
				})
			}
			b.ResetTimer()
			close(start)
			for received.Load() < int64(b.N) {
				runtime.Gosched()
			}
			b.StopTimer()
			cancel()
			wg.Wait()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "changes/s")
		})
	}
}
