package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/shortleaf/shortleaf/pkg/agent"
	"github.com/shortleaf/shortleaf/pkg/config"
	"github.com/shortleaf/shortleaf/pkg/devmode"
	"github.com/shortleaf/shortleaf/pkg/server"
	"github.com/shortleaf/shortleaf/pkg/telemetry"
)

func newServerCommand() *cobra.Command {
	var configPath string
	var lf logFlags
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the shortleaf server (the CA)",
		Long: "Run the shortleaf server: the CA, the agent API and the admin socket.\n" +
			"The CA key passphrase comes from key_passphrase_file or " + config.PassphraseEnv + ".",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, level, err := config.LoadServer(configPath, os.Getenv)
			if err != nil {
				return err
			}
			if cfg.Logger, err = lf.logger(level); err != nil {
				return err
			}
			cfg.Registry = telemetry.NewRegistry()
			srv, err := server.New(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			defer srv.Close()
			return srv.Run(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "server.yaml", "path to the server config file")
	lf.register(cmd, "info")
	return cmd
}

func newAgentCommand() *cobra.Command {
	var configPath, joinToken string
	var lf logFlags
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the node agent, or manage agents (list, show, evict)",
		Long: "Without a subcommand, run the node agent: attest to the server, keep SVIDs fresh\n" +
			"and serve the SPIFFE Workload API. With list, show or evict, manage agents on the server.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.LoadAgent(configPath)
			if err != nil {
				return err
			}
			if joinToken != "" {
				cfg.Agent.JoinToken = joinToken
			}
			logger, err := lf.logger(cfg.LogLevel)
			if err != nil {
				return err
			}
			reg := telemetry.NewRegistry()
			cfg.Agent.Logger, cfg.Agent.Registry = logger, reg
			ag, err := agent.New(cmd.Context(), cfg.Agent)
			if err != nil {
				return err
			}
			defer ag.Close()
			if cfg.MetricsAddr != "" {
				stop, err := serveMetrics(cfg.MetricsAddr, reg, ag.Ready, logger)
				if err != nil {
					return err
				}
				defer stop()
			}
			return ag.Run(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "agent.yaml", "path to the agent config file")
	cmd.Flags().StringVar(&joinToken, "join-token", "", "join token for the first attestation, or to attest again after an eviction (overrides join_token in the config)")
	lf.register(cmd, "info")
	cmd.AddCommand(newAgentAdminCommands()...)
	return cmd
}

// serveMetrics serves /metrics, /healthz and /readyz (ready) for the agent.
func serveMetrics(addr string, reg *prometheus.Registry, ready func() error, logger *slog.Logger) (func(), error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	srv := &http.Server{Handler: telemetry.Handler(reg, ready), ReadHeaderTimeout: 5 * time.Second}
	logger.Info("serving /metrics, /healthz and /readyz", slog.String("address", lis.Addr().String()))
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("metrics server stopped", slog.Any("error", err))
		}
	}()
	return func() { _ = srv.Close() }, nil
}

func newDevCommand() *cobra.Command {
	var cfg devmode.Config
	var verbose bool
	var lf logFlags
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a server and an agent in one process, for trying shortleaf out",
		Long: "Run a server and an agent in one process (trust domain example.org, keys unencrypted).\n" +
			"The invoking user is registered as spiffe://example.org/dev/<user> with selector unix:uid:<uid>.\n" +
			"Any go-spiffe client works against the printed SPIFFE_ENDPOINT_SOCKET. Stop with Ctrl-C.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			level := slog.LevelWarn
			if verbose {
				level = slog.LevelInfo
			}
			var err error
			if cfg.Logger, err = lf.logger(level); err != nil {
				return err
			}
			cfg.Out = cmd.OutOrStdout()
			return devmode.Run(cmd.Context(), cfg)
		},
	}
	cmd.Flags().StringVar(&cfg.DataDir, "data-dir", devmode.DefaultDataDir, "directory for the server's and agent's state")
	cmd.Flags().StringVar(&cfg.SocketPath, "socket", "", "Workload API socket path (default <data-dir>/agent.sock)")
	cmd.Flags().DurationVar(&cfg.X509SVIDTTL, "x509-svid-ttl", server.DefaultX509SVIDTTL, "X.509-SVID lifetime (1m to 24h)")
	cmd.Flags().DurationVar(&cfg.IntermediateTTL, "intermediate-ttl", 24*time.Hour, "intermediate CA (and JWT key) lifetime; at least twice the SVID TTL")
	cmd.Flags().StringVar(&cfg.StatusAddr, "status-address", devmode.DefaultStatusAddr, "where to serve the read-only status page (loopback; port 0 picks one), or off")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "log at info level instead of warn (same as --log-level info)")
	lf.register(cmd, "warn")
	return cmd
}
