package ratelimit_test

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shortleaf/shortleaf/pkg/ratelimit"
)

func TestLimiterPerKeyAndRefill(t *testing.T) {
	l := ratelimit.New(ratelimit.Config{PerSecond: 1, Burst: 2})
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if !l.Allow("a", now, 2) || l.Allow("a", now, 1) {
		t.Fatal("a burst of 2 must pass once, then nothing")
	}
	if !l.Allow("b", now, 1) {
		t.Fatal("another key has its own bucket")
	}
	if !l.Allow("a", now.Add(time.Second), 1) {
		t.Fatal("the bucket refills at the rate")
	}
	if l.Allow("a", now.Add(time.Hour), 3) {
		t.Fatal("a request larger than the burst can never pass")
	}
	off := ratelimit.New(ratelimit.Config{PerSecond: -1})
	if off != nil || !off.Allow("x", now, 1_000_000) {
		t.Fatal("a limit turned off allows everything")
	}
}

// A caller spraying keys cannot grow the limiter without bound, and a key
// that is forgotten is not better off than a fresh one.
func TestLimiterKeysAreBounded(t *testing.T) {
	l := ratelimit.New(ratelimit.Config{PerSecond: 0.001, Burst: 1, MaxKeys: 100})
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l.Allow("victim", now, 1)
	for i := range 10_000 {
		l.Allow("spray-"+strconv.Itoa(i), now, 1)
	}
	if n := l.Keys(); n > 100 {
		t.Fatalf("%d keys tracked, want at most 100", n)
	}
}

func TestSamplerLogsOncePerIntervalWithACount(t *testing.T) {
	var out strings.Builder
	s := ratelimit.NewSampler(slog.New(slog.NewTextHandler(&out, nil)), time.Minute)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 50 {
		s.Warn(context.Background(), now.Add(time.Duration(i)*time.Second), "src", "refused")
	}
	if n := strings.Count(out.String(), "refused"); n != 1 {
		t.Fatalf("%d lines in the first minute, want 1:\n%s", n, out.String())
	}
	s.Warn(context.Background(), now.Add(2*time.Minute), "src", "refused")
	if !strings.Contains(out.String(), "suppressed_since_last=49") {
		t.Fatalf("the next line does not count the 49 suppressed:\n%s", out.String())
	}
}
