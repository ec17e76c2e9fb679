package ca

import "testing"

// FuzzDecodeJournal: no journal record panics the decoders, and every
// authority they accept is well formed (a known kind and state, a public
// key, a lifetime that ends after it starts). A replica's record never
// holds a root.
func FuzzDecodeJournal(f *testing.F) {
	f.Add([]byte(`{"version":1,"bundle_sequence":3,"authorities":[]}`))
	f.Add([]byte(`{"version":1,"authorities":[{"id":"x","kind":"root","state":"active"}]}`))
	f.Add([]byte(`{"version":2,"authorities":[{"id":"x","kind":"jwt","state":"old"}],"tainted":["x"]}`))
	f.Add([]byte(`{"version":3}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		var recs []authorityRecord
		if rec, err := decodeCluster(raw); err == nil {
			recs = append(recs, rec.Authorities...)
		}
		if rec, err := decodeReplica("r", raw); err == nil {
			for _, r := range rec.Authorities {
				if r.Kind == KindRoot {
					t.Fatalf("a replica record with a root was accepted: %s", r.ID)
				}
			}
			recs = append(recs, rec.Authorities...)
		}
		for _, r := range recs {
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
