package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/shoal-dev/shoal/config"
	"github.com/shoal-dev/shoal/supervisor"
)

func init() {
	register("ctl", "control a running supervisor: ctl status|start|stop|restart|signal|tail|reload|wait", runCtl)
}

const ctlUsage = `usage: shoal ctl COMMAND [-c shoal.yaml] [flags] [NAME…]

NAME is NAME:INDEX (one instance), NAME (every instance of a program, or of
a group), GROUP:* or all.

commands:
  status [--json] [NAME…]           state, pid, uptime, restarts, last exit
  start NAME…                       start; waits until RUNNING (or FATAL)
  stop NAME…                        stop, dependents first; waits until stopped
  restart [--rolling] NAME…         stop and start; --rolling: one at a time,
                                    each once its replacement is ready
  signal SIGNAL NAME…               send SIGNAL (HUP, USR1, …) to each process
  tail [-f] [-n 20] [--stdout|--stderr] NAME…
                                    the last lines of the logs; -f follows
  reload                            re-read the config (same as SIGHUP)
  wait [NAME…]                      wait until every named instance is
                                    RUNNING; fails at the first FATAL one

flags (any command):
  -c FILE          config file, which names the control socket (default shoal.yaml)
  --socket PATH    the control socket, instead of the config's
  --run-dir DIR    as given to shoal supervisor --run-dir
  --timeout D      how long start, stop, restart and wait may take (default 2m)
  --json           print JSON
`

type ctlFlags struct {
	fs                      *flag.FlagSet
	config, socket, runDir  *string
	timeout                 *time.Duration
	asJSON, rolling, follow *bool
	lines                   *int
	stdoutOnly, stderrOnly  *bool
	positional              []string
	command                 string
}

// ctlValueFlags are the flags that take a value.
var ctlValueFlags = map[string]bool{"c": true, "socket": true, "run-dir": true, "timeout": true, "n": true}

func parseCtl(command string, args []string) (*ctlFlags, error) {
	f := &ctlFlags{command: command}
	fs := flag.NewFlagSet("shoal ctl "+command, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f.fs = fs
	f.config = fs.String("c", "shoal.yaml", "")
	f.socket = fs.String("socket", "", "")
	f.runDir = fs.String("run-dir", "", "")
	f.timeout = fs.Duration("timeout", 2*time.Minute, "")
	f.asJSON = fs.Bool("json", false, "")
	f.rolling = fs.Bool("rolling", false, "")
	f.follow = fs.Bool("f", false, "")
	f.lines = fs.Int("n", 20, "")
	f.stdoutOnly = fs.Bool("stdout", false, "")
	f.stderrOnly = fs.Bool("stderr", false, "")
	// Flags may come before, between or after the names.
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		f.positional = append(f.positional, args[0])
		args = args[1:]
	}
	return f, nil
}

func runCtl(args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(os.Stderr, ctlUsage)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	// The command may also follow flags: shoal ctl -c x.yaml status.
	at := -1
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			at = i
			break
		}
		if name := strings.TrimLeft(a, "-"); !strings.Contains(name, "=") && ctlValueFlags[name] {
			i++
		}
	}
	if at < 0 {
		fmt.Fprintf(os.Stderr, "shoal ctl: no command\n\n%s", ctlUsage)
		return exitUsage
	}
	command := args[at]
	f, err := parseCtl(command, append(args[:at:at], args[at+1:]...))
	if err != nil {
		fmt.Fprintf(os.Stderr, "shoal ctl %s: %v\n\n%s", command, err, ctlUsage)
		return exitUsage
	}
	socket := *f.socket
	if socket == "" {
		if socket, err = config.ControlSocket(*f.config, *f.runDir); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return exitConfig
		}
	}
	c := supervisor.NewClient(socket)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	needNames := func() bool {
		if len(f.positional) == 0 {
			fmt.Fprintf(os.Stderr, "shoal ctl %s: name what to %s: NAME, NAME:INDEX, GROUP:* or all\n", command, command)
			return false
		}
		return true
	}
	switch command {
	case "status":
		return ctlStatus(ctx, c, f)
	case "start", "stop", "restart":
		if !needNames() {
			return exitUsage
		}
		tctx, cancel := context.WithTimeout(ctx, *f.timeout)
		defer cancel()
		var res []supervisor.Result
		switch command {
		case "start":
			res, err = c.Start(tctx, f.positional, *f.timeout)
		case "stop":
			res, err = c.Stop(tctx, f.positional, *f.timeout)
		default:
			res, err = c.Restart(tctx, f.positional, *f.rolling, *f.timeout)
		}
		return printResults(f, command, res, err)
	case "signal":
		if len(f.positional) < 2 {
			fmt.Fprintln(os.Stderr, "shoal ctl signal: usage: shoal ctl signal SIGNAL NAME…")
			return exitUsage
		}
		if _, ok := supervisor.ParseSignal(f.positional[0]); !ok {
			fmt.Fprintf(os.Stderr, "shoal ctl signal: unknown signal %q\n", f.positional[0])
			return exitUsage
		}
		res, err := c.Signal(ctx, f.positional[0], f.positional[1:])
		return printResults(f, command, res, err)
	case "tail":
		if !needNames() {
			return exitUsage
		}
		o := supervisor.TailOptions{Names: f.positional, Lines: *f.lines, Follow: *f.follow}
		switch {
		case *f.stdoutOnly && *f.stderrOnly:
		case *f.stdoutOnly:
			o.Stream = supervisor.Stdout
		case *f.stderrOnly:
			o.Stream = supervisor.Stderr
		}
		if *f.lines == 0 {
			o.Lines = -1 // none
		}
		if err := c.Tail(ctx, os.Stdout, o); err != nil {
			return ctlFail(f, err)
		}
		return exitOK
	case "reload":
		res, err := c.Reload(ctx)
		if err != nil {
			var ae *supervisor.APIError
			if errors.As(err, &ae) && ae.Status == 422 {
				fmt.Fprintf(os.Stderr, "reload refused; nothing changed. The config has problems:\n%s\n", ae.Msg)
				return exitConfig
			}
			return ctlFail(f, err)
		}
		if *f.asJSON {
			printJSON(res)
			return exitOK
		}
		for _, l := range []struct {
			what  string
			names []string
		}{{"added", res.Added}, {"removed", res.Removed}, {"changed (restarted)", res.Changed}, {"resized", res.Resized}, {"unchanged", res.Unchanged}} {
			if len(l.names) > 0 {
				fmt.Printf("%s: %s\n", l.what, strings.Join(l.names, ", "))
			}
		}
		return exitOK
	case "wait":
		return ctlWait(ctx, c, f)
	}
	fmt.Fprintf(os.Stderr, "shoal ctl: unknown command %q\n\n%s", command, ctlUsage)
	return exitUsage
}

func ctlFail(f *ctlFlags, err error) int {
	fmt.Fprintf(os.Stderr, "shoal ctl %s: %v\n", f.command, err)
	if errors.Is(err, supervisor.ErrNotRunning) {
		fmt.Fprintf(os.Stderr, "is the supervisor running? start it with: shoal supervisor -c %s\n", *f.config)
	}
	return exitFailure
}

func printJSON(v any) {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func printResults(f *ctlFlags, command string, res []supervisor.Result, err error) int {
	if res == nil && err != nil {
		return ctlFail(f, err)
	}
	if *f.asJSON {
		printJSON(res)
	}
	code := exitOK
	for _, r := range res {
		if r.Error != "" {
			code = exitFailure
		}
		if *f.asJSON {
			continue
		}
		switch {
		case r.Error != "":
			fmt.Printf("%s: %s: %s\n", r.Name, r.State, r.Error)
		case r.PID > 0:
			fmt.Printf("%s: %s (pid %d)\n", r.Name, r.State, r.PID)
		default:
			fmt.Printf("%s: %s\n", r.Name, r.State)
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "shoal ctl %s: %v\n", command, err)
		code = exitFailure
	}
	return code
}

func ctlStatus(ctx context.Context, c *supervisor.Client, f *ctlFlags) int {
	st, err := c.Status(ctx, f.positional...)
	if err != nil {
		return ctlFail(f, err)
	}
	if *f.asJSON {
		printJSON(st)
		return exitOK
	}
	printStatus(os.Stdout, st)
	return exitOK
}

func printStatus(w io.Writer, st []supervisor.Status) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tPID\tUPTIME\tRESTARTS\tLAST EXIT\tINFO")
	for _, s := range st {
		pid, up := "-", "-"
		if s.PID > 0 {
			pid = fmt.Sprint(s.PID)
			up = uptime(time.Duration(s.UptimeMS) * time.Millisecond)
		}
		last := s.LastExit
		if last == "" {
			last = "-"
		}
		info := s.Info
		if s.LastOutput != "" && (s.State == supervisor.Fatal || s.State == supervisor.Backoff || s.State == supervisor.Exited) {
			if info != "" {
				info += "; "
			}
			info += "last output: " + s.LastOutput
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", s.Name, s.State, pid, up, s.Restarts, last, info)
	}
	tw.Flush()
}

// uptime formats d like "3d4h", "2h5m", "4m12s", "9.3s".
func uptime(d time.Duration) string {
	switch {
	case d >= 24*time.Hour:
		return fmt.Sprintf("%dd%dh", d/(24*time.Hour), (d%(24*time.Hour))/time.Hour)
	case d >= time.Hour:
		return fmt.Sprintf("%dh%dm", d/time.Hour, (d%time.Hour)/time.Minute)
	case d >= time.Minute:
		return fmt.Sprintf("%dm%ds", d/time.Minute, (d%time.Minute)/time.Second)
	}
	return fmt.Sprintf("%.1fs", d.Seconds())
}

// ctlWait polls until every named instance is RUNNING (or EXITED with
// status 0), waiting for the supervisor's socket to appear first: what a
// script runs after starting the supervisor.
func ctlWait(ctx context.Context, c *supervisor.Client, f *ctlFlags) int {
	ctx, cancel := context.WithTimeout(ctx, *f.timeout)
	defer cancel()
	var last []supervisor.Status
	var lastErr error
	for {
		st, err := c.Status(ctx, f.positional...)
		lastErr = err
		if err != nil && last != nil && errors.Is(err, supervisor.ErrNotRunning) {
			fmt.Fprintln(os.Stderr, "shoal ctl wait: the supervisor stopped")
			return exitFailure
		}
		if err == nil {
			last = st
			ready, fatal := true, []string{}
			for _, s := range st {
				switch {
				case s.State == supervisor.Running:
				case s.State == supervisor.Exited && s.LastExit == "exit 0":
				case s.State == supervisor.Fatal:
					fatal = append(fatal, s.Name)
					ready = false
				default:
					ready = false
				}
			}
			if len(fatal) > 0 {
				sort.Strings(fatal)
				fmt.Fprintf(os.Stderr, "shoal ctl wait: FATAL: %s\n", strings.Join(fatal, ", "))
				printStatus(os.Stderr, st)
				return exitFailure
			}
			if ready {
				return exitOK
			}
		} else {
			var ae *supervisor.APIError
			if errors.As(err, &ae) {
				return ctlFail(f, err)
			}
		}
		select {
		case <-ctx.Done():
			fmt.Fprintf(os.Stderr, "shoal ctl wait: not ready after %s\n", *f.timeout)
			if last != nil {
				printStatus(os.Stderr, last)
			} else if lastErr != nil {
				fmt.Fprintln(os.Stderr, lastErr)
			}
			return exitFailure
		case <-time.After(100 * time.Millisecond):
		}
	}
}
