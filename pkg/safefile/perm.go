package safefile

import (
	"fmt"
	"os"
	"syscall"
)

// CheckPrivateDir refuses a directory that another user could have placed or
// could write into: a symlink, one owned by a uid other than this process's,
// or one writable by group or others. The error says which and what to do.
func CheckPrivateDir(dir string) error {
	info, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("safefile: %w", err)
	}
	if !info.IsDir() {
		return fmt.Errorf("safefile: %s is not a directory (a symlink or a file); refusing to use it", dir)
	}
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("safefile: no owner information for %s", dir)
	}
	if uid := os.Getuid(); st.Uid != uint32(uid) { //nolint:gosec // uids fit in uint32
		return fmt.Errorf("safefile: directory %s is owned by uid %d, not by this process (uid %d): another user may have created it to control what is in it; remove it or choose another path", dir, st.Uid, uid)
	}
	if perm := info.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("safefile: directory %s has mode %04o, writable by group or others, who could replace what is in it; chmod go-w %s or choose another path", dir, perm, dir)
	}
	return nil
}

// CheckPrivateFile refuses a secret (a key, a passphrase) that group or
// others may read or write.
func CheckPrivateFile(path string) error {
	info, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("safefile: %w", err)
	}
	if perm := info.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("safefile: %s has mode %04o; a secret must be readable by its owner only (mode 0600: chmod 600 %s)", path, perm, path)
	}
	return nil
}
