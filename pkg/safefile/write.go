package safefile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// TempPrefix starts the name of every temporary file this package makes.
const TempPrefix = ".tmp-"

// PreviousSuffix names the copy WriteKeepingPrevious keeps.
const PreviousSuffix = ".prev"

// Write replaces path with data, mode 0600: a temporary file in the same
// directory is written and fsynced, renamed over path, and the directory
// fsynced so the rename is durable.
func Write(path string, data []byte) error {
	tmp, err := writeTemp(path, data)
	if err != nil {
		return err
	}
	defer os.Remove(tmp) //nolint:errcheck // gone after a successful rename
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("safefile: %w", err)
	}
	return SyncDir(filepath.Dir(path))
}

// WriteKeepingPrevious is Write that first keeps the current content of path
// as path.prev. At every instant path holds the old or the new content and
// path.prev the old or an older one, so a reader that finds path unusable
// can fall back to path.prev.
func WriteKeepingPrevious(path string, data []byte) error {
	tmp, err := writeTemp(path, data)
	if err != nil {
		return err
	}
	defer os.Remove(tmp) //nolint:errcheck // gone after a successful rename
	if _, err := os.Stat(path); err == nil {
		link := filepath.Join(filepath.Dir(path), TempPrefix+filepath.Base(path)+PreviousSuffix)
		_ = os.Remove(link)
		if err := os.Link(path, link); err != nil {
			return fmt.Errorf("safefile: keep previous: %w", err)
		}
		if err := os.Rename(link, path+PreviousSuffix); err != nil {
			_ = os.Remove(link)
			return fmt.Errorf("safefile: keep previous: %w", err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("safefile: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("safefile: %w", err)
	}
	return SyncDir(filepath.Dir(path))
}

func writeTemp(path string, data []byte) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(path), TempPrefix+"*")
	if err != nil {
		return "", fmt.Errorf("safefile: %w", err)
	}
	werr := f.Chmod(0o600)
	if werr == nil {
		_, werr = f.Write(data)
	}
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		_ = os.Remove(f.Name())
		return "", fmt.Errorf("safefile: write %s: %w", filepath.Base(path), werr)
	}
	return f.Name(), nil
}

// SyncDir fsyncs dir, so that files created, renamed or removed in it stay
// so after a crash.
func SyncDir(dir string) error {
	d, err := os.Open(dir) //nolint:gosec // the directory of a path the caller chose
	if err != nil {
		return fmt.Errorf("safefile: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("safefile: fsync %s: %w", dir, err)
	}
	return nil
}

// RemoveTemps deletes the temporary files a crash left in dir and returns
// how many it removed.
func RemoveTemps(dir string) (int, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("safefile: %w", err)
	}
	n := 0
	for _, e := range entries {
		if e.Type().IsRegular() && strings.HasPrefix(e.Name(), TempPrefix) {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
				return n, fmt.Errorf("safefile: %w", err)
			}
			n++
		}
	}
	return n, nil
}
