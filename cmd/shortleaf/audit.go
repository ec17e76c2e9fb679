package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/shortleaf/shortleaf/pkg/audit"
	"github.com/shortleaf/shortleaf/pkg/config"
)

// auditFlags find the audit log: --dir, or the server config's audit dir.
// The log is read from its files, so it can be checked with the server
// stopped (or on a copy).
type auditFlags struct {
	dir, config, output string
}

func (f *auditFlags) register(cmd *cobra.Command) {
	cmd.PersistentFlags().StringVar(&f.dir, "dir", "", "the audit log's directory (default: audit.dir of --config, else <data_dir>/audit)")
	cmd.PersistentFlags().StringVar(&f.config, "config", "", "the server's config file, to find the audit log")
	cmd.PersistentFlags().StringVarP(&f.output, "output", "o", "table", "output format: table or json")
}

func (f *auditFlags) resolve() (string, error) {
	if f.output != "table" && f.output != "json" {
		return "", fmt.Errorf("--output: %q is not table or json", f.output)
	}
	switch {
	case f.dir != "":
		return f.dir, nil
	case f.config != "":
		cfg, err := config.LoadServerSettings(f.config)
		if err != nil {
			return "", err
		}
		return cfg.AuditDir(), nil
	}
	return "", errors.New("give the audit log's directory (--dir) or the server's config file (--config)")
}

func newAuditCommand() *cobra.Command {
	var af auditFlags
	cmd := &cobra.Command{Use: "audit", Short: "Verify and query the audit log", Args: cobra.NoArgs}
	af.register(cmd)
	cmd.AddCommand(newAuditVerifyCommand(&af), newAuditQueryCommand(&af))
	return cmd
}

func newAuditVerifyCommand(af *auditFlags) *cobra.Command {
	var bundlePath string
	var witnesses []string
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check the audit log's chain, sequence, checkpoints and retention; exit 1 on any problem",
		Long: "Check every record of the audit log: its hash, that it follows the record before it (no record altered,\n" +
			"removed, inserted or reordered, across files too), that files removed by retention were recorded first,\n" +
			"that checkpoints are signed by the CA (chaining to --bundle), and that the log ends at the final\n" +
			"checkpoint of a clean stop or at a recent one. Each problem is named by file, line and record.\n" +
			"--witness seq:hash (from the server's \"audit checkpoint\" log lines, kept by a log collector) also\n" +
			"detects a log cut back to an earlier checkpoint.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, err := af.resolve()
			if err != nil {
				return err
			}
			opts := audit.VerifyOptions{Dir: dir, Now: time.Now()}
			if bundlePath != "" {
				if opts.Roots, err = config.ReadPEMCertificates(bundlePath); err != nil {
					return fmt.Errorf("--bundle: %w", err)
				}
			}
			for _, w := range witnesses {
				seq, hash, ok := strings.Cut(w, ":")
				n, err := strconv.ParseUint(seq, 10, 64)
				if !ok || err != nil || len(hash) != 64 {
					return fmt.Errorf("--witness: %q is not <seq>:<64 hex digits of the head hash>", w)
				}
				opts.Witnesses = append(opts.Witnesses, audit.Witness{Seq: n, Hash: strings.ToLower(hash)})
			}
			rep, err := audit.Verify(opts)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if af.output == "json" {
				if err := writeJSON(out, rep); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(out, "%d records in %d files, %s to %d; %d checkpoints (%d signed), the last at %s\n",
					rep.Records, rep.Files, strconv.FormatUint(rep.FirstSeq, 10), rep.LastSeq, rep.Checkpoints, rep.SignedCheckpoints, timeOrDash(rep.LastCheckpoint))
				fmt.Fprintf(out, "head %s\n", rep.Head)
				for _, n := range rep.Notes {
					fmt.Fprintln(out, "note:", n)
				}
				for _, p := range rep.Problems {
					fmt.Fprintln(out, "PROBLEM:", p)
				}
				if rep.OK() {
					fmt.Fprintln(out, "the audit log is whole")
				}
			}
			if !rep.OK() {
				return fmt.Errorf("the audit log has %d problems", len(rep.Problems))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&bundlePath, "bundle", "", "PEM file of the trust bundle's roots (shortleaf bundle show); checkpoint signers must chain to them")
	cmd.Flags().StringArrayVar(&witnesses, "witness", nil, "seq:hash of a checkpoint seen outside the log; repeatable")
	return cmd
}

func timeOrDash(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func newAuditQueryCommand(af *auditFlags) *cobra.Command {
	var f audit.Filter
	var since string
	var limit int
	cmd := &cobra.Command{
		Use:   "query",
		Short: "List audit records: who got which certificate, and who changed what",
		Long: "List the audit log's records, oldest first, that match every filter given.\n" +
			"--actor ending in * matches a prefix (--actor 'admin*'). --since takes a duration back from now (1h)\n" +
			"or an RFC 3339 time.",
		Example: "  shortleaf audit query --config server.yaml --serial 3f:a2:...\n" +
			"  shortleaf audit query --dir /var/lib/shortleaf/audit --spiffe-id spiffe://example.org/web --since 24h -o json",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, err := af.resolve()
			if err != nil {
				return err
			}
			if since != "" {
				if d, err := time.ParseDuration(since); err == nil {
					f.Since = time.Now().Add(-d)
				} else if f.Since, err = time.Parse(time.RFC3339, since); err != nil {
					return fmt.Errorf("--since: %q is neither a duration (24h) nor an RFC 3339 time", since)
				}
			}
			if limit < 0 {
				return fmt.Errorf("--limit: %d is negative", limit)
			}
			recs, err := audit.Query(dir, f, limit)
			if err != nil {
				return err
			}
			if af.output == "json" {
				if recs == nil {
					recs = []audit.Record{}
				}
				return writeJSON(cmd.OutOrStdout(), recs)
			}
			rows := make([][]string, 0, len(recs))
			for _, r := range recs {
				rows = append(rows, []string{r.Time.UTC().Format(time.RFC3339), strconv.FormatUint(r.Seq, 10), r.Actor, r.Action,
					orDash(r.Object), r.Result, orDash(r.SPIFFEID), orDash(r.Serial), timeOrDash(r.NotAfter), orDash(r.Reason)})
			}
			return table(cmd.OutOrStdout(), []string{"TIME", "SEQ", "ACTOR", "ACTION", "OBJECT", "RESULT", "SPIFFE ID", "SERIAL", "NOT AFTER", "REASON"}, rows)
		},
	}
	cmd.Flags().StringVar(&f.SPIFFEID, "spiffe-id", "", "records of this SPIFFE ID (the certificate's, or the object acted on)")
	cmd.Flags().StringVar(&f.Serial, "serial", "", "the record of this certificate serial (hex; colons and case do not matter)")
	cmd.Flags().StringVar(&f.Actor, "actor", "", "records of this actor (an agent's SPIFFE ID, 'admin uid=… user=…', server); a trailing * matches a prefix")
	cmd.Flags().StringVar(&f.Action, "action", "", "records of this action (x509svid.issue, jwtsvid.issue, agent.attest, agent.renew, ca.transition, admin.<Method>, audit.checkpoint)")
	cmd.Flags().StringVar(&since, "since", "", "records from this time on: a duration back from now (1h) or an RFC 3339 time")
	cmd.Flags().IntVar(&limit, "limit", 1000, "at most this many records, the newest (0: all)")
	return cmd
}
