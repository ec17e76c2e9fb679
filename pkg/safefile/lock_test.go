package safefile_test

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/shortleaf/shortleaf/pkg/safefile"
)

// A second holder of a data dir is refused with the first one's PID; the
// dir is free again once released.
func TestLockDirNamesTheHolder(t *testing.T) {
	dir := t.TempDir()
	release, err := safefile.LockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = safefile.LockDir(dir)
	if !errors.Is(err, safefile.ErrDirInUse) || !strings.Contains(err.Error(), fmt.Sprintf("(pid %d)", os.Getpid())) {
		t.Fatalf("second lock: %v, want ErrDirInUse naming pid %d", err, os.Getpid())
	}
	release()
	release2, err := safefile.LockDir(dir)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	release2()
}
