package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/pkg/adminclient"
	"github.com/shortleaf/shortleaf/pkg/config"
	"github.com/shortleaf/shortleaf/pkg/datastore"
	"github.com/shortleaf/shortleaf/pkg/drill"
	"github.com/shortleaf/shortleaf/pkg/server"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// errViolations makes `ca drill` exit non-zero after printing its report.
var errViolations = errors.New("the drill found violations")

func newDrillCommand(af *adminFlags) *cobra.Command {
	var (
		configPath string
		days       float64
		step       time.Duration
		agents     int
		fresh      bool
	)
	cmd := &cobra.Command{
		Use:   "drill",
		Short: "Rehearse the CA's rotations under your config on a simulated clock, and report any violation",
		Long: "Runs the CA's real rotation logic under the server config (and the current CA journal, read\n" +
			"from the running server's admin socket, or read-only from data_dir when it is stopped) on a\n" +
			"simulated clock, with simulated agents that renew as real agents do and, with a bundle endpoint,\n" +
			"a federated consumer polling it. Keys are in-memory stand-ins: the real keys are never touched.\n" +
			"It prints every transition and stops at the first violation: an SVID that would not verify at\n" +
			"some agent or consumer, a lifetime cut short, an SVID served expired, a root that took over past\n" +
			"its deadline or without the propagation gate, a config the CA refuses. Exits 1 on a violation.\n" +
			"By default it runs a week past the active root's expiry, so it covers the next root rotation.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if af.output != "table" && af.output != "json" {
				return fmt.Errorf("--output: %q is not table or json", af.output)
			}
			if days < 0 || days > 100*365 {
				return fmt.Errorf("--days: %v is out of range (0 for the default, up to 36500)", days)
			}
			if step < time.Second || step > time.Hour {
				return fmt.Errorf("--step: %s is out of range (1s to 1h)", step)
			}
			if agents < 2 || agents > 100 {
				return fmt.Errorf("--agents: %d is out of range (2 to 100)", agents)
			}
			cfg, err := config.LoadServerSettings(configPath)
			if err != nil {
				return err
			}
			var journal []byte
			source := "a first start (--fresh)"
			if !fresh {
				if journal, source, err = currentJournal(cmd.Context(), af, cfg.AdminSocket, cfg.DataDir, server.StoredReplicaID(cfg), cfg.Etcd); err != nil {
					return err
				}
			}
			dc := drill.Config{
				CA: ca.Config{TrustDomain: cfg.TrustDomain, RootTTL: cfg.RootTTL, IntermediateTTL: cfg.IntermediateTTL,
					MaxSVIDTTL: cfg.MaxSVIDTTL, RootPrepareBefore: cfg.RootPrepareBefore, Upstream: cfg.Upstream},
				Journal: journal, Step: step, Agents: agents,
				WorkloadTTL: cfg.DefaultSVIDTTL, AgentSVIDTTL: cfg.AgentSVIDTTL,
				AgentLiveness: cfg.AgentLiveness, FastForward: true,
				Duration: time.Duration(days * 24 * float64(time.Hour)),
			}
			if be := cfg.BundleEndpoint; be != nil {
				dc.BundleRefreshHint = be.RefreshHint
				if dc.BundleRefreshHint == 0 {
					dc.BundleRefreshHint = 5 * time.Minute
				}
			}
			report, err := drill.Run(cmd.Context(), dc)
			if err != nil {
				return err
			}
			if af.json() {
				if err := printJSONValue(cmd.OutOrStdout(), report); err != nil {
					return err
				}
			} else {
				printDrill(cmd.OutOrStdout(), configPath, source, report)
			}
			if !report.OK() {
				return errViolations
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "server.yaml", "the server config file to drill")
	cmd.Flags().Float64Var(&days, "days", 0, "how many simulated days to run (default: a week past the active root's expiry)")
	cmd.Flags().DurationVar(&step, "step", drill.DefaultStep, "resolution of the simulated clock and of every check")
	cmd.Flags().IntVar(&agents, "agents", drill.DefaultAgents, "simulated agents, each holding a workload SVID and its own")
	cmd.Flags().BoolVar(&fresh, "fresh", false, "drill a first start instead of the current CA journal")
	return cmd
}

// currentJournal asks the running server for its CA journal, or reads it
// from the datastore when no server answers.
func currentJournal(ctx context.Context, af *adminFlags, socket, dataDir, replicaID string, etcd *datastore.EtcdConfig) ([]byte, string, error) {
	if af.socket != "" {
		socket = af.socket
	}
	if socket == "" {
		socket = filepath.Join(dataDir, "admin.sock")
	}
	if c, err := adminclient.Dial(socket); err == nil {
		defer c.Close()
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		resp, err := c.ExportCAJournal(cctx, &adminv1.ExportCAJournalRequest{})
		if err == nil {
			return resp.GetJournal(), "the running server's CA journal (" + socket + ")", nil
		}
	}
	if etcd != nil {
		store, err := datastore.OpenEtcd(ctx, *etcd)
		if err != nil {
			return nil, "", err
		}
		defer store.Close()
		state, err := store.LoadCAJournal(ctx)
		where := fmt.Sprintf("etcd %v under %s", etcd.Endpoints, store.Prefix())
		if err != nil || state.Cluster.Data == nil {
			return nil, "a first start (no CA journal in " + where + ")", err
		}
		raw, err := ca.ExportJournal(state, replicaID)
		return raw, "the CA journal in " + where + " as replica " + replicaID, err
	}
	path := filepath.Join(dataDir, "datastore.db")
	state, err := datastore.ReadCAJournal(path)
	if err != nil {
		return nil, "", err
	}
	if state.Cluster.Data == nil {
		return nil, "a first start (no CA journal in " + path + ")", nil
	}
	raw, err := ca.ExportJournal(state, replicaID)
	return raw, "the CA journal in " + path, err
}

func printJSONValue(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printDrill(w io.Writer, configPath, source string, r *drill.Report) {
	fmt.Fprintf(w, "drill of %s from %s\n", configPath, source)
	fmt.Fprintf(w, "simulated %s to %s (%.1f days)\n\n", r.Start.Format(time.RFC3339), r.End.Format(time.RFC3339), r.End.Sub(r.Start).Hours()/24)
	for _, e := range r.Timeline {
		fmt.Fprintf(w, "day %8.3f  %s  %-12s %-16s %s\n", e.Day, e.At.Format(time.RFC3339), e.Kind, e.AuthorityID, e.What)
	}
	fmt.Fprintf(w, "\n%d root rotations, %d SVIDs signed, %d chains verified, %d quiet spans skipped\n",
		r.RootRotations, r.SVIDsSigned, r.Verifications, r.FastForwards)
	if r.OK() {
		fmt.Fprintln(w, "no violations")
		return
	}
	for _, v := range r.Violations {
		fmt.Fprintf(w, "VIOLATION on day %.3f (%s): %s\n", v.Day, v.At.Format(time.RFC3339), v.Reason)
	}
}
