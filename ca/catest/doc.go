// Package catest builds real CAs for tests in one line: softkms keys in a
// temporary directory and an in-memory journal (the journal is the seam; the
// datastore's own tests cover its persistence).
//
//	c := catest.New(t)
//	chain, err := c.SignX509SVID(ca.X509SVIDParams{...})
package catest
