package audit

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Filter selects records; zero fields match everything.
type Filter struct {
	SPIFFEID string
	// Serial matches a certificate serial in hex, any case, with or without
	// colons or leading zeros.
	Serial string
	// Actor matches the actor exactly, or as a prefix when it ends in "*".
	Actor  string
	Action string
	Since  time.Time
}

// NormalizeSerial is a serial in lower-case hex without colons or leading
// zeros, as records carry it.
func NormalizeSerial(s string) string {
	s = strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X"), ":", ""))
	s = strings.TrimLeft(s, "0")
	if s == "" {
		return "0"
	}
	return s
}

func (f Filter) match(r *Record) bool {
	switch {
	case f.SPIFFEID != "" && r.SPIFFEID != f.SPIFFEID && r.Object != f.SPIFFEID:
		return false
	case f.Serial != "" && r.Serial != NormalizeSerial(f.Serial):
		return false
	case f.Action != "" && r.Action != f.Action:
		return false
	case !f.Since.IsZero() && r.Time.Before(f.Since):
		return false
	case f.Actor != "":
		if p, ok := strings.CutSuffix(f.Actor, "*"); ok {
			return strings.HasPrefix(r.Actor, p)
		}
		return r.Actor == f.Actor
	}
	return true
}

// Query returns the records of the log in dir that f selects, oldest first,
// at most limit of them (the newest, when more match; 0: all). Altered or
// unreadable lines are skipped: Verify names them.
func Query(dir string, f Filter, limit int) ([]Record, error) {
	files, err := listFiles(dir)
	if err != nil {
		return nil, err
	}
	var out []Record
	for _, lf := range files {
		if err := scanFile(filepath.Join(dir, lf.name), func(r *Record) {
			if f.match(r) {
				out = append(out, *r)
				if limit > 0 && len(out) > 2*limit {
					out = append(out[:0], out[len(out)-limit:]...)
				}
			}
		}); err != nil {
			return nil, err
		}
	}
	if limit > 0 && len(out) > limit {
		out = out[len(out)-limit:]
	}
	return out, nil
}

func scanFile(path string, fn func(*Record)) error {
	fh, err := os.Open(path) //nolint:gosec // a file of the audit dir
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	defer fh.Close()
	rd := bufio.NewReaderSize(fh, 64<<10)
	for {
		line, err := readLine(rd)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("audit: %s: %w", filepath.Base(path), err)
		}
		if r, err := decode(line); err == nil {
			fn(&r)
		}
	}
}
