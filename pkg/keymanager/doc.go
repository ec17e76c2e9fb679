// Package keymanager is the KMS seam for CA keys, over go.step.sm/crypto/kms.
//
// The default is softkms: each key is a PKCS#8 PEM file in a directory, mode
// 0600, encrypted under a passphrase (dev mode may leave it unencrypted). Keys
// are named by the CA and referred to by a key reference such as
// "softkms:intermediate-0123.key", which is what the CA journal records.
//
//	km, err := keymanager.New(keymanager.Config{Dir: dir, Passphrase: pass})
//	signer, ref, err := km.CreateKey(ctx, "root-1", "ec-p256")
//	signer, err = km.LoadKey(ctx, ref)
package keymanager
