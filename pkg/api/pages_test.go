package api

import (
	"slices"
	"testing"
)

// Sync pages are bounded by count and by bytes, and every item is sent.
func TestPageEnds(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    int
		size int
		want []int
	}{
		{"none", 0, 100, nil},
		{"small entries: the count bounds", 1200, 200, []int{500, 1000, 1200}},
		// 8 KB entries: 128 make 1 MiB exactly, the 129th starts a page.
		{"large entries: the bytes bound", 600, 8 << 10, []int{128, 256, 384, 512, 600}},
		{"an entry over the page alone", 2, SyncPageBytes + 1, []int{1, 2}},
	} {
		got := pageEnds(tc.n, func(int) int { return tc.size })
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: pages end at %v, want %v", tc.name, got, tc.want)
		}
	}
}
