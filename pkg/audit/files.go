package audit

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Files are named by the sequence number of their first record, zero-padded
// so that names sort in chain order.
const (
	filePrefix = "audit-"
	fileSuffix = ".jsonl"
)

func fileName(firstSeq uint64) string {
	return fmt.Sprintf("%s%020d%s", filePrefix, firstSeq, fileSuffix)
}

// logFile is one file of the set.
type logFile struct {
	name    string
	first   uint64
	size    int64
	modTime time.Time
}

// listFiles lists the log's files in chain order. Other files in dir are
// ignored.
func listFiles(dir string) ([]logFile, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	var out []logFile
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasPrefix(name, filePrefix) || !strings.HasSuffix(name, fileSuffix) {
			continue
		}
		first, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(name, filePrefix), fileSuffix), 10, 64)
		if err != nil || first == 0 {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return nil, fmt.Errorf("audit: %w", err)
		}
		out = append(out, logFile{name: name, first: first, size: info.Size(), modTime: info.ModTime()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].first < out[j].first })
	return out, nil
}
