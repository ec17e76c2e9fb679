package keymanager_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"strings"
	"testing"

	"github.com/shortleaf/shortleaf/pkg/keymanager"
	"github.com/shortleaf/shortleaf/pkg/keymanager/keymanagertest"
)

func TestPKCS11KeysInSoftHSM(t *testing.T) {
	uri := keymanagertest.SoftHSM(t)
	ctx := context.Background()
	// A wrong PIN fails without echoing the PIN. (PKCS#11 logins are per
	// process, so this comes before the first good login.)
	wrong, err := keymanager.NewKMS(ctx, strings.Replace(uri, "pin-value=1234", "pin-value=9999", 1))
	if err == nil {
		wrong.Close()
		t.Fatal("a wrong PIN opened the token")
	}
	if strings.Contains(err.Error(), "9999") {
		t.Fatalf("the error shows the PIN: %v", err)
	}
	km, err := keymanager.NewKMS(ctx, uri)
	if err != nil {
		t.Fatal(err)
	}
	defer km.Close()
	for _, kt := range []string{"ec-p256", "ec-p384", "rsa-2048"} {
		signer, ref, err := km.CreateKey(ctx, "root-"+kt, kt)
		if err != nil {
			t.Fatalf("%s: %v", kt, err)
		}
		if strings.Contains(ref, "1234") || !strings.HasPrefix(ref, "pkcs11:id=") {
			t.Fatalf("key reference %q must name the key and never hold the PIN", ref)
		}
		loaded, err := km.LoadKey(ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		type eq interface{ Equal(crypto.PublicKey) bool }
		if !loaded.Public().(eq).Equal(signer.Public()) {
			t.Fatalf("%s: the loaded key differs", kt)
		}
		digest := sha256.Sum256([]byte("x"))
		if _, err := loaded.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
			t.Fatalf("%s: sign in the HSM: %v", kt, err)
		}
	}
	if _, err := km.LoadKey(ctx, "softkms:root.key"); err == nil {
		t.Fatal("accepted a softkms reference")
	}
}
