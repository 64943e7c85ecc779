package cli

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/kardianos/service"

	"github.com/shoal-dev/shoal/config"
)

func init() {
	register("service", "install the supervisor as a system service: service install|uninstall|start|stop|restart|status", runService)
}

const serviceUsage = `usage: shoal service ACTION [-c shoal.yaml] [--name shoal] [--user USER] [--run-dir DIR] [--exe PATH]

actions: install, uninstall, start, stop, restart, status

install registers "shoal supervisor -c <absolute config path>" with the
host's service manager (systemd, else a SysV init script), to start at
boot; it does not start it. uninstall stops it first and removes
everything install wrote. The service's own stdout and stderr go to
<log_dir>/<name>.log and <name>.err.

--exe names the executable the service runs, as given: pass a symlink such
as /opt/shoal/current/shoal and a new release is a flip of the link and a
restart. Without it, the service runs this binary, symlinks resolved.

The service reads environment variables (SHOAL_REDIS_PASSWORD and the other
overrides of docs/configuration) from /etc/default/<name> when it exists,
one NAME=value per line: secrets stay out of shoal.yaml.
`

// svcProgram is the kardianos Interface. The service runs `shoal
// supervisor`, which handles its own signals, so it is never run through
// it.
type svcProgram struct{}

func (svcProgram) Start(service.Service) error { return nil }
func (svcProgram) Stop(service.Service) error  { return nil }

func runService(args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(os.Stderr, serviceUsage)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	action := args[0]
	fs, path := flags("service " + action)
	name := fs.String("name", "shoal", "service name")
	user := fs.String("user", "", "run the supervisor as this user (systemd only; default root)")
	runDir := fs.String("run-dir", "", "run directory, passed on to shoal supervisor --run-dir")
	exePath := fs.String("exe", "", "executable the service runs, kept as given (default: this binary, symlinks resolved)")
	if fs.Parse(args[1:]) != nil {
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "shoal service %s: unexpected argument %q\n", action, fs.Arg(0))
		return exitUsage
	}
	switch action {
	case "install", "uninstall", "start", "stop", "restart", "status":
	default:
		fmt.Fprintf(os.Stderr, "shoal service: unknown action %q\n\n%s", action, serviceUsage)
		return exitUsage
	}
	s, sc, code := newService(*path, *name, *user, *runDir, *exePath, action == "install")
	if s == nil {
		return code
	}
	platform := s.Platform()
	switch action {
	case "install":
		if err := s.Install(); err != nil {
			return serviceFail(action, *name, err)
		}
		fmt.Printf("installed service %s (%s): %s %s\n", *name, platform, sc.Executable, strings.Join(sc.Arguments, " "))
	case "uninstall":
		if st, err := s.Status(); err == nil && st == service.StatusRunning {
			if err := s.Stop(); err != nil {
				return serviceFail("stop", *name, err)
			}
		}
		if err := s.Uninstall(); err != nil {
			return serviceFail(action, *name, err)
		}
		if err := removeRCLinks(platform, *name); err != nil {
			return serviceFail(action, *name, err)
		}
		fmt.Printf("uninstalled service %s (%s)\n", *name, platform)
	case "start":
		if err := s.Start(); err != nil {
			return serviceFail(action, *name, err)
		}
		fmt.Printf("started service %s\n", *name)
	case "stop":
		if err := s.Stop(); err != nil {
			return serviceFail(action, *name, err)
		}
		fmt.Printf("stopped service %s\n", *name)
	case "restart":
		if err := s.Restart(); err != nil {
			return serviceFail(action, *name, err)
		}
		fmt.Printf("restarted service %s\n", *name)
	case "status":
		st, err := serviceStatus(s, platform, *name)
		if err != nil {
			return serviceFail(action, *name, err)
		}
		fmt.Printf("%s: %s (%s)\n", *name, st, platform)
		if st != "running" {
			return 3 // LSB: not running
		}
	}
	return exitOK
}

func serviceFail(action, name string, err error) int {
	fmt.Fprintf(os.Stderr, "shoal service %s %s: %v\n", action, name, err)
	return exitFailure
}

// newService builds the kardianos service for the config at path.
// Install needs a valid config; the other actions only its location.
func newService(path, name, user, runDir, exePath string, install bool) (service.Service, *service.Config, int) {
	abs, err := filepath.Abs(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return nil, nil, exitUsage
	}
	logDir := ""
	if install {
		cfg, err := config.Load(abs)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return nil, nil, exitConfig
		}
		logDir = cfg.LogDir()
		if runDir != "" && cfg.Supervisor.LogDir == "" {
			logDir = filepath.Join(absOr(runDir), "log")
		}
	}
	exe, err := serviceExecutable(exePath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "shoal service: %v\n", err)
		return nil, nil, exitFailure
	}
	argv := []string{"supervisor", "-c", abs}
	if runDir != "" {
		argv = append(argv, "--run-dir", absOr(runDir))
	}
	sc := &service.Config{
		Name:             name,
		DisplayName:      "Shoal (" + name + ")",
		Description:      "Shoal supervisor: runs the programs of " + abs,
		Executable:       exe,
		Arguments:        argv,
		WorkingDirectory: filepath.Dir(abs),
		UserName:         user,
		Option: service.KeyValue{
			"SysvScript":    sysvScript(name),
			"SystemdScript": systemdScript,
		},
	}
	if logDir != "" {
		sc.Option["LogDirectory"] = logDir
	}
	s, err := service.New(svcProgram{}, sc)
	if err != nil {
		fmt.Fprintf(os.Stderr, "shoal service: %v\n", err)
		return nil, nil, exitFailure
	}
	return s, sc, exitOK
}

// serviceExecutable is the absolute path the service runs: exePath kept as
// given (a release symlink must stay a symlink), or this binary.
func serviceExecutable(exePath string) (string, error) {
	if exePath == "" {
		exe, err := os.Executable()
		if err == nil {
			exe, err = filepath.EvalSymlinks(exe)
		}
		if err != nil {
			return "", fmt.Errorf("cannot find the shoal executable: %w", err)
		}
		return exe, nil
	}
	abs := absOr(exePath)
	fi, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("--exe: %w", err)
	}
	if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("--exe %s: not an executable file", abs)
	}
	return abs, nil
}

func absOr(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// serviceStatus is "running", "stopped" or "not installed". An LSB init
// script's status exits 3 when stopped, which kardianos reports as an
// error.
func serviceStatus(s service.Service, platform, name string) (string, error) {
	st, err := s.Status()
	switch {
	case errors.Is(err, service.ErrNotInstalled):
		return "not installed", nil
	case err == nil && st == service.StatusRunning:
		return "running", nil
	case err == nil && st == service.StatusStopped:
		return "stopped", nil
	}
	if platform == "unix-systemv" {
		if _, serr := os.Stat("/etc/init.d/" + name); serr != nil {
			return "not installed", nil
		}
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == 3 {
			return "stopped", nil
		}
	}
	if err != nil {
		return "", err
	}
	return "unknown", nil
}

// removeRCLinks removes the /etc/rcN.d links kardianos makes for a SysV
// service and leaves behind on uninstall.
func removeRCLinks(platform, name string) error {
	if platform != "unix-systemv" {
		return nil
	}
	links, _ := filepath.Glob("/etc/rc[0-6S].d/[SK][0-9][0-9]" + name)
	for _, l := range links {
		if err := os.Remove(l); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("cannot remove %s: %w", l, err)
		}
	}
	return nil
}

// sysvScript is the init script on hosts without systemd: LSB actions and
// exit codes, the supervisor in its own session with its output in the
// log directory, and a stop that waits for the supervisor to stop its
// programs (in reverse order, each within its stopwaitsecs).
func sysvScript(name string) string {
	return strings.ReplaceAll(`#!/bin/sh
### BEGIN INIT INFO
# Provides:          @NAME@
# Required-Start:    $network $local_fs $remote_fs
# Required-Stop:     $network $local_fs $remote_fs
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: {{DisplayName}}
# Description:       {{Description}}
### END INIT INFO

name=@NAME@
cmd="{{Path}}{{range Arguments}} {{. | cmd}}{{end}}"
pid_file="/var/run/$name.pid"
log_dir="{{LogDirectory}}"
stdout_log="$log_dir/$name.log"
stderr_log="$log_dir/$name.err"
stop_wait=120

if [ -r /etc/default/$name ]; then
    set -a
    . /etc/default/$name
    set +a
fi
{{range EnvVars}}{{.}}
{{end}}
is_running() {
    [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null
}

case "$1" in
    start)
        if is_running; then
            echo "Already running"
            exit 0
        fi
        {{if WorkingDirectory}}cd '{{WorkingDirectory}}' || exit 1{{end}}
        mkdir -p "$log_dir"
        if command -v setsid >/dev/null 2>&1; then
            setsid $cmd </dev/null >>"$stdout_log" 2>>"$stderr_log" &
        else
            $cmd </dev/null >>"$stdout_log" 2>>"$stderr_log" &
        fi
        echo $! >"$pid_file"
        sleep 0.2
        if ! is_running; then
            echo "Unable to start; see $stderr_log"
            rm -f "$pid_file"
            exit 1
        fi
        echo "Started $name"
        ;;
    stop)
        if ! is_running; then
            echo "Not running"
            rm -f "$pid_file"
            exit 0
        fi
        pid=$(cat "$pid_file")
        kill -TERM "$pid"
        i=0
        while kill -0 "$pid" 2>/dev/null; do
            i=$((i + 1))
            if [ "$i" -gt $((stop_wait * 10)) ]; then
                echo "Not stopped after ${stop_wait}s; killing it"
                kill -KILL "$pid"
                break
            fi
            sleep 0.1
        done
        rm -f "$pid_file"
        echo "Stopped"
        ;;
    reload|force-reload)
        is_running || { echo "Not running"; exit 7; }
        kill -HUP "$(cat "$pid_file")"
        ;;
    restart)
        "$0" stop
        "$0" start
        ;;
    status)
        if is_running; then
            echo "Running"
        else
            echo "Stopped"
            exit 3
        fi
        ;;
    *)
        echo "Usage: $0 {start|stop|restart|reload|status}"
        exit 2
        ;;
esac
exit 0
`, "@NAME@", name)
}

// systemdScript: SIGTERM to the supervisor alone (KillMode=mixed), which
// stops its programs in reverse order; SIGHUP reloads.
const systemdScript = `[Unit]
Description={{Description}}
ConditionFileIsExecutable={{Path | cmdEscape}}
After=network-online.target
Wants=network-online.target

[Service]
ExecStart={{Path | cmdEscape}}{{range Arguments}} {{. | cmd}}{{end}}
ExecReload=/bin/kill -HUP $MAINPID
EnvironmentFile=-/etc/default/{{Name}}
{{if WorkingDirectory}}WorkingDirectory={{WorkingDirectory | cmdEscape}}
{{end}}{{if UserName}}User={{UserName}}
{{end}}KillMode=mixed
TimeoutStopSec=150
Restart=always
RestartSec=1
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
`
