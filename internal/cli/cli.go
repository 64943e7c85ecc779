// Package cli implements the subcommands of the shoal binary. Each
// subcommand reads shoal.yaml (-c), sets up logging from it and runs one
// component until SIGINT/SIGTERM: the first signal drains, a second forces
// the exit.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/shoal-dev/shoal/config"
)

// version is stamped by the Makefile from git describe.
var version = "dev"

// Exit codes tell a supervisor whether restarting can help.
const (
	exitOK      = 0
	exitFailure = 1 // runtime failure: a restart may help
	exitUsage   = 2 // bad command line
	exitConfig  = 3 // bad configuration: a restart will not help
)

type command struct {
	summary string
	run     func(args []string) int
}

// commands is filled by register calls in each file's init: a subcommand
// lives in one file and touches no other.
var commands = map[string]command{}

func register(name, summary string, run func(args []string) int) {
	if _, dup := commands[name]; dup {
		panic("cli: command registered twice: " + name)
	}
	commands[name] = command{summary, run}
}

func init() {
	register("broker", "run a broker (or: broker stats)", runBroker)
	register("frontend", "run the HTTP frontend", runFrontend)
	register("worker", "run an example worker: worker NAME", runWorker)
	register("check", "validate a config file and exit", runCheck)
	register("version", "print the version", func([]string) int { fmt.Println("shoal", version); return exitOK })
}

// Main runs the subcommand named by args[0] and returns the exit code.
func Main(args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(os.Stderr)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(os.Stderr, "shoal: unknown command %q\n\n", args[0])
		usage(os.Stderr)
		return exitUsage
	}
	return cmd.run(args[1:])
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: shoal COMMAND [-c shoal.yaml] [flags]")
	fmt.Fprintln(w, "\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].summary)
	}
}

// flags returns a FlagSet with the common -c flag.
func flags(name string) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("shoal "+name, flag.ContinueOnError)
	cfg := fs.String("c", "shoal.yaml", "config file")
	return fs, cfg
}

// load reads the config and sets up the default logger from it.
func load(path string) (*config.Config, int) {
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return nil, exitConfig
	}
	slog.SetDefault(newLogger(cfg.Log.Level, cfg.Log.Format))
	return cfg, exitOK
}

func newLogger(level, format string) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(strings.ToUpper(level)))
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// signalContext is cancelled by the first SIGINT or SIGTERM; a second one
// exits at once.
func signalContext() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-ch
		slog.Info("signal received; shutting down (send again to force)", "signal", s.String())
		cancel()
		s = <-ch
		slog.Warn("second signal; exiting now", "signal", s.String())
		os.Exit(exitFailure)
	}()
	return ctx, func() { signal.Stop(ch); cancel() }
}

func fail(err error) int {
	if err == nil || errors.Is(err, context.Canceled) {
		return exitOK
	}
	slog.Error(err.Error())
	return exitFailure
}

func runCheck(args []string) int {
	fs, path := flags("check")
	if fs.Parse(args) != nil {
		return exitUsage
	}
	if _, err := config.Load(*path); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return exitConfig
	}
	fmt.Printf("%s: ok\n", *path)
	return exitOK
}
