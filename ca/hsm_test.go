package ca_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/ca/catest"
	"github.com/shortleaf/shortleaf/pkg/clock"
	"github.com/shortleaf/shortleaf/pkg/keymanager"
	"github.com/shortleaf/shortleaf/pkg/keymanager/keymanagertest"
)

// The key lifecycle with every CA key inside a SoftHSM2 token: bootstrap,
// scheduled rotation, restart, forced rotation with taint and revoke, and a
// root rotation, each followed by an SVID that must verify.
func TestLifecycleWithKeysInSoftHSM(t *testing.T) {
	uri := keymanagertest.SoftHSM(t)
	km, err := keymanager.NewKMS(context.Background(), uri)
	if err != nil {
		t.Fatal(err)
	}
	defer km.Close()
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	cfg := ca.Config{TrustDomain: catest.TrustDomain, Keys: km, Journal: &catest.MemoryJournal{}, Clock: clk,
		IntermediateTTL: time.Hour, MaxSVIDTTL: 5 * time.Minute}
	c := catest.NewFromConfig(t, cfg)
	for _, a := range c.Authorities() {
		if !strings.HasPrefix(a.KeyRef, "pkcs11:") {
			t.Fatalf("%s %s key is %q, not in the HSM", a.Kind, a.ID, a.KeyRef)
		}
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	id := spiffeid.RequireFromString("spiffe://example.org/web")
	verify := func(step string) {
		t.Helper()
		chain, err := c.SignX509SVID(ca.X509SVIDParams{PublicKey: key.Public(), SPIFFEID: id, TTL: 5 * time.Minute})
		if err != nil {
			t.Fatalf("%s: sign: %v", step, err)
		}
		bundle, _ := c.Bundle()
		if _, _, err := x509svid.Verify(chain, bundle, x509svid.WithTime(clk.Now())); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
	}
	verify("bootstrap")

	clk.Add(56 * time.Minute) // past preparation and activation
	if err := c.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if count(c, ca.KindIntermediate, ca.StateOld) != 1 {
		t.Fatalf("no scheduled rotation: %v", byKindState(c))
	}
	verify("scheduled rotation")

	before := c.Authorities()
	c = catest.NewFromConfig(t, cfg) // restart: every key reopened from the token
	sameAuthorities(t, "restart with HSM keys", before, c.Authorities())
	verify("restart")

	if _, err := c.Prepare(ctx, ca.KindIntermediate); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Activate(ctx, ca.KindIntermediate); err != nil {
		t.Fatal(err)
	}
	var old string
	for _, a := range c.Authorities() {
		if a.Kind == ca.KindIntermediate && a.State == ca.StateOld {
			old = a.ID
		}
	}
	if _, err := c.Taint(ctx, old); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Revoke(ctx, old, func(string) []string { return nil }); err != nil {
		t.Fatal(err)
	}
	verify("forced rotation")

	if _, err := c.PrepareRoot(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.ActivateRoot(ctx, false); err != nil {
		t.Fatal(err)
	}
	verify("root activation")
	clk.Add(time.Hour)
	if err := c.Rotate(ctx); err != nil { // the old root retires on schedule
		t.Fatal(err)
	}
	if n := count(c, ca.KindRoot, ca.StateOld); n != 0 {
		t.Fatalf("%d old roots left after their intermediates expired", n)
	}
	verify("root retired")
}
