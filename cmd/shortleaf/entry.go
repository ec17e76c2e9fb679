package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/shortleaf/shortleaf/pkg/adminclient"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

type entryFlags struct {
	spiffeID  string
	parentID  string
	selectors []string
	ttl       time.Duration
	dnsNames  []string
	hint      string
	admin     bool
	federates []string
	jwtTTL    time.Duration
}

func (f *entryFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.spiffeID, "spiffe-id", "", "SPIFFE ID of the workload (spiffe://<td>/path)")
	cmd.Flags().StringVar(&f.parentID, "parent-id", "", "SPIFFE ID of the agent that may serve it, or of a node alias (its entries are served to every agent of the alias); spiffe://<td>/shortleaf/server makes this entry a node alias")
	cmd.Flags().StringSliceVar(&f.selectors, "selector", nil, "selector type:key:value (repeat for several; all must match): workload selectors (unix, k8s), or node selectors (x509pop, k8s_psat, join_token) for a node alias")
	cmd.Flags().DurationVar(&f.ttl, "x509-svid-ttl", 0, "X.509-SVID lifetime (1m to 24h; default the server's)")
	cmd.Flags().StringSliceVar(&f.dnsNames, "dns", nil, "DNS name to add to the SVID (repeatable)")
	cmd.Flags().StringVar(&f.hint, "hint", "", "hint telling workloads what this identity is for")
	cmd.Flags().BoolVar(&f.admin, "admin", false, "mark the entry as an admin identity")
	cmd.Flags().StringSliceVar(&f.federates, "federates-with", nil, "foreign trust domain whose bundle the workloads receive (repeatable)")
	cmd.Flags().DurationVar(&f.jwtTTL, "jwt-svid-ttl", 0, "JWT-SVID lifetime (default the server's)")
}

func (f *entryFlags) apply(cmd *cobra.Command, e *adminv1.Entry) {
	set := func(name string) bool { return cmd.Flags().Changed(name) }
	if set("spiffe-id") {
		e.SpiffeId = f.spiffeID
	}
	if set("parent-id") {
		e.ParentId = f.parentID
	}
	if set("selector") {
		e.Selectors = f.selectors
	}
	if set("x509-svid-ttl") {
		e.X509SvidTtlSeconds = int32(f.ttl / time.Second)
	}
	if set("dns") {
		e.DnsNames = f.dnsNames
	}
	if set("hint") {
		e.Hint = f.hint
	}
	if set("admin") {
		e.Admin = f.admin
	}
	if set("federates-with") {
		e.FederatesWith = f.federates
	}
	if set("jwt-svid-ttl") {
		e.JwtSvidTtlSeconds = int32(f.jwtTTL / time.Second)
	}
}

func newEntryCommand() *cobra.Command {
	var af adminFlags
	cmd := &cobra.Command{Use: "entry", Short: "Manage registration entries", Args: cobra.NoArgs}
	af.register(cmd)

	var cf entryFlags
	var entryFile string
	create := &cobra.Command{
		Use:   "create",
		Short: "Register a workload, or every entry of a file",
		Long: "Register a workload from the flags, or with --file every entry of a YAML or JSON list (\"-\": standard input).\n" +
			"Each entry has the fields `entry list -o json` prints (spiffe_id, parent_id, selectors, x509_svid_ttl, jwt_svid_ttl,\n" +
			"dns_names, hint, admin, federates_with; id, created_at and revision are ignored), so a listing can be registered again.\n" +
			"A file is sent in batches of up to 1000 entries, each one datastore commit; an entry that is refused is named with\n" +
			"its place in the file and does not stop the others.",
		Example: "  shortleaf entry create --spiffe-id spiffe://example.org/web --parent-id spiffe://example.org/agent/join_token/0123456789abcdef \\\n" +
			"    --selector unix:uid:1000 --dns web.internal\n" +
			"  shortleaf entry create --file entries.yaml",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if entryFile != "" {
				for _, f := range []string{"spiffe-id", "parent-id", "selector", "x509-svid-ttl", "dns", "hint", "admin", "federates-with", "jwt-svid-ttl"} {
					if cmd.Flags().Changed(f) {
						return fmt.Errorf("--file and --%s: the entries come from the file; give one or the other", f)
					}
				}
				return af.run(cmd, func(ctx context.Context, c *adminclient.Client) error {
					return createEntriesFromFile(ctx, cmd, &af, c, entryFile)
				})
			}
			return af.run(cmd, func(ctx context.Context, c *adminclient.Client) error {
				e := &adminv1.Entry{}
				cf.apply(cmd, e)
				out, err := c.CreateEntry(ctx, &adminv1.CreateEntryRequest{Entry: e})
				if err != nil {
					return err
				}
				return printEntries(cmd, &af, out)
			})
		},
	}
	cf.register(create)
	create.Flags().StringVar(&entryFile, "file", "", "register every entry of this YAML or JSON list (\"-\": standard input)")

	var uf entryFlags
	update := &cobra.Command{
		Use:   "update ID",
		Short: "Change an entry (only the flags given)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return af.run(cmd, func(ctx context.Context, c *adminclient.Client) error {
				e, err := c.GetEntry(ctx, &adminv1.GetEntryRequest{Id: args[0]})
				if err != nil {
					return err
				}
				uf.apply(cmd, e)
				out, err := c.UpdateEntry(ctx, &adminv1.UpdateEntryRequest{Entry: e})
				if err != nil {
					return err
				}
				return printEntries(cmd, &af, out)
			})
		},
	}
	uf.register(update)

	var parentFilter, idFilter string
	list := &cobra.Command{
		Use:   "list",
		Short: "List entries",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return af.run(cmd, func(ctx context.Context, c *adminclient.Client) error {
				var all []*adminv1.Entry
				token := ""
				for {
					resp, err := c.ListEntries(ctx, &adminv1.ListEntriesRequest{PageToken: token, ParentId: parentFilter, SpiffeId: idFilter})
					if err != nil {
						return err
					}
					all = append(all, resp.GetEntries()...)
					if token = resp.GetNextPageToken(); token == "" {
						break
					}
				}
				return printEntries(cmd, &af, all...)
			})
		},
	}
	list.Flags().StringVar(&parentFilter, "parent-id", "", "only entries with this parent")
	list.Flags().StringVar(&idFilter, "spiffe-id", "", "only entries with this SPIFFE ID")

	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show one entry",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return af.run(cmd, func(ctx context.Context, c *adminclient.Client) error {
				e, err := c.GetEntry(ctx, &adminv1.GetEntryRequest{Id: args[0]})
				if err != nil {
					return err
				}
				return printEntries(cmd, &af, e)
			})
		},
	}
	del := &cobra.Command{
		Use:   "delete ID",
		Short: "Delete an entry",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return af.run(cmd, func(ctx context.Context, c *adminclient.Client) error {
				if _, err := c.DeleteEntry(ctx, &adminv1.DeleteEntryRequest{Id: args[0]}); err != nil {
					return err
				}
				return af.done(cmd, "deleted entry "+args[0], "deleted", "id", args[0])
			})
		},
	}
	cmd.AddCommand(create, list, show, update, del)
	return cmd
}

func printEntries(cmd *cobra.Command, af *adminFlags, entries ...*adminv1.Entry) error {
	w := cmd.OutOrStdout()
	if af.json() {
		if cmd.Name() == "list" {
			return printJSONList(w, entries)
		}
		return printJSON(w, entries[0])
	}
	rows := make([][]string, 0, len(entries))
	for _, e := range entries {
		ttl := "default"
		if e.GetX509SvidTtlSeconds() > 0 {
			ttl = (time.Duration(e.GetX509SvidTtlSeconds()) * time.Second).String()
		}
		rows = append(rows, []string{e.GetId(), e.GetSpiffeId(), e.GetParentId(), strings.Join(e.GetSelectors(), ","),
			ttl, orDash(strings.Join(e.GetDnsNames(), ",")), orDash(e.GetHint()), strconv.FormatInt(e.GetRevision(), 10)})
	}
	return table(w, []string{"ID", "SPIFFE ID", "PARENT ID", "SELECTORS", "TTL", "DNS", "HINT", "REV"}, rows)
}
