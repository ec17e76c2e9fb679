package agent

import (
	"log/slog"

	"golang.org/x/sys/unix"
)

// raiseFileLimit lifts the soft RLIMIT_NOFILE to the hard one: every
// Workload API connection is a file descriptor, and the usual soft limit
// (1024) would let a thousand idle connections from one user stop the agent
// from accepting anyone's. (Go's runtime does the same at start; doing it
// here too says so in the log and survives a parent that lowered it.)
func raiseFileLimit(log *slog.Logger) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		log.Warn("cannot read the open-file limit", slog.Any("error", err))
		return
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			log.Warn("cannot raise the open-file limit", slog.Any("error", err))
			return
		}
	}
	log.Debug("open-file limit", slog.Uint64("soft", lim.Cur), slog.Uint64("hard", lim.Max))
}
