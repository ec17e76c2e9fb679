// Package keymanagertest gives tests a real SoftHSM2 token: a fresh token
// directory and config per test, initialized with softhsm2-util, and the
// PKCS#11 URI that opens it.
package keymanagertest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// SoftHSMModule is where Debian's softhsm2 package puts the PKCS#11 module.
const SoftHSMModule = "/usr/lib/softhsm/libsofthsm2.so"

// SoftHSM initializes a new token and returns its PKCS#11 URI. Without
// softhsm2 installed the test is skipped, except under CI, where the Makefile
// installs it and its absence is a failure.
func SoftHSM(t testing.TB) string {
	t.Helper()
	util, err := exec.LookPath("softhsm2-util")
	if err != nil || fileMissing(SoftHSMModule) {
		if os.Getenv("CI") != "" {
			t.Fatal("softhsm2 is not installed; make test installs it (scripts/install-deps.sh)")
		}
		t.Skip("softhsm2 is not installed; run scripts/install-deps.sh")
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "softhsm2.conf")
	tokens := filepath.Join(dir, "tokens")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+tokens+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", conf)
	out, err := exec.Command(util, "--init-token", "--free", "--label", "shortleaf", "--pin", "1234", "--so-pin", "5678").CombinedOutput() //nolint:gosec // util is softhsm2-util found on PATH
	if err != nil {
		t.Fatalf("softhsm2-util --init-token: %v\n%s", err, out)
	}
	return fmt.Sprintf("pkcs11:module-path=%s;token=shortleaf?pin-value=1234", SoftHSMModule)
}

func fileMissing(path string) bool {
	_, err := os.Stat(path)
	return err != nil
}
