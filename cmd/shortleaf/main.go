// Command shortleaf is the whole product in one binary: the server, the node
// agent, dev mode and the admin verbs. Each subcommand only parses flags and
// files and hands a typed config to the package that does the work.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRootCommand()
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "shortleaf:", err)
		os.Exit(1)
	}
}

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "shortleaf",
		Short:         "Short-lived SPIFFE identities for every workload",
		Long:          "shortleaf is an internal PKI that attests workloads and issues SPIFFE X.509-SVIDs that live for minutes.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(
		newServerCommand(),
		newAgentCommand(),
		newDevCommand(),
		newEntryCommand(),
		newTokenCommand(),
		newBundleCommand(),
		newX509Command(),
		newCACommand(),
		newJWTCommand(),
		newFederationCommand(),
		newHealthcheckCommand(),
	)
	return root
}

// newLogger writes JSON logs to stderr at level.
func newLogger(level slog.Level) *slog.Logger {
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}
