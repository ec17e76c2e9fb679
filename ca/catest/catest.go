package catest

import (
	"context"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/pkg/keymanager"
)

// TrustDomain is the test CA's trust domain.
var TrustDomain = spiffeid.RequireTrustDomainFromString("example.org")

// MemoryJournal keeps the CA journal in memory.
type MemoryJournal = ca.MemoryJournal

// Config returns a CA config with softkms keys under a temporary directory
// and an in-memory journal; change it and pass it to NewFromConfig.
func Config(t testing.TB) ca.Config {
	t.Helper()
	km, err := keymanager.New(keymanager.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return ca.Config{TrustDomain: TrustDomain, Keys: km, Journal: &MemoryJournal{}}
}

// New returns a fresh CA with default settings.
func New(t testing.TB) *ca.CA {
	t.Helper()
	return NewFromConfig(t, Config(t))
}

// NewFromConfig returns a CA built from cfg.
func NewFromConfig(t testing.TB, cfg ca.Config) *ca.CA {
	t.Helper()
	c, err := ca.New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("new CA: %v", err)
	}
	return c
}
