package workloadapi

import (
	"strconv"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/shortleaf/shortleaf/attest"
)

// BenchmarkMatch finds a workload's identities among n: by the selector
// index the agent builds, and by a scan of every identity (a State without
// the index). The index keeps the cost flat as n grows.
func BenchmarkMatch(b *testing.B) {
	for _, n := range []int{1_000, 10_000, 100_000} {
		st := &State{BySelector: map[attest.Selector][]int32{}}
		for i := range n {
			uid := attest.Selector{Type: "unix", Value: "uid:" + strconv.Itoa(1000+i)}
			st.Identities = append(st.Identities, &Identity{Registration: &Registration{EntryID: strconv.Itoa(i),
				SPIFFEID:  spiffeid.RequireFromString("spiffe://example.org/w/" + strconv.Itoa(i)),
				Selectors: []attest.Selector{{Type: "unix", Value: "gid:1000"}, uid}}})
			st.BySelector[uid] = append(st.BySelector[uid], int32(i)) //nolint:gosec // small
		}
		caller := []attest.Selector{{Type: "unix", Value: "uid:" + strconv.Itoa(1000+n/2)}, {Type: "unix", Value: "gid:1000"},
			{Type: "unix", Value: "user:app"}, {Type: "unix", Value: "group:app"}}
		scan := &State{Identities: st.Identities}
		for name, s := range map[string]*State{"index": st, "scan": scan} {
			b.Run(name+"/identities="+strconv.Itoa(n), func(b *testing.B) {
				for b.Loop() {
					if got := s.match(caller); len(got) != 1 {
						b.Fatalf("%d matches", len(got))
					}
				}
			})
		}
	}
}

// Whichever of its selectors an identity is indexed under, a match by the
// index finds what a scan finds, in the same order.
func TestSelectorIndexMatchesAsAScan(t *testing.T) {
	sel := func(i int) attest.Selector { return attest.Selector{Type: "unix", Value: "uid:" + strconv.Itoa(i)} }
	st := &State{BySelector: map[attest.Selector][]int32{}}
	for i := range 300 {
		var sels []attest.Selector
		for k := range i % 4 { // 0 to 3 selectors of 6
			sels = append(sels, sel((i*7+k*5)%6))
		}
		st.Identities = append(st.Identities, &Identity{Registration: &Registration{EntryID: strconv.Itoa(i), Selectors: sels}})
		if len(sels) > 0 {
			key := sels[i%len(sels)]
			st.BySelector[key] = append(st.BySelector[key], int32(i)) //nolint:gosec // small
		}
	}
	scan := &State{Identities: st.Identities}
	for mask := range 1 << 6 {
		var caller []attest.Selector
		for k := range 6 {
			if mask&(1<<k) != 0 {
				caller = append(caller, sel(k))
			}
		}
		got, want := st.match(caller), scan.match(caller)
		if len(got) != len(want) {
			t.Fatalf("caller %v: index found %d, scan %d", caller, len(got), len(want))
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("caller %v: order differs at %d", caller, i)
			}
		}
	}
}
