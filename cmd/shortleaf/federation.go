package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/shortleaf/shortleaf/pkg/adminclient"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

type federationFlags struct {
	url, profile, endpointID, bootstrapFile, webRootsFile string
}

func (f *federationFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.url, "bundle-endpoint-url", "", "https:// URL of the foreign bundle endpoint")
	cmd.Flags().StringVar(&f.profile, "profile", "https_spiffe", "https_spiffe or https_web")
	cmd.Flags().StringVar(&f.endpointID, "endpoint-spiffe-id", "", "https_spiffe: SPIFFE ID the endpoint presents")
	cmd.Flags().StringVar(&f.bootstrapFile, "bootstrap-bundle", "", "https_spiffe: file with the first bundle to trust (SPIFFE JSON or PEM)")
	cmd.Flags().StringVar(&f.webRootsFile, "web-roots", "", "https_web: PEM roots to use instead of the system's")
}

func (f *federationFlags) proto(td string) (*adminv1.Federation, error) {
	out := &adminv1.Federation{TrustDomain: td, BundleEndpointUrl: f.url, Profile: f.profile, EndpointSpiffeId: f.endpointID}
	var err error
	if f.bootstrapFile != "" {
		if out.BootstrapBundle, err = os.ReadFile(f.bootstrapFile); err != nil { //nolint:gosec // the operator names the file
			return nil, fmt.Errorf("--bootstrap-bundle: %w", err)
		}
	}
	if f.webRootsFile != "" {
		if out.WebRoots, err = os.ReadFile(f.webRootsFile); err != nil { //nolint:gosec // the operator names the file
			return nil, fmt.Errorf("--web-roots: %w", err)
		}
	}
	return out, nil
}

func newFederationCommand() *cobra.Command {
	var af adminFlags
	cmd := &cobra.Command{
		Use:   "federation",
		Short: "Federate with foreign trust domains (SPIRE included)",
		Long: "A federation relationship names a foreign trust domain's SPIFFE bundle endpoint. The server polls it\n" +
			"at the bundle's refresh hint; entries with --federates-with hand its bundle to their workloads.",
		Args: cobra.NoArgs,
	}
	af.register(cmd)
	print := func(cmd *cobra.Command, list bool, feds ...*adminv1.Federation) error {
		if af.json() {
			if list {
				return printJSONList(cmd.OutOrStdout(), feds)
			}
			return printJSON(cmd.OutOrStdout(), feds[0])
		}
		rows := make([][]string, 0, len(feds))
		for _, f := range feds {
			rows = append(rows, []string{f.GetTrustDomain(), f.GetProfile(), f.GetBundleEndpointUrl(), orDash(f.GetEndpointSpiffeId()),
				fmt.Sprint(f.GetBundleSequence()), unixTime(f.GetLastRefresh()), orDash(f.GetLastError())})
		}
		return table(cmd.OutOrStdout(), []string{"TRUST DOMAIN", "PROFILE", "URL", "ENDPOINT ID", "BUNDLE SEQ", "LAST REFRESH", "LAST ERROR"}, rows)
	}
	var cf, uf federationFlags
	create := &cobra.Command{
		Use:   "create TRUST_DOMAIN",
		Short: "Start federating with a trust domain",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			fed, err := cf.proto(args[0])
			if err != nil {
				return err
			}
			return af.run(cmd, func(ctx context.Context, c *adminclient.Client) error {
				out, err := c.CreateFederation(ctx, &adminv1.CreateFederationRequest{Federation: fed})
				if err != nil {
					return err
				}
				return print(cmd, false, out)
			})
		},
	}
	cf.register(create)
	update := &cobra.Command{
		Use:   "update TRUST_DOMAIN",
		Short: "Replace a relationship (the bundle is kept unless --bootstrap-bundle is given)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			fed, err := uf.proto(args[0])
			if err != nil {
				return err
			}
			return af.run(cmd, func(ctx context.Context, c *adminclient.Client) error {
				out, err := c.UpdateFederation(ctx, &adminv1.UpdateFederationRequest{Federation: fed})
				if err != nil {
					return err
				}
				return print(cmd, false, out)
			})
		},
	}
	uf.register(update)
	list := &cobra.Command{
		Use: "list", Short: "List relationships", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return af.run(cmd, func(ctx context.Context, c *adminclient.Client) error {
				resp, err := c.ListFederations(ctx, &adminv1.ListFederationsRequest{})
				if err != nil {
					return err
				}
				return print(cmd, true, resp.GetFederations()...)
			})
		},
	}
	byTD := func(use, short string, call func(context.Context, *adminclient.Client, string) (*adminv1.Federation, error)) *cobra.Command {
		return &cobra.Command{
			Use: use, Short: short, Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return af.run(cmd, func(ctx context.Context, c *adminclient.Client) error {
					out, err := call(ctx, c, args[0])
					if err != nil {
						return err
					}
					if out == nil {
						return af.done(cmd, "deleted federation with "+args[0], "deleted", "trust_domain", args[0])
					}
					return print(cmd, false, out)
				})
			},
		}
	}
	show := byTD("show TRUST_DOMAIN", "Show a relationship and its last refresh", func(ctx context.Context, c *adminclient.Client, td string) (*adminv1.Federation, error) {
		return c.GetFederation(ctx, &adminv1.GetFederationRequest{TrustDomain: td})
	})
	refresh := byTD("refresh TRUST_DOMAIN", "Fetch the foreign bundle now", func(ctx context.Context, c *adminclient.Client, td string) (*adminv1.Federation, error) {
		return c.RefreshFederation(ctx, &adminv1.RefreshFederationRequest{TrustDomain: td})
	})
	del := byTD("delete TRUST_DOMAIN", "Stop federating and drop the foreign bundle", func(ctx context.Context, c *adminclient.Client, td string) (*adminv1.Federation, error) {
		_, err := c.DeleteFederation(ctx, &adminv1.DeleteFederationRequest{TrustDomain: td})
		return nil, err
	})
	cmd.AddCommand(create, list, show, update, del, refresh)
	return cmd
}

// bundle list|set|delete live beside bundle show.
func newBundleAdminCommands(af *adminFlags) []*cobra.Command {
	list := &cobra.Command{
		Use: "list", Short: "List the own bundle and every federated one", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return af.run(cmd, func(ctx context.Context, c *adminclient.Client) error {
				resp, err := c.ListBundles(ctx, &adminv1.ListBundlesRequest{})
				if err != nil {
					return err
				}
				if af.json() {
					return printJSONList(cmd.OutOrStdout(), resp.GetBundles())
				}
				rows := make([][]string, 0, len(resp.GetBundles()))
				for _, b := range resp.GetBundles() {
					rows = append(rows, []string{b.GetTrustDomain(), fmt.Sprint(b.GetSequence()), fmt.Sprint(b.GetX509Authorities()), fmt.Sprint(b.GetJwtAuthorities())})
				}
				return table(cmd.OutOrStdout(), []string{"TRUST DOMAIN", "SEQUENCE", "X509 AUTHORITIES", "JWT AUTHORITIES"}, rows)
			})
		},
	}
	var file string
	set := &cobra.Command{
		Use: "set TRUST_DOMAIN", Short: "Set a federated trust domain's bundle by hand (SPIFFE JSON or PEM file)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := os.ReadFile(file) //nolint:gosec // the operator names the file
			if err != nil {
				return fmt.Errorf("--file: %w", err)
			}
			return af.run(cmd, func(ctx context.Context, c *adminclient.Client) error {
				b, err := c.SetFederatedBundle(ctx, &adminv1.SetFederatedBundleRequest{TrustDomain: args[0], Bundle: raw})
				if err != nil {
					return err
				}
				if af.json() {
					return printJSON(cmd.OutOrStdout(), b)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "set the bundle of %s: %d X.509 and %d JWT authorities\n", b.GetTrustDomain(), b.GetX509Authorities(), b.GetJwtAuthorities())
				return nil
			})
		},
	}
	set.Flags().StringVar(&file, "file", "", "bundle file")
	del := &cobra.Command{
		Use: "delete TRUST_DOMAIN", Short: "Delete a federated trust domain's bundle", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return af.run(cmd, func(ctx context.Context, c *adminclient.Client) error {
				if _, err := c.DeleteFederatedBundle(ctx, &adminv1.DeleteFederatedBundleRequest{TrustDomain: args[0]}); err != nil {
					return err
				}
				return af.done(cmd, "deleted the bundle of "+args[0], "deleted", "trust_domain", args[0])
			})
		},
	}
	return []*cobra.Command{list, set, del}
}
