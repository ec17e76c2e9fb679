package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/shortleaf/shortleaf/pkg/adminclient"
)

// adminSocketEnv is read when --admin-socket is not given.
const adminSocketEnv = "SHORTLEAF_ADMIN_SOCKET"

// adminFlags are shared by every admin verb.
type adminFlags struct {
	socket string
	output string
}

func (f *adminFlags) register(cmd *cobra.Command) {
	cmd.PersistentFlags().StringVar(&f.socket, "admin-socket", os.Getenv(adminSocketEnv), "server admin socket (default $"+adminSocketEnv+")")
	cmd.PersistentFlags().StringVarP(&f.output, "output", "o", "table", "output format: table or json")
}

// run dials the admin socket, runs fn with a timeout and turns a gRPC error
// into one clear line.
func (f *adminFlags) run(cmd *cobra.Command, fn func(ctx context.Context, c *adminclient.Client) error) error {
	if f.output != "table" && f.output != "json" {
		return fmt.Errorf("--output: %q is not table or json", f.output)
	}
	c, err := adminclient.Dial(f.socket)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
	defer cancel()
	if err := fn(ctx, c); err != nil {
		if st, ok := status.FromError(err); ok {
			return fmt.Errorf("%s: %s", codeWords(st.Code().String()), st.Message())
		}
		return err
	}
	return nil
}

// codeWords turns a gRPC code name into words: FailedPrecondition → failed precondition.
func codeWords(code string) string {
	var b strings.Builder
	for i, r := range code {
		if i > 0 && unicode.IsUpper(r) {
			b.WriteByte(' ')
		}
		b.WriteRune(unicode.ToLower(r))
	}
	return b.String()
}

func (f *adminFlags) json() bool { return f.output == "json" }

// done reports a change that has no object to show: text as a line, or
// with -o json an object {"result": result, key: value}.
func (f *adminFlags) done(cmd *cobra.Command, text, result, key, value string) error {
	if f.json() {
		return writeJSON(cmd.OutOrStdout(), map[string]string{"result": result, key: value})
	}
	_, err := fmt.Fprintln(cmd.OutOrStdout(), text)
	return err
}

// printJSON writes one proto message as indented JSON for scripts, in the
// forms people read: times as RFC 3339, lifetimes as durations ("5m0s"),
// counters as numbers (see readableJSON).
func printJSON(w io.Writer, m proto.Message) error {
	v, err := readableJSON(m)
	if err != nil {
		return err
	}
	return writeJSON(w, v)
}

// printJSONList writes proto messages as a JSON array, even of one or none.
func printJSONList[M proto.Message](w io.Writer, msgs []M) error {
	out := make([]any, 0, len(msgs))
	for _, m := range msgs {
		v, err := readableJSON(m)
		if err != nil {
			return err
		}
		out = append(out, v)
	}
	return writeJSON(w, out)
}

// Fields of the admin protos that hold Unix seconds, and those that hold
// 64-bit counters (which protojson would print as strings).
var (
	unixTimeFields = map[string]bool{"created_at": true, "deadline": true, "expires_at": true, "force_at": true,
		"last_refresh": true, "last_seen": true, "next_transition_at": true, "not_after": true, "not_before": true,
		"prepare_at": true, "prepared_at": true, "retire_at": true, "root_not_after": true}
	counterFields = map[string]bool{"revision": true, "bundle_sequence": true, "sequence": true}
)

// readableJSON turns m into a JSON value: Unix-second times become RFC 3339
// strings (null when unset), "*ttl_seconds" fields become "*ttl" durations
// (null when unset: the server's default), and 64-bit counters numbers.
func readableJSON(m proto.Message) (any, error) {
	b, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return readable(v), nil
}

func readable(v any) any {
	switch x := v.(type) {
	case []any:
		for i := range x {
			x[i] = readable(x[i])
		}
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, val := range x {
			n, isInt := integer(val)
			switch {
			case unixTimeFields[k] && isInt:
				out[k] = nil
				if n != 0 {
					out[k] = time.Unix(n, 0).UTC().Format(time.RFC3339)
				}
			case strings.HasSuffix(k, "ttl_seconds") && isInt:
				k = strings.TrimSuffix(k, "_seconds")
				out[k] = nil
				if n != 0 {
					out[k] = (time.Duration(n) * time.Second).String()
				}
			case counterFields[k] && isInt:
				out[k] = n
			default:
				out[k] = readable(val)
			}
		}
		return out
	}
	return v
}

// integer reads a JSON integer that protojson wrote as a number or, for 64
// bits, as a string.
func integer(v any) (int64, bool) {
	var s string
	switch x := v.(type) {
	case json.Number:
		s = x.String()
	case string:
		s = x
	default:
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

// table writes aligned columns.
func table(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

func unixTime(s int64) string {
	if s == 0 {
		return "-"
	}
	return time.Unix(s, 0).UTC().Format(time.RFC3339)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func parseDER(der []byte) (*x509.Certificate, error) { return x509.ParseCertificate(der) }
