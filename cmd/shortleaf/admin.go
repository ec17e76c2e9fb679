package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"os"
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

// printJSON writes one proto message as indented JSON. protojson's own
// indentation varies on purpose, so the output is re-indented to stay stable
// for scripts.
func printJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, out.String())
	return err
}

// printJSONList writes proto messages as a JSON array, even of one or none.
func printJSONList[M proto.Message](w io.Writer, msgs []M) error {
	raws := make([]json.RawMessage, 0, len(msgs))
	for _, m := range msgs {
		b, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(m)
		if err != nil {
			return err
		}
		raws = append(raws, b)
	}
	out, err := json.MarshalIndent(raws, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(out))
	return err
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
