package safefile_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/shortleaf/shortleaf/pkg/safefile"
)

func TestWriteKeepingPrevious(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state")
	for _, content := range []string{"one", "two", "three"} {
		if err := safefile.WriteKeepingPrevious(path, []byte(content)); err != nil {
			t.Fatal(err)
		}
	}
	for file, want := range map[string]string{path: "three", path + safefile.PreviousSuffix: "two"} {
		got, err := os.ReadFile(file)
		if err != nil || string(got) != want {
			t.Fatalf("%s = %q, %v; want %q", filepath.Base(file), got, err, want)
		}
		info, err := os.Stat(file)
		if err != nil || info.Mode().Perm() != 0o600 {
			t.Fatalf("%s mode %v, want 0600", filepath.Base(file), info.Mode())
		}
	}
	// A crash between writing the temporary file and renaming it leaves a
	// stray temporary file; RemoveTemps clears it and nothing else.
	if err := os.WriteFile(filepath.Join(dir, safefile.TempPrefix+"123"), []byte("torn"), 0o600); err != nil {
		t.Fatal(err)
	}
	if n, err := safefile.RemoveTemps(dir); err != nil || n != 1 {
		t.Fatalf("RemoveTemps = %d, %v; want 1", n, err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Fatalf("%d files left, want state and state.prev", len(entries))
	}
}
