package main

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/shortleaf/shortleaf/pkg/config"
)

// noArgsOrSuggest refuses arguments to a command group, naming the closest
// subcommand: "shortleaf entry lsit" → did you mean list?
func noArgsOrSuggest(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2 // cobra's own default, set only on its legacy path
	}
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += "; did you mean " + strings.Join(s, " or ") + "?"
	} else if cmd.HasAvailableSubCommands() {
		var names []string
		for _, c := range cmd.Commands() {
			if c.IsAvailableCommand() {
				names = append(names, c.Name())
			}
		}
		msg += "; try one of: " + strings.Join(names, ", ")
	}
	return errors.New(msg)
}

// versionInfo is what `shortleaf version` prints, from the build info Go
// embeds in every binary.
type versionInfo struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	CommitAt  string `json:"commit_time,omitempty"`
	Modified  bool   `json:"modified"`
	GoVersion string `json:"go_version"`
}

func readVersion() versionInfo {
	v := versionInfo{Version: "(unknown)", Commit: "(unknown)"}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	v.GoVersion = info.GoVersion
	if info.Main.Version != "" {
		v.Version = info.Main.Version
	}
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Commit = s.Value
		case "vcs.time":
			v.CommitAt = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	return v
}

func newVersionCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the module version, commit and Go version this binary was built from",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := readVersion()
			switch output {
			case "json":
				return writeJSON(cmd.OutOrStdout(), v)
			case "table":
			default:
				return fmt.Errorf("--output: %q is not table or json", output)
			}
			commit := v.Commit
			if v.Modified {
				commit += " (modified)"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "shortleaf %s\ncommit:  %s\n", v.Version, commit)
			if v.CommitAt != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "date:    %s\n", v.CommitAt)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "go:      %s\n", v.GoVersion)
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}

func newValidateCommand() *cobra.Command {
	var path, kind, output string
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Check a server or agent config file; print the first error and exit 1 if it is invalid",
		Long: "Check a server or agent config file as the server or agent would at start, without starting\n" +
			"it. The kind is told from the file (an agent config has server_address) unless --kind is given.\n" +
			"Secrets are not read: the key passphrase and an upstream authority's key are checked at start.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("--output: %q is not table or json", output)
			}
			if kind == "" {
				var err error
				if kind, err = configKind(path); err != nil {
					return err
				}
			}
			var err error
			switch kind {
			case "server":
				cfg, lerr := config.LoadServerSettings(path)
				if err = lerr; err == nil {
					err = config.ValidateRootSchedule(cfg)
				}
			case "agent":
				_, err = config.LoadAgent(path)
			default:
				return fmt.Errorf("--kind: %q is not server or agent", kind)
			}
			if output == "json" {
				res := map[string]any{"config": path, "kind": kind, "valid": err == nil}
				if err != nil {
					res["error"] = err.Error()
				}
				if werr := writeJSON(cmd.OutOrStdout(), res); werr != nil {
					return werr
				}
				if err != nil {
					return errSilentExit
				}
				return nil
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s config %s is valid\n", kind, path)
			return nil
		},
	}
	cmd.Flags().StringVar(&path, "config", "", "the config file to check")
	cmd.Flags().StringVar(&kind, "kind", "", "server or agent (default: told from the file)")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

// configKind tells an agent config (it names its server) from a server's.
func configKind(path string) (string, error) {
	raw, err := os.ReadFile(path) //nolint:gosec // an operator-chosen path
	if err != nil {
		return "", fmt.Errorf("config: %w", err)
	}
	var keys map[string]any
	if err := yaml.Unmarshal(raw, &keys); err != nil {
		return "", fmt.Errorf("config: %s: %w", path, err)
	}
	if _, ok := keys["server_address"]; ok {
		return "agent", nil
	}
	return "server", nil
}

// errSilentExit ends the command with status 1 when it has already printed
// what went wrong (as JSON).
var errSilentExit = errors.New("")
