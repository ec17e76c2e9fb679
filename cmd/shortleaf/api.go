package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shortleaf/shortleaf/pkg/agent"
	"github.com/shortleaf/shortleaf/pkg/safefile"
)

// workloadSocketEnv is the SPIFFE standard variable for the Workload API
// address, read when --socket is not given.
const workloadSocketEnv = "SPIFFE_ENDPOINT_SOCKET"

// apiFlags are shared by the Workload API verbs.
type apiFlags struct {
	socket  string
	output  string
	timeout time.Duration
}

func (f *apiFlags) register(cmd *cobra.Command) {
	cmd.PersistentFlags().StringVar(&f.socket, "socket", "", "Workload API socket path or unix:// address (default $"+workloadSocketEnv+", else "+agent.DefaultSocketPath+")")
	cmd.PersistentFlags().StringVarP(&f.output, "output", "o", "table", "output format: table or json")
	cmd.PersistentFlags().DurationVar(&f.timeout, "timeout", 5*time.Second, "how long to wait for the agent's answer")
}

func (f *apiFlags) check() error {
	if f.output != "table" && f.output != "json" {
		return fmt.Errorf("--output: %q is not table or json", f.output)
	}
	return nil
}

func (f *apiFlags) addr() string {
	socket := f.socket
	if socket == "" {
		socket = os.Getenv(workloadSocketEnv)
	}
	if socket == "" {
		socket = agent.DefaultSocketPath
	}
	if strings.HasPrefix(socket, "unix:") || strings.HasPrefix(socket, "tcp:") {
		return socket
	}
	return "unix://" + socket
}

func newAPICommand() *cobra.Command {
	var af apiFlags
	cmd := &cobra.Command{
		Use:   "api",
		Short: "Call the SPIFFE Workload API as a workload would (fetch, watch), like spire-agent api",
		Args:  noArgsOrSuggest,
	}
	af.register(cmd)
	fetch := &cobra.Command{Use: "fetch", Short: "Fetch X.509-SVIDs, a JWT-SVID or the trust bundles once", Args: noArgsOrSuggest}
	fetch.AddCommand(newAPIFetchX509(&af), newAPIFetchJWT(&af), newAPIFetchBundle(&af))
	cmd.AddCommand(fetch, newAPIWatch(&af))
	return cmd
}

func newAPIFetchX509(af *apiFlags) *cobra.Command {
	var writeDir string
	cmd := &cobra.Command{
		Use:   "x509",
		Short: "Fetch the caller's X.509-SVIDs and bundles",
		Long: "Fetch the caller's X.509-SVIDs and trust bundles from the agent. With --write DIR, write\n" +
			"svid.N.pem (certificate chain), svid.N.key (private key, mode 0600) and bundle.N.pem for\n" +
			"each SVID N, and federated_bundle.N.M.pem for its federated bundles, as spire-agent does.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := af.check(); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), af.timeout)
			defer cancel()
			start := time.Now()
			x, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr(af.addr()))
			if err != nil {
				return apiError(err)
			}
			if writeDir != "" {
				if err := writeX509(writeDir, x); err != nil {
					return err
				}
			}
			return printX509(cmd.OutOrStdout(), af.output == "json", x, time.Since(start), writeDir)
		},
	}
	cmd.Flags().StringVar(&writeDir, "write", "", "directory to write the SVIDs, keys and bundles to")
	return cmd
}

func newAPIFetchJWT(af *apiFlags) *cobra.Command {
	var audiences []string
	var spiffeID string
	cmd := &cobra.Command{
		Use:   "jwt",
		Short: "Fetch a JWT-SVID for an audience, and the JWT bundles",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := af.check(); err != nil {
				return err
			}
			if len(audiences) == 0 {
				return errors.New("--audience: at least one is required")
			}
			params := jwtsvid.Params{Audience: audiences[0], ExtraAudiences: audiences[1:]}
			if spiffeID != "" {
				id, err := spiffeid.FromString(spiffeID)
				if err != nil {
					return fmt.Errorf("--spiffe-id: %w", err)
				}
				params.Subject = id
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), af.timeout)
			defer cancel()
			client, err := workloadapi.New(ctx, workloadapi.WithAddr(af.addr()))
			if err != nil {
				return apiError(err)
			}
			defer client.Close()
			svids, err := client.FetchJWTSVIDs(ctx, params)
			if err != nil {
				return apiError(err)
			}
			bundles, err := client.FetchJWTBundles(ctx)
			if err != nil {
				return apiError(err)
			}
			return printJWT(cmd.OutOrStdout(), af.output == "json", svids, bundles)
		},
	}
	cmd.Flags().StringSliceVar(&audiences, "audience", nil, "audience of the token (repeat or comma-separate for several)")
	cmd.Flags().StringVar(&spiffeID, "spiffe-id", "", "which of the caller's SPIFFE IDs to use (default: its first)")
	return cmd
}

func newAPIFetchBundle(af *apiFlags) *cobra.Command {
	var writeDir string
	cmd := &cobra.Command{
		Use:   "bundle",
		Short: "Fetch the X.509 trust bundles the caller trusts (its own and federated)",
		Long:  "Fetch the X.509 trust bundles. With --write DIR, write one <trust domain>.pem per bundle.",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := af.check(); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), af.timeout)
			defer cancel()
			set, err := workloadapi.FetchX509Bundles(ctx, workloadapi.WithAddr(af.addr()))
			if err != nil {
				return apiError(err)
			}
			bundles := sortedBundles(set)
			if writeDir != "" {
				if err := os.MkdirAll(writeDir, 0o755); err != nil { //nolint:gosec // bundles are public
					return fmt.Errorf("--write: %w", err)
				}
				for _, b := range bundles {
					if err := writePublic(filepath.Join(writeDir, b.TrustDomain().Name()+".pem"), certsPEM(b.X509Authorities())); err != nil {
						return err
					}
				}
			}
			if af.output == "json" {
				out := map[string][]certJSON{}
				for _, b := range bundles {
					out[b.TrustDomain().IDString()] = certsJSON(b.X509Authorities())
				}
				return writeJSON(cmd.OutOrStdout(), out)
			}
			for _, b := range bundles {
				fmt.Fprintf(cmd.OutOrStdout(), "# %s\n%s", b.TrustDomain().IDString(), certsPEM(b.X509Authorities()))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&writeDir, "write", "", "directory to write the bundles to")
	return cmd
}

func newAPIWatch(af *apiFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "watch",
		Short: "Watch the caller's X.509-SVIDs: print every update until interrupted",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := af.check(); err != nil {
				return err
			}
			client, err := workloadapi.New(cmd.Context(), workloadapi.WithAddr(af.addr()))
			if err != nil {
				return apiError(err)
			}
			defer client.Close()
			w := &x509Watcher{out: cmd.OutOrStdout(), json: af.output == "json", start: time.Now()}
			err = client.WatchX509Context(cmd.Context(), w)
			if cmd.Context().Err() != nil {
				return nil // interrupted
			}
			return apiError(err)
		},
	}
}

type x509Watcher struct {
	out   io.Writer
	json  bool
	start time.Time
}

func (w *x509Watcher) OnX509ContextUpdate(x *workloadapi.X509Context) {
	_ = printX509(w.out, w.json, x, time.Since(w.start), "")
	w.start = time.Now()
}

func (w *x509Watcher) OnX509ContextWatchError(err error) {
	fmt.Fprintln(os.Stderr, "shortleaf: watch:", apiError(err))
}

// apiError makes a Workload API failure one line a user can act on.
func apiError(err error) error {
	if err == nil {
		return nil
	}
	switch {
	case status.Code(err) == codes.PermissionDenied:
		return fmt.Errorf("the agent has no identity for this process (no entry matches its selectors): %w", err)
	case status.Code(err) == codes.Unavailable:
		return fmt.Errorf("the agent is not serving (not running, or not synced yet): %w", err)
	case errors.Is(err, context.DeadlineExceeded), status.Code(err) == codes.DeadlineExceeded:
		return fmt.Errorf("no answer from the agent within --timeout: %w", err)
	}
	return err
}

// writeX509 writes each SVID's chain, key and bundle the way
// `spire-agent api fetch x509 -write` does.
func writeX509(dir string, x *workloadapi.X509Context) error {
	if err := os.MkdirAll(dir, 0o755); err != nil { //nolint:gosec // the key files themselves are 0600
		return fmt.Errorf("--write: %w", err)
	}
	for i, s := range x.SVIDs {
		certs, key, err := s.Marshal()
		if err != nil {
			return fmt.Errorf("SVID %s: %w", s.ID, err)
		}
		if err := writePublic(filepath.Join(dir, fmt.Sprintf("svid.%d.pem", i)), certs); err != nil {
			return err
		}
		if err := safefile.Write(filepath.Join(dir, fmt.Sprintf("svid.%d.key", i)), key); err != nil {
			return fmt.Errorf("--write: %w", err)
		}
		own, err := x.Bundles.GetX509BundleForTrustDomain(s.ID.TrustDomain())
		if err != nil {
			return fmt.Errorf("SVID %s: %w", s.ID, err)
		}
		if err := writePublic(filepath.Join(dir, fmt.Sprintf("bundle.%d.pem", i)), certsPEM(own.X509Authorities())); err != nil {
			return err
		}
		j := 0
		for _, b := range sortedBundles(x.Bundles) {
			if b.TrustDomain() == s.ID.TrustDomain() {
				continue
			}
			if err := writePublic(filepath.Join(dir, fmt.Sprintf("federated_bundle.%d.%d.pem", i, j)), certsPEM(b.X509Authorities())); err != nil {
				return err
			}
			j++
		}
	}
	return nil
}

func writePublic(path string, data []byte) error {
	if err := os.WriteFile(path, data, 0o644); err != nil { //nolint:gosec // certificates are public
		return fmt.Errorf("--write: %w", err)
	}
	return nil
}

func sortedBundles(set *x509bundle.Set) []*x509bundle.Bundle {
	bundles := set.Bundles()
	slices.SortFunc(bundles, func(a, b *x509bundle.Bundle) int {
		return strings.Compare(a.TrustDomain().Name(), b.TrustDomain().Name())
	})
	return bundles
}

func certsPEM(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// certJSON describes one certificate for -o json.
type certJSON struct {
	Subject   string `json:"subject"`
	Serial    string `json:"serial"`
	NotBefore string `json:"not_before"`
	NotAfter  string `json:"not_after"`
}

func certsJSON(certs []*x509.Certificate) []certJSON {
	out := make([]certJSON, 0, len(certs))
	for _, c := range certs {
		out = append(out, certJSON{Subject: c.Subject.String(), Serial: c.SerialNumber.Text(16),
			NotBefore: c.NotBefore.UTC().Format(time.RFC3339), NotAfter: c.NotAfter.UTC().Format(time.RFC3339)})
	}
	return out
}

// svidJSON is one X.509-SVID for -o json; the private key is never printed.
type svidJSON struct {
	SPIFFEID  string     `json:"spiffe_id"`
	Hint      string     `json:"hint,omitempty"`
	NotBefore string     `json:"not_before"`
	NotAfter  string     `json:"not_after"`
	Serial    string     `json:"serial"`
	Chain     []certJSON `json:"chain"`
}

func printX509(w io.Writer, asJSON bool, x *workloadapi.X509Context, took time.Duration, writeDir string) error {
	if asJSON {
		out := struct {
			SVIDs   []svidJSON            `json:"svids"`
			Bundles map[string][]certJSON `json:"bundles"`
			Took    string                `json:"took"`
		}{Bundles: map[string][]certJSON{}, Took: took.Round(time.Microsecond).String()}
		for _, s := range x.SVIDs {
			out.SVIDs = append(out.SVIDs, svidOf(s))
		}
		for _, b := range sortedBundles(x.Bundles) {
			out.Bundles[b.TrustDomain().IDString()] = certsJSON(b.X509Authorities())
		}
		return writeJSON(w, out)
	}
	fmt.Fprintf(w, "Received %d svid after %s\n", len(x.SVIDs), took.Round(time.Microsecond))
	for i, s := range x.SVIDs {
		fmt.Fprintf(w, "\nSPIFFE ID:\t\t%s\n", s.ID)
		if s.Hint != "" {
			fmt.Fprintf(w, "Hint:\t\t\t%s\n", s.Hint)
		}
		fmt.Fprintf(w, "SVID Valid After:\t%s\nSVID Valid Until:\t%s\n", s.Certificates[0].NotBefore.UTC().Format(time.RFC3339), s.Certificates[0].NotAfter.UTC().Format(time.RFC3339))
		for j, c := range s.Certificates[1:] {
			fmt.Fprintf(w, "Intermediate #%d Valid After:\t%s\nIntermediate #%d Valid Until:\t%s\n", j+1, c.NotBefore.UTC().Format(time.RFC3339), j+1, c.NotAfter.UTC().Format(time.RFC3339))
		}
		if own, err := x.Bundles.GetX509BundleForTrustDomain(s.ID.TrustDomain()); err == nil {
			for j, c := range own.X509Authorities() {
				fmt.Fprintf(w, "CA #%d Valid After:\t%s\nCA #%d Valid Until:\t%s\n", j+1, c.NotBefore.UTC().Format(time.RFC3339), j+1, c.NotAfter.UTC().Format(time.RFC3339))
			}
		}
		if writeDir != "" {
			fmt.Fprintf(w, "Written to:\t\t%s\n", filepath.Join(writeDir, fmt.Sprintf("svid.%d.{pem,key}", i)))
		}
	}
	for _, b := range sortedBundles(x.Bundles) {
		if len(x.SVIDs) > 0 && b.TrustDomain() == x.SVIDs[0].ID.TrustDomain() {
			continue
		}
		fmt.Fprintf(w, "\nFederated bundle:\t%s (%d CAs)\n", b.TrustDomain().IDString(), len(b.X509Authorities()))
	}
	return nil
}

func svidOf(s *x509svid.SVID) svidJSON {
	leaf := s.Certificates[0]
	return svidJSON{SPIFFEID: s.ID.String(), Hint: s.Hint, Serial: leaf.SerialNumber.Text(16),
		NotBefore: leaf.NotBefore.UTC().Format(time.RFC3339), NotAfter: leaf.NotAfter.UTC().Format(time.RFC3339),
		Chain: certsJSON(s.Certificates)}
}

func printJWT(w io.Writer, asJSON bool, svids []*jwtsvid.SVID, bundles *jwtbundle.Set) error {
	type tokenJSON struct {
		SPIFFEID string   `json:"spiffe_id"`
		Audience []string `json:"audience"`
		Expiry   string   `json:"expiry"`
		Token    string   `json:"token"`
	}
	if asJSON {
		out := struct {
			SVIDs   []tokenJSON         `json:"svids"`
			Bundles map[string][]string `json:"bundles"`
		}{Bundles: map[string][]string{}}
		for _, s := range svids {
			out.SVIDs = append(out.SVIDs, tokenJSON{SPIFFEID: s.ID.String(), Audience: s.Audience, Expiry: s.Expiry.UTC().Format(time.RFC3339), Token: s.Marshal()})
		}
		for _, b := range bundles.Bundles() {
			out.Bundles[b.TrustDomain().IDString()] = slices.Sorted(maps.Keys(b.JWTAuthorities()))
		}
		return writeJSON(w, out)
	}
	for _, s := range svids {
		fmt.Fprintf(w, "token(%s):\n\t%s\n", s.ID, s.Marshal())
	}
	for _, b := range bundles.Bundles() {
		fmt.Fprintf(w, "bundle(%s):\n\tkey IDs: %s\n", b.TrustDomain().IDString(), strings.Join(slices.Sorted(maps.Keys(b.JWTAuthorities())), ", "))
	}
	return nil
}

func writeJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}
