package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"reflect"
	"regexp"
	"strconv"
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
		msg := strings.ReplaceAll(err.Error(), "yaml: unmarshal errors:\n  ", "")
		return fmt.Errorf("config: %s: %s", name, suggestKeys(reflect.TypeOf(out), nameKeys(raw, msg)))
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return fmt.Errorf("config: %s: holds more than one YAML document", name)
	}
	return nil
}

var lineRef = regexp.MustCompile(`line (\d+): `)

var unknownField = regexp.MustCompile(`field (\S+) not found in type (\S+)`)

// suggestKeys adds "did you mean …?" to each unknown key in a decoder
// message, from the yaml keys of the struct type the message names (found
// anywhere in the config type t).
func suggestKeys(t reflect.Type, msg string) string {
	return unknownField.ReplaceAllStringFunc(msg, func(m string) string {
		sub := unknownField.FindStringSubmatch(m)
		known := yamlKeysOf(t, sub[2], map[reflect.Type]bool{})
		if best := closest(sub[1], known); best != "" {
			return m + " (did you mean " + best + "?)"
		}
		return m
	})
}

// yamlKeysOf returns the yaml keys of the struct type named name within t.
func yamlKeysOf(t reflect.Type, name string, seen map[reflect.Type]bool) []string {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || seen[t] {
		return nil
	}
	seen[t] = true
	var keys []string
	for i := range t.NumField() {
		f := t.Field(i)
		key, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if key != "" && key != "-" {
			keys = append(keys, key)
		}
		if found := yamlKeysOf(f.Type, name, seen); found != nil && t.String() != name {
			return found
		}
	}
	if t.String() == name {
		return keys
	}
	return nil
}

// closest is the key within edit distance 3 (and less than half the
// word) of word, or "".
func closest(word string, keys []string) string {
	best, bestD := "", 4
	for _, k := range keys {
		if d := editDistance(word, k); d < bestD && d <= max(1, len(word)/2) {
			best, bestD = k, d
		}
	}
	return best
}

// editDistance is the Damerau–Levenshtein distance (optimal string
// alignment), so a swapped pair of letters costs 1.
func editDistance(a, b string) int {
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range len(b) + 1 {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}

// nameKeys prefixes each "line N: " in a decoder message with the key written
// on that line, so an error names the field even where the decoder does not.
func nameKeys(raw []byte, msg string) string {
	var doc yaml.Node
	if yaml.Unmarshal(raw, &doc) != nil {
		return msg
	}
	keys := map[int]string{}
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		if n.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(n.Content); i += 2 {
				keys[n.Content[i].Line] = n.Content[i].Value
			}
		}
		for _, c := range n.Content {
			walk(c)
		}
	}
	walk(&doc)
	return lineRef.ReplaceAllStringFunc(msg, func(m string) string {
		line, _ := strconv.Atoi(lineRef.FindStringSubmatch(m)[1])
		if k, ok := keys[line]; ok && !strings.Contains(msg, "field "+k+" ") {
			return k + " (" + strings.TrimSuffix(m, ": ") + "): "
		}
		return m
	})
}

func loadFile(path string, out any) error {
	f, err := os.Open(path) //nolint:gosec // an operator-chosen path
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

// DecodeServerFile decodes a server config strictly, without resolving it
// (no file it names is read): for tools and tests that inspect a config.
func DecodeServerFile(r io.Reader) (*ServerFile, error) {
	var f ServerFile
	if err := decodeStrict("server config", r, &f); err != nil {
		return nil, err
	}
	return &f, nil
}

// DecodeAgentFile is DecodeServerFile for agent.yaml.
func DecodeAgentFile(r io.Reader) (*AgentFile, error) {
	var f AgentFile
	if err := decodeStrict("agent config", r, &f); err != nil {
		return nil, err
	}
	return &f, nil
}
