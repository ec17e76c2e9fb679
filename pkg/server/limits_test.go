package server

import (
	"testing"
	"time"

	"github.com/shortleaf/shortleaf/pkg/api"
)

// Zero limits take the documented defaults; a burst below a full batch is
// raised to it (else a full batch could never pass); -1 turns a rate off.
func TestLimitDefaults(t *testing.T) {
	var l Limits
	l.applyDefaults()
	want := Limits{AttestationsPerSecond: 1, AttestationBurst: 10, SigningPerSecond: 500, SigningBurst: 1000, MaxConnections: 10_000, MaxConnectionAge: 30 * time.Minute}
	if l != want {
		t.Fatalf("defaults = %+v, want %+v", l, want)
	}
	small := Limits{SigningBurst: 10}
	small.applyDefaults()
	if small.SigningBurst != api.MaxBatchSize {
		t.Fatalf("a burst of 10 became %d, want the batch size %d", small.SigningBurst, api.MaxBatchSize)
	}
	off := Limits{AttestationsPerSecond: -1, SigningPerSecond: -1}
	off.applyDefaults()
	if off.attestLimiter() != nil || off.signLimiter() != nil {
		t.Fatal("-1 did not turn the rate limits off")
	}
}
