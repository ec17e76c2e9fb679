package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Duration is a time.Duration written as "5m", "1h30m" in YAML.
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: want a duration such as 5m", n.Line)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration (e.g. 90s, 5m, 24h)", n.Line, s)
	}
	*d = Duration(v)
	return nil
}

// MaxFileSize bounds a config file.
const MaxFileSize = 1 << 20

// decodeStrict decodes one YAML document into out, refusing unknown keys and
// trailing documents.
func decodeStrict(name string, r io.Reader, out any) error {
	raw, err := io.ReadAll(io.LimitReader(r, MaxFileSize+1))
	if err != nil {
		return fmt.Errorf("config: read %s: %w", name, err)
	}
	if len(raw) > MaxFileSize {
		return fmt.Errorf("config: %s is larger than %d bytes", name, MaxFileSize)
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(out); err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("config: %s is empty", name)
		}
		return fmt.Errorf("config: %s: %s", name, strings.ReplaceAll(err.Error(), "yaml: unmarshal errors:\n  ", ""))
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return fmt.Errorf("config: %s: holds more than one YAML document", name)
	}
	return nil
}

func loadFile(path string, out any) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	return decodeStrict(path, f, out)
}

// fieldErr is a config error naming the key at fault.
func fieldErr(field, format string, args ...any) error {
	return fmt.Errorf("config: %s: %s", field, fmt.Sprintf(format, args...))
}

// ParseLogLevel maps debug, info, warn, error to a slog level.
func ParseLogLevel(s string) (slog.Level, error) {
	var l slog.Level
	if s == "" {
		return slog.LevelInfo, nil
	}
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fieldErr("log_level", "%q is not one of debug, info, warn, error", s)
	}
	return l, nil
}
