package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/shortleaf/shortleaf/pkg/config"
)

// logFlags are --log-level and --log-format of the long-running commands
// (server, agent, dev).
type logFlags struct {
	level  string
	format string
}

func (f *logFlags) register(cmd *cobra.Command, defaultLevel string) {
	cmd.Flags().StringVar(&f.level, "log-level", "", "debug, info, warn or error (default: the config's log_level, else "+defaultLevel+")")
	cmd.Flags().StringVar(&f.format, "log-format", "auto", "text, json, or auto: text when stderr is a terminal, else json")
}

// logger builds the logger; configured is the config file's level, used
// when --log-level is not given.
func (f *logFlags) logger(configured slog.Level) (*slog.Logger, error) {
	return f.loggerTo(os.Stderr, configured)
}

func (f *logFlags) loggerTo(w *os.File, configured slog.Level) (*slog.Logger, error) {
	level := configured
	if f.level != "" {
		l, err := config.ParseLogLevel(f.level)
		if err != nil {
			return nil, fmt.Errorf("--log-level: %q is not debug, info, warn or error", f.level)
		}
		level = l
	}
	return newLogger(w, level, f.format)
}

// newLogger writes logs to w at level, as text or JSON ("auto": text on a
// terminal, JSON otherwise, so log collectors get JSON).
func newLogger(w *os.File, level slog.Level, format string) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "auto", "":
		if isTerminal(w) {
			return slog.New(slog.NewTextHandler(w, opts)), nil
		}
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format: %q is not text, json or auto", format)
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
