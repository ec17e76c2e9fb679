package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/shortleaf/shortleaf/pkg/config"
)

// newAgentHealthcheckCommand asks a running agent's health listener (its
// metrics_address) whether it is ready, or with --live only alive: for
// container probes and scripts, exit 0 when it is.
func newAgentHealthcheckCommand() *cobra.Command {
	var configPath, addr string
	var live bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "healthcheck",
		Short: "Check that the agent is ready (exit 0), or with --live that it is running",
		Long: "Ask the agent's /readyz on its metrics_address: ready when it holds a valid agent SVID, synced with\n" +
			"the server within sync_deadline, and holds a valid X.509-SVID for every entry it serves. The reason is\n" +
			"printed when it is not. --live asks /healthz instead (the process is up).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if addr == "" {
				cfg, err := config.LoadAgent(configPath)
				if err != nil {
					return err
				}
				if cfg.MetricsAddr == "" {
					return fmt.Errorf("%s has no metrics_address: the agent serves /readyz there; set it, or give --address", configPath)
				}
				addr = cfg.MetricsAddr
			}
			path := "/readyz"
			if live {
				path = "/healthz"
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
			if err != nil {
				return fmt.Errorf("--address: %w", err)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return fmt.Errorf("agent at %s does not answer: %w", addr, errors.Unwrap(err))
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			msg := strings.TrimSpace(string(body))
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("agent is %s", msg)
			}
			if live {
				fmt.Fprintln(cmd.OutOrStdout(), "agent is running")
			} else {
				fmt.Fprintln(cmd.OutOrStdout(), "agent is ready")
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "agent.yaml", "the agent's config file, for its metrics_address")
	cmd.Flags().StringVar(&addr, "address", "", "host:port of the agent's health listener (default: metrics_address of --config)")
	cmd.Flags().BoolVar(&live, "live", false, "check only that the agent process answers (/healthz)")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "how long to wait for the answer")
	return cmd
}
