package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/shoal-dev/shoal/supervisor"
)

func init() {
	register("supervisor", "run every program of the config and keep them up", runSupervisor)
}

// runSupervisor runs `shoal supervisor -c shoal.yaml`: the first SIGINT
// or SIGTERM stops every program in reverse dependency order, a second
// kills them; SIGHUP reloads the config.
func runSupervisor(args []string) int {
	fs, path := flags("supervisor")
	runDir := fs.String("run-dir", "", "run directory: control socket, logs, {run_dir} (default: supervisor.run_dir)")
	if fs.Parse(args) != nil {
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "shoal supervisor: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	cfg, code := load(*path)
	if cfg == nil {
		return code
	}
	if os.Getenv("GOGC") == "" {
		// The supervisor's live heap is well under 1 MB; Go's default lets
		// the heap reach 4 MB before its first collection. A quarter of
		// that keeps its resident memory small (item 3: ≤ 15 MB with 20
		// children) at a negligible cost in collections.
		debug.SetGCPercent(25)
	}
	sup, err := supervisor.New(supervisor.Options{Config: cfg, RunDir: *runDir, Logger: slog.Default(), TrimMemory: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return exitFailure
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		stopping := false
		for sig := range sigs {
			switch {
			case sig == syscall.SIGHUP:
				go func() {
					// The supervisor logs the outcome, problems included.
					_, _ = sup.Reload(context.Background())
				}()
			case !stopping:
				stopping = true
				slog.Info("signal received; stopping every program (send again to kill them now)", "signal", sig.String())
				cancel()
			default:
				slog.Warn("second signal; killing every program now", "signal", sig.String())
				sup.Kill()
			}
		}
	}()
	if err := sup.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return exitFailure
	}
	return exitOK
}
