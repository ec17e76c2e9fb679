package agent

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testIdentity is a key and a self-signed certificate of its own.
func testIdentity(t testing.TB) (crypto.Signer, *persisted) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return key, &persisted{SVIDChain: [][]byte{der}, BundleSequence: 7}
}

func sameKey(a, b crypto.Signer) bool {
	return a.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(b.Public())
}

// Every state a crash (or a disk fault) can leave the identity files in
// still yields a matching key and SVID: the new pair, or the previous one.
func TestStorageSurvivesEveryCrashPoint(t *testing.T) {
	oldKey, oldP := testIdentity(t)
	newKey, newP := testIdentity(t)
	cases := []struct {
		name         string
		prepare      func(t *testing.T, s storage)
		wantKey      crypto.Signer
		wantFellBack bool
	}{
		{"before the first save", func(*testing.T, storage) {}, nil, false},
		{"after the first save", func(t *testing.T, s storage) { mustSave(t, s, oldKey, oldP) }, oldKey, false},
		{"after a renewal was saved", func(t *testing.T, s storage) {
			mustSave(t, s, oldKey, oldP)
			mustSave(t, s, newKey, newP)
		}, newKey, false},
		{"crash before the rename (temporary file written)", func(t *testing.T, s storage) {
			mustSave(t, s, oldKey, oldP)
			writeRaw(t, filepath.Join(s.dir, ".tmp-123"), "{\"key\":")
		}, oldKey, false},
		{"torn current file", func(t *testing.T, s storage) {
			mustSave(t, s, oldKey, oldP)
			mustSave(t, s, newKey, newP)
			writeRaw(t, filepath.Join(s.dir, identityFileName), "{\"key\":\"AAA")
		}, oldKey, true},
		{"current key does not match its SVID", func(t *testing.T, s storage) {
			mustSave(t, s, oldKey, oldP)
			mustSave(t, s, newKey, oldP)
		}, oldKey, true},
		{"two-file layout of earlier versions", func(t *testing.T, s storage) {
			der, _ := x509.MarshalPKCS8PrivateKey(oldKey)
			writeRaw(t, filepath.Join(s.dir, legacyKeyFileName), string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})))
			raw, _ := json.Marshal(oldP)
			writeRaw(t, filepath.Join(s.dir, legacyStateFileName), string(raw))
		}, oldKey, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := storage{dir: t.TempDir()}
			tc.prepare(t, s)
			key, p, fellBack, err := s.load()
			if tc.wantKey == nil {
				if !errors.Is(err, errNoIdentity) {
					t.Fatalf("load = %v, want errNoIdentity", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("load: %v", err)
			}
			if !sameKey(key, tc.wantKey) || fellBack != tc.wantFellBack {
				t.Fatalf("loaded the wrong key or fell back = %v, want %v", fellBack, tc.wantFellBack)
			}
			if err := checkPair(key, p.SVIDChain); err != nil {
				t.Fatalf("loaded a mismatched pair: %v", err)
			}
		})
	}

	t.Run("both files unusable", func(t *testing.T) {
		s := storage{dir: t.TempDir()}
		writeRaw(t, filepath.Join(s.dir, identityFileName), "x")
		writeRaw(t, filepath.Join(s.dir, identityFileName+".prev"), "y")
		if _, _, _, err := s.load(); err == nil || !strings.Contains(err.Error(), "previous") {
			t.Fatalf("load = %v, want an error naming both files", err)
		}
	})
	t.Run("files are private", func(t *testing.T) {
		s := storage{dir: t.TempDir()}
		mustSave(t, s, oldKey, oldP)
		mustSave(t, s, newKey, newP)
		for _, f := range []string{identityFileName, identityFileName + ".prev"} {
			info, err := os.Stat(filepath.Join(s.dir, f))
			if err != nil || info.Mode().Perm() != 0o600 {
				t.Fatalf("%s: %v mode %v, want 0600", f, err, info.Mode())
			}
		}
	})
}

func mustSave(t *testing.T, s storage, key crypto.Signer, p *persisted) {
	t.Helper()
	if err := s.save(key, p); err != nil {
		t.Fatal(err)
	}
}

func writeRaw(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// FuzzReadIdentity: no identity file panics the agent's restore, and what it
// accepts is a key with the SVID of that very key.
func FuzzReadIdentity(f *testing.F) {
	key, p := testIdentity(f)
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	good, _ := json.Marshal(identityFile{Key: der, persisted: *p})
	f.Add(good)
	f.Add([]byte(`{"key":"AAAA","svid_chain":["AAAA"]}`))
	f.Add([]byte(`{`))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, raw []byte) {
		path := filepath.Join(dir, "identity")
		if err := os.WriteFile(path, raw, 0o600); err != nil {
			t.Fatal(err)
		}
		key, p, err := readIdentity(path)
		if err != nil {
			return
		}
		if err := checkPair(key, p.SVIDChain); err != nil {
			t.Fatalf("accepted a key without its SVID: %v", err)
		}
	})
}
