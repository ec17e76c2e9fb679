// Command shortleaf is the whole product in one binary: the server, the node
// agent, dev mode and the admin verbs. Each subcommand only parses flags and
// files and hands a typed config to the package that does the work.
package main

import (
	"context"
	"errors"
	"fmt"
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
		if !errors.Is(err, errSilentExit) {
			fmt.Fprintln(os.Stderr, "shortleaf:", err)
		}
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
		newAuditCommand(),
		newDatastoreCommand(),
		newHealthcheckCommand(),
		newAPICommand(),
		newValidateCommand(),
		newVersionCommand(),
	)
	suggestSubcommands(root)
	return root
}

// suggestSubcommands makes every command group refuse an unknown or
// misspelled subcommand with exit status 1 and the closest name, where cobra
// would print the group's help and exit 0 (or, at the root, a multi-line
// message).
func suggestSubcommands(cmd *cobra.Command) {
	if cmd.HasSubCommands() {
		cmd.Args = noArgsOrSuggest
		if cmd.Run == nil && cmd.RunE == nil {
			cmd.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
		}
	}
	for _, c := range cmd.Commands() {
		suggestSubcommands(c)
	}
}
