package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/supervisor"
)

func TestParseCtlFlagsAnywhere(t *testing.T) {
	f, err := parseCtl("restart", []string{"workers", "--rolling", "-c", "x.yaml", "api:1", "--timeout=5s"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(f.positional, []string{"workers", "api:1"}) || !*f.rolling || *f.config != "x.yaml" || *f.timeout != 5*time.Second {
		t.Errorf("parsed %+v rolling=%v config=%q timeout=%v", f.positional, *f.rolling, *f.config, *f.timeout)
	}
	if _, err := parseCtl("status", []string{"--nope"}); err == nil {
		t.Error("an unknown flag parsed")
	}
}

func TestCtlUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},                            // no command
		{"-c", "x.yaml"},              // flags, no command
		{"frobnicate", "--socket=/x"}, // unknown command
		{"stop", "--socket=/nonexistent.sock"},
		{"signal", "HUP", "--socket=/nonexistent.sock"},
		{"signal", "NOPE", "web", "--socket=/nonexistent.sock"},
		{"tail", "--socket=/nonexistent.sock"},
	} {
		if code := runCtl(args); code != exitUsage {
			t.Errorf("shoal ctl %q: exit %d, want %d", args, code, exitUsage)
		}
	}
	if code := runCtl([]string{"status", "--socket=/nonexistent.sock"}); code != exitFailure {
		t.Errorf("status without a supervisor: exit %d, want %d", code, exitFailure)
	}
	if code := runCtl([]string{"-c", "/nonexistent.yaml", "status"}); code != exitConfig {
		t.Errorf("status with a missing config: exit %d, want %d", code, exitConfig)
	}
}

func TestPrintStatus(t *testing.T) {
	var b bytes.Buffer
	printStatus(&b, []supervisor.Status{
		{Name: "web:0", State: supervisor.Running, PID: 42, UptimeMS: 3723000, Restarts: 2, LastExit: "signal KILL"},
		{Name: "db:0", State: supervisor.Fatal, Info: "exited too quickly (exit 1 after 3ms); gave up after 4 failed starts in a row", LastOutput: "port in use"},
		{Name: "job:0", State: supervisor.Stopped, Info: "waiting for db"},
	})
	want := `NAME   STATE    PID  UPTIME  RESTARTS  LAST EXIT    INFO
web:0  RUNNING  42   1h2m    2         signal KILL  
db:0   FATAL    -    -       0         -            exited too quickly (exit 1 after 3ms); gave up after 4 failed starts in a row; last output: port in use
job:0  STOPPED  -    -       0         -            waiting for db
`
	if b.String() != want {
		t.Errorf("status table:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestUptime(t *testing.T) {
	for d, want := range map[time.Duration]string{
		300 * time.Millisecond:         "0.3s",
		59 * time.Second:               "59.0s",
		4*time.Minute + 12*time.Second: "4m12s",
		2*time.Hour + 5*time.Minute:    "2h5m",
		75 * time.Hour:                 "3d3h",
	} {
		if got := uptime(d); got != want {
			t.Errorf("uptime(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestServiceTemplates(t *testing.T) {
	s := sysvScript("shoal-x")
	for _, want := range []string{"# Provides:          shoal-x", "name=shoal-x", `pid_file="/var/run/$name.pid"`, "setsid $cmd", "exit 3"} {
		if !strings.Contains(s, want) {
			t.Errorf("SysV script lacks %q", want)
		}
	}
	if !strings.Contains(s, "set -a\n    . /etc/default/$name") {
		t.Error("SysV script does not export /etc/default/$name")
	}
	for _, want := range []string{"KillMode=mixed", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=always", "EnvironmentFile=-/etc/default/{{Name}}"} {
		if !strings.Contains(systemdScript, want) {
			t.Errorf("systemd unit lacks %q", want)
		}
	}
	// --exe keeps a release symlink as given, so that flipping it and
	// restarting runs the new release.
	dir := t.TempDir()
	bin := filepath.Join(dir, "shoal-1")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "current")
	if err := os.Symlink(bin, link); err != nil {
		t.Fatal(err)
	}
	if exe, err := serviceExecutable(link); err != nil || exe != link {
		t.Errorf("serviceExecutable(%s) = %q, %v", link, exe, err)
	}
	if _, err := serviceExecutable(dir); err == nil {
		t.Error("serviceExecutable accepts a directory")
	}
	if _, err := serviceExecutable(filepath.Join(dir, "nope")); err == nil || !strings.Contains(err.Error(), "--exe") {
		t.Errorf("serviceExecutable of a missing file: %v", err)
	}
	if exe, err := serviceExecutable(""); err != nil || !filepath.IsAbs(exe) {
		t.Errorf("serviceExecutable default = %q, %v", exe, err)
	}
	if code := runService([]string{"frobnicate"}); code != exitUsage {
		t.Errorf("service frobnicate: exit %d", code)
	}
	if code := runService([]string{"install", "-c", "/nonexistent.yaml", "--name", "shoal-never"}); code != exitConfig {
		t.Errorf("service install with a missing config: exit %d", code)
	}
}
