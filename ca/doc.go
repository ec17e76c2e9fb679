// Package ca is shortleaf's certificate authority: the key hierarchy (a root and
// the intermediates it signs), the signing of X.509-SVIDs and the trust bundle.
//
// The package is pure logic. Time comes from an injected clock, keys from a
// KeyManager (the KMS seam) and persistence from a Journal, so the same code runs
// in the server, in tests with a fake clock and against an HSM.
//
// The CA keeps a set of authorities, each with a kind (root or intermediate) and
// a state (prepared, active, old). Exactly one intermediate is active at a time;
// every SVID chain is leaf + active intermediate, so changing intermediates never
// changes the trust bundle, which holds only roots.
//
//	c, err := ca.New(ctx, ca.Config{TrustDomain: td, Keys: keys, Journal: store})
//	chain, err := c.SignX509SVID(ca.X509SVIDParams{PublicKey: csr.PublicKey, SPIFFEID: id, TTL: 5 * time.Minute})
//
// The per-SVID path uses stdlib x509.CreateCertificate on a prebuilt template;
// the x509util template engine is used only for the rare CA certificates.
package ca
