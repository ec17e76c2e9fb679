package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/health/grpc_health_v1"

	"github.com/shortleaf/shortleaf/pkg/adminclient"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

func newTokenCommand() *cobra.Command {
	var af adminFlags
	cmd := &cobra.Command{Use: "token", Short: "Manage join tokens", Args: cobra.NoArgs}
	af.register(cmd)
	var ttl time.Duration
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a single-use join token for one agent",
		Long:  "Create a single-use join token. The token is printed once and only its hash is stored.",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return af.run(cmd, func(ctx context.Context, c *adminclient.Client) error {
				resp, err := c.CreateJoinToken(ctx, &adminv1.CreateJoinTokenRequest{TtlSeconds: int32(ttl / time.Second)})
				if err != nil {
					return err
				}
				if af.json() {
					return printJSON(cmd.OutOrStdout(), resp)
				}
				return table(cmd.OutOrStdout(), []string{"TOKEN", "AGENT ID", "EXPIRES"},
					[][]string{{resp.GetToken(), resp.GetAgentId(), unixTime(resp.GetExpiresAt())}})
			})
		},
	}
	create.Flags().DurationVar(&ttl, "ttl", 10*time.Minute, "how long the token may be used")
	cmd.AddCommand(create)
	return cmd
}

func newAgentAdminCommands() []*cobra.Command {
	var af adminFlags
	printAgents := func(cmd *cobra.Command, list bool, agents ...*adminv1.Agent) error {
		if af.json() {
			if list {
				return printJSONList(cmd.OutOrStdout(), agents)
			}
			return printJSON(cmd.OutOrStdout(), agents[0])
		}
		rows := make([][]string, 0, len(agents))
		for _, a := range agents {
			state := "attested"
			if a.GetBanned() {
				state = "banned"
			}
			rows = append(rows, []string{a.GetSpiffeId(), a.GetAttestationType(), state, orDash(a.GetSerialNumber()),
				unixTime(a.GetNotAfter()), unixTime(a.GetLastSeen())})
		}
		return table(cmd.OutOrStdout(), []string{"SPIFFE ID", "ATTESTATION", "STATE", "SVID SERIAL", "SVID NOT AFTER", "LAST SEEN"}, rows)
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List attested agents",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return af.run(cmd, func(ctx context.Context, c *adminclient.Client) error {
				resp, err := c.ListAgents(ctx, &adminv1.ListAgentsRequest{})
				if err != nil {
					return err
				}
				return printAgents(cmd, true, resp.GetAgents()...)
			})
		},
	}
	show := &cobra.Command{
		Use:   "show SPIFFE_ID",
		Short: "Show one agent",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return af.run(cmd, func(ctx context.Context, c *adminclient.Client) error {
				a, err := c.GetAgent(ctx, &adminv1.GetAgentRequest{SpiffeId: args[0]})
				if err != nil {
					return err
				}
				return printAgents(cmd, false, a)
			})
		},
	}
	evict := &cobra.Command{
		Use:   "evict SPIFFE_ID",
		Short: "Evict an agent: its next call fails and it must attest again",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return af.run(cmd, func(ctx context.Context, c *adminclient.Client) error {
				if _, err := c.EvictAgent(ctx, &adminv1.EvictAgentRequest{SpiffeId: args[0]}); err != nil {
					return err
				}
				return af.done(cmd, "evicted "+args[0], "evicted", "spiffe_id", args[0])
			})
		},
	}
	ban := &cobra.Command{
		Use:   "ban SPIFFE_ID",
		Short: "Ban an agent: its next call fails and it may not attest again until unbanned",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return af.run(cmd, func(ctx context.Context, c *adminclient.Client) error {
				if _, err := c.BanAgent(ctx, &adminv1.BanAgentRequest{SpiffeId: args[0]}); err != nil {
					return err
				}
				return af.done(cmd, "banned "+args[0], "banned", "spiffe_id", args[0])
			})
		},
	}
	unban := &cobra.Command{
		Use:   "unban SPIFFE_ID",
		Short: "Unban an agent: it may attest again (an x509pop, TPM or PSAT agent does so by itself)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return af.run(cmd, func(ctx context.Context, c *adminclient.Client) error {
				if _, err := c.UnbanAgent(ctx, &adminv1.UnbanAgentRequest{SpiffeId: args[0]}); err != nil {
					return err
				}
				return af.done(cmd, "unbanned "+args[0], "unbanned", "spiffe_id", args[0])
			})
		},
	}
	for _, c := range []*cobra.Command{list, show, evict, ban, unban} {
		af.register(c)
	}
	return []*cobra.Command{list, show, evict, ban, unban, newAgentHealthcheckCommand()}
}

func newBundleCommand() *cobra.Command {
	var af adminFlags
	cmd := &cobra.Command{Use: "bundle", Short: "Show the trust bundle; list, set and delete federated bundles", Args: cobra.NoArgs}
	af.register(cmd)
	var format string
	show := &cobra.Command{
		Use:   "show",
		Short: "Print the trust domain's bundle as PEM or as a SPIFFE bundle (JWK Set)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "pem" && format != "spiffe" && format != "jwks" && format != "crl" {
				return fmt.Errorf("--format: %q is not pem, spiffe, jwks or crl", format)
			}
			if af.json() && (format == "pem" || format == "crl") {
				return fmt.Errorf("--output json: --format %s prints PEM; use --format spiffe (a SPIFFE bundle, JSON) or jwks", format)
			}
			return af.run(cmd, func(ctx context.Context, c *adminclient.Client) error {
				b, err := c.GetBundle(ctx, &adminv1.GetBundleRequest{})
				if err != nil {
					return err
				}
				switch format {
				case "pem":
					for _, der := range b.GetX509Authorities() {
						if err := pem.Encode(cmd.OutOrStdout(), &pem.Block{Type: "CERTIFICATE", Bytes: der}); err != nil {
							return err
						}
					}
					return nil
				case "crl":
					for _, der := range b.GetCrls() {
						if err := pem.Encode(cmd.OutOrStdout(), &pem.Block{Type: "X509 CRL", Bytes: der}); err != nil {
							return err
						}
					}
					return nil
				}
				return printSPIFFEBundle(cmd, b, format == "jwks")
			})
		},
	}
	show.Flags().StringVar(&format, "format", "pem", "pem (X.509 roots), spiffe (SPIFFE bundle: X.509 and JWT keys), jwks (JWT keys only) or crl (the CRLs of the roots and intermediates)")
	cmd.AddCommand(show)
	cmd.AddCommand(newBundleAdminCommands(&af)...)
	return cmd
}

// printSPIFFEBundle prints the bundle as a SPIFFE bundle (JWK Set), or with
// jwtOnly as the JWKS of the JWT signing keys alone.
func printSPIFFEBundle(cmd *cobra.Command, b *adminv1.Bundle, jwtOnly bool) error {
	td, err := spiffeid.TrustDomainFromString(b.GetTrustDomain())
	if err != nil {
		return err
	}
	sb := spiffebundle.New(td)
	for _, k := range b.GetJwtAuthorities() {
		pub, err := x509.ParsePKIXPublicKey(k.GetPublicKey())
		if err != nil {
			return err
		}
		if err := sb.AddJWTAuthority(k.GetKeyId(), pub); err != nil {
			return err
		}
	}
	if jwtOnly {
		out, err := sb.JWTBundle().Marshal()
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(cmd.OutOrStdout(), string(out))
		return err
	}
	for _, der := range b.GetX509Authorities() {
		certs, err := parseDER(der)
		if err != nil {
			return err
		}
		sb.AddX509Authority(certs)
	}
	sb.SetSequenceNumber(b.GetSequence())
	if hint := time.Duration(b.GetRefreshHintSeconds()) * time.Second; hint > 0 {
		sb.SetRefreshHint(hint) // what the bundle endpoint publishes
	}
	out, err := sb.Marshal()
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(cmd.OutOrStdout(), string(out))
	return err
}

func newX509Command() *cobra.Command {
	var af adminFlags
	cmd := &cobra.Command{Use: "x509", Short: "X.509-SVID tooling", Args: cobra.NoArgs}
	af.register(cmd)
	var spiffeID, csrPath, certOut, keyOut string
	var dnsNames []string
	var ttl time.Duration
	mint := &cobra.Command{
		Use:   "mint",
		Short: "Sign an X.509-SVID for a SPIFFE ID, from a CSR or for a fresh key",
		Long: "Sign an X.509-SVID. With --csr the key stays yours; without it the server generates a P-256 key.\n" +
			"Prints the chain (and key) as PEM unless --cert-out/--key-out are given; key files are written 0600.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &adminv1.MintX509SVIDRequest{SpiffeId: spiffeID, TtlSeconds: int32(ttl / time.Second), DnsNames: dnsNames}
			if csrPath != "" {
				raw, err := os.ReadFile(csrPath) //nolint:gosec // the operator names the file
				if err != nil {
					return fmt.Errorf("--csr: %w", err)
				}
				if block, _ := pem.Decode(raw); block != nil {
					raw = block.Bytes
				}
				req.Csr = raw
			}
			return af.run(cmd, func(ctx context.Context, c *adminclient.Client) error {
				resp, err := c.MintX509SVID(ctx, req)
				if err != nil {
					return err
				}
				if af.json() {
					return printJSON(cmd.OutOrStdout(), resp)
				}
				return writeMinted(cmd, resp, certOut, keyOut)
			})
		},
	}
	mint.Flags().StringVar(&spiffeID, "spiffe-id", "", "SPIFFE ID to mint for")
	mint.Flags().StringVar(&csrPath, "csr", "", "PEM or DER CSR file (optional)")
	mint.Flags().DurationVar(&ttl, "ttl", 0, "lifetime (1m to 24h; default the server's)")
	mint.Flags().StringSliceVar(&dnsNames, "dns", nil, "DNS name to include (repeatable)")
	mint.Flags().StringVar(&certOut, "cert-out", "", "write the chain here instead of stdout")
	mint.Flags().StringVar(&keyOut, "key-out", "", "write the generated key here (0600) instead of stdout")
	cmd.AddCommand(mint)
	return cmd
}

func writeMinted(cmd *cobra.Command, resp *adminv1.MintX509SVIDResponse, certOut, keyOut string) error {
	var chain []byte
	for _, der := range resp.GetCertChain() {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	var key []byte
	if len(resp.GetPrivateKey()) > 0 {
		key = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: resp.GetPrivateKey()})
	}
	if certOut != "" {
		if err := os.WriteFile(certOut, chain, 0o644); err != nil { //nolint:gosec // certificates are public
			return err
		}
	} else {
		_, _ = cmd.OutOrStdout().Write(chain)
	}
	if key == nil {
		return nil
	}
	if keyOut != "" {
		return os.WriteFile(keyOut, key, 0o600)
	}
	_, err := cmd.OutOrStdout().Write(key)
	return err
}

func newJWTCommand() *cobra.Command {
	var af adminFlags
	cmd := &cobra.Command{Use: "jwt", Short: "JWT-SVID tooling", Args: cobra.NoArgs}
	af.register(cmd)
	var spiffeID string
	var audience []string
	var ttl time.Duration
	mint := &cobra.Command{
		Use:   "mint",
		Short: "Sign a JWT-SVID for a SPIFFE ID and audience; prints the token",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return af.run(cmd, func(ctx context.Context, c *adminclient.Client) error {
				resp, err := c.MintJWTSVID(ctx, &adminv1.MintJWTSVIDRequest{SpiffeId: spiffeID, Audience: audience, TtlSeconds: int32(ttl / time.Second)})
				if err != nil {
					return err
				}
				if af.json() {
					return printJSON(cmd.OutOrStdout(), resp)
				}
				_, err = fmt.Fprintln(cmd.OutOrStdout(), resp.GetToken())
				return err
			})
		},
	}
	mint.Flags().StringVar(&spiffeID, "spiffe-id", "", "SPIFFE ID (sub)")
	mint.Flags().StringSliceVar(&audience, "audience", nil, "audience (aud), repeatable; at least one")
	mint.Flags().DurationVar(&ttl, "ttl", 0, "lifetime (default the server's jwt_svid_ttl)")
	cmd.AddCommand(mint)
	return cmd
}

func newHealthcheckCommand() *cobra.Command {
	var af adminFlags
	cmd := &cobra.Command{
		Use:   "healthcheck",
		Short: "Check that the server answers on its admin socket (exit 0 when healthy)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return af.run(cmd, func(ctx context.Context, c *adminclient.Client) error {
				resp, err := grpc_health_v1.NewHealthClient(c.Conn).Check(ctx, &grpc_health_v1.HealthCheckRequest{})
				if err != nil {
					return err
				}
				if resp.GetStatus() != grpc_health_v1.HealthCheckResponse_SERVING {
					return fmt.Errorf("server is %s", resp.GetStatus())
				}
				return af.done(cmd, "server is healthy", "healthy", "status", resp.GetStatus().String())
			})
		},
	}
	af.register(cmd)
	return cmd
}
