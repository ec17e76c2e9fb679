package ca

import "testing"

// FuzzDecodeJournal: no journal record panics the decoder, and every
// authority it accepts is well formed (a known kind and state, a public key,
// a lifetime that ends after it starts).
func FuzzDecodeJournal(f *testing.F) {
	f.Add([]byte(`{"version":1,"bundle_sequence":3,"authorities":[]}`))
	f.Add([]byte(`{"version":1,"authorities":[{"id":"x","kind":"root","state":"active"}]}`))
	f.Add([]byte(`{"version":2}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		rec, err := decodeJournal(raw)
		if err != nil {
			return
		}
		for _, r := range rec.Authorities {
			a, err := fromRecord(r)
			if err != nil {
				continue
			}
			known := (a.Kind == KindRoot || a.Kind == KindIntermediate || a.Kind == KindJWT) &&
				(a.State == StatePrepared || a.State == StateActive || a.State == StateOld)
			if a.PublicKey == nil || !known || !a.NotAfter.After(a.NotBefore) {
				t.Fatalf("accepted a malformed authority: %+v", a)
			}
		}
	})
}
