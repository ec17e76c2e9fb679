package keymanager_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shortleaf/shortleaf/pkg/keymanager"
)

func TestCreateLoadEncrypted(t *testing.T) {
	dir := t.TempDir()
	pass := []byte("correct horse")
	km, err := keymanager.New(keymanager.Config{Dir: dir, Passphrase: pass})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	signer, ref, err := km.CreateKey(ctx, "intermediate-1", "ec-p256")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "intermediate-1.key")
	info, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %o, want 0600", info.Mode().Perm())
	}
	raw, _ := os.ReadFile(file)
	if !bytes.Contains(raw, []byte("ENCRYPTED PRIVATE KEY")) {
		t.Fatalf("key file is not encrypted PKCS#8:\n%s", raw[:40])
	}
	loaded, err := km.LoadKey(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.Public().(*ecdsa.PublicKey).Equal(signer.Public()) {
		t.Fatal("loaded key differs")
	}
	digest := sha256.Sum256([]byte("x"))
	if _, err := loaded.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
		t.Fatal(err)
	}

	wrong, _ := keymanager.New(keymanager.Config{Dir: dir, Passphrase: []byte("wrong")})
	_, err = wrong.LoadKey(ctx, ref)
	if err == nil || !strings.Contains(err.Error(), "passphrase") || strings.Contains(err.Error(), "correct horse") {
		t.Fatalf("wrong passphrase: %v", err)
	}
}

func TestLoadRefusesLooseModeAndBadRefs(t *testing.T) {
	dir := t.TempDir()
	km, _ := keymanager.New(keymanager.Config{Dir: dir})
	ctx := context.Background()
	_, ref, err := km.CreateKey(ctx, "root-1", "ec-p384")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, "root-1.key"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := km.LoadKey(ctx, ref); err == nil || !strings.Contains(err.Error(), "0600") {
		t.Fatalf("world-readable key: %v", err)
	}
	for _, bad := range []string{"", "softkms:../../etc/passwd", "pkcs11:token=x"} {
		if _, err := km.LoadKey(ctx, bad); err == nil {
			t.Errorf("accepted reference %q", bad)
		}
	}
	if _, _, err := km.CreateKey(ctx, "x", "dsa-1024"); err == nil {
		t.Error("accepted an unknown key type")
	}
}

// A crash while a key file was being written leaves a temporary file; the
// next start removes it, and ListKeys names only real key files.
func TestStartRemovesTempFilesAndListsKeys(t *testing.T) {
	dir := t.TempDir()
	km, err := keymanager.New(keymanager.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, _, err := km.CreateKey(ctx, "root-1", "ec-p256"); err != nil {
		t.Fatal(err)
	}
	torn := filepath.Join(dir, ".tmp-123456")
	if err := os.WriteFile(torn, []byte("-----BEGIN ENCRYPTED"), 0o600); err != nil {
		t.Fatal(err)
	}
	km, err = keymanager.New(keymanager.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(torn); !os.IsNotExist(err) {
		t.Fatalf("the torn temporary file survived the restart: %v", err)
	}
	refs, err := km.ListKeys(ctx)
	if err != nil || len(refs) != 1 || refs[0] != "softkms:root-1.key" {
		t.Fatalf("ListKeys = %v, %v; want [softkms:root-1.key]", refs, err)
	}
}
