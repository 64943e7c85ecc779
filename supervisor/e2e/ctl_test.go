package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/testenv"
	"github.com/shoal-dev/shoal/supervisor"
)

// Items 4, 5 and 6 from the command line: shoal ctl status (table and
// --json), start, stop, restart, signal, tail, reload (and SIGHUP), with
// their exit codes.
func TestCtlCommandLine(t *testing.T) {
	s := newStack(t, `programs:
  - {name: web, command: [/bin/sh, -c, 'trap "echo hup" HUP; echo web up; while :; do sleep 0.05; done'], startsecs: 0s}
  - {name: job, group: jobs, numprocs: 2, command: sleep 1000, startsecs: 0s}
  - {name: broken, command: /bin/false, startretries: 0}
`)
	s.start()
	testenv.Eventually(t, 10*time.Second, "web and job to run, broken to be FATAL", func() bool {
		st, err := s.c.Status(context.Background())
		if err != nil || len(st) != 4 {
			return false
		}
		return st[0].State == supervisor.Running && st[1].State == supervisor.Running && st[2].State == supervisor.Running && st[3].State == supervisor.Fatal
	})

	out, code := s.ctl("status")
	if code != 0 {
		t.Fatalf("status: exit %d\n%s", code, out)
	}
	for _, re := range []string{
		`(?m)^NAME +STATE +PID +UPTIME +RESTARTS +LAST EXIT +INFO$`,
		`(?m)^web:0 +RUNNING +\d+ +\d+\.\ds +0 +- *$`,
		`(?m)^job:1 +RUNNING +\d+ `,
		`(?m)^broken:0 +FATAL +- +- +0 +exit 1 +exited too quickly \(exit 1 after [^)]+\); gave up after 1 failed starts in a row$`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("status table does not match %s:\n%s", re, out)
		}
	}
	out, code = s.ctl("status", "--json", "jobs:*")
	var st []supervisor.Status
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st) != 2 || st[0].Name != "job:0" || st[0].UptimeMS <= 0 {
		t.Errorf("status --json jobs:*: exit %d\n%s", code, out)
	}
	if out, code = s.ctl("status", "nope"); code != 1 || !strings.Contains(out, `no program, instance or group is named "nope"`) {
		t.Errorf("status nope: exit %d\n%s", code, out)
	}
	if out, code = s.ctl("stop"); code != 2 {
		t.Errorf("stop without a name: exit %d\n%s", code, out)
	}

	if out, code = s.ctl("stop", "jobs"); code != 0 || !strings.Contains(out, "job:0: STOPPED\njob:1: STOPPED\n") {
		t.Errorf("stop jobs: exit %d\n%s", code, out)
	}
	if out, code = s.ctl("start", "job:1"); code != 0 || !regexp.MustCompile(`^job:1: RUNNING \(pid \d+\)\n$`).MatchString(out) {
		t.Errorf("start job:1: exit %d\n%s", code, out)
	}
	if out, code = s.ctl("start", "broken"); code != 1 || !strings.Contains(out, "broken:0: FATAL: exited too quickly") {
		t.Errorf("start broken: exit %d\n%s", code, out)
	}
	// "web up" comes after the trap: HUP before it would kill the shell.
	testenv.Eventually(t, 5*time.Second, "web's first line", func() bool {
		out, _ := s.ctl("tail", "-n", "1", "--stdout", "web")
		return out == "web up\n"
	})
	if out, code = s.ctl("signal", "HUP", "web"); code != 0 {
		t.Errorf("signal HUP web: exit %d\n%s", code, out)
	}
	testenv.Eventually(t, 5*time.Second, "web's HUP line", func() bool {
		out, _ := s.ctl("tail", "-n", "1", "--stdout", "web")
		return out == "hup\n"
	})
	if out, code = s.ctl("tail", "web:0"); code != 0 || out != "==> web:0 stdout <==\nweb up\nhup\n\n==> web:0 stderr <==\n" {
		t.Errorf("tail web:0: exit %d\n%q", code, out)
	}
	// tail -f follows until interrupted.
	f := exec.Command(shoalBin, "ctl", "tail", "-f", "-n", "0", "web", "-c", s.file)
	fout := &testenv.SyncBuffer{}
	f.Stdout = fout
	if err := f.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the follower subscribes; the HUPs below repeat until seen
	testenv.Eventually(t, 5*time.Second, "tail -f to show new output", func() bool {
		s.ctl("signal", "HUP", "web")
		time.Sleep(50 * time.Millisecond)
		return strings.Contains(fout.String(), "hup")
	})
	f.Process.Signal(syscall.SIGINT)
	if err := f.Wait(); err != nil {
		t.Errorf("tail -f after SIGINT: %v", err)
	}

	webPID := func() int {
		st, _ := s.c.Status(context.Background(), "web")
		return st[0].PID
	}
	oldWeb := webPID()
	if out, code = s.ctl("restart", "web"); code != 0 || webPID() == oldWeb {
		t.Errorf("restart web: exit %d\n%s", code, out)
	}

	// Reload: a broken file is refused with file:line and exit 3; SIGHUP
	// reloads as shoal ctl reload does.
	good, _ := os.ReadFile(s.file)
	bad := strings.Replace(string(good), "numprocs: 2", "numprocs: 0", 1)
	os.WriteFile(s.file, []byte(bad), 0o644)
	out, code = s.ctl("reload")
	if code != 3 || !strings.Contains(out, "reload refused; nothing changed") || !strings.Contains(out, s.file+":15:") ||
		!strings.Contains(out, "programs[1].numprocs: must be positive, got 0") {
		t.Errorf("reload of a broken file: exit %d\n%s", code, out)
	}
	grown := strings.Replace(string(good), "numprocs: 2", "numprocs: 3", 1)
	os.WriteFile(s.file, []byte(grown), 0o644)
	s.cmd.Process.Signal(syscall.SIGHUP)
	testenv.Eventually(t, 5*time.Second, "job:2 after SIGHUP", func() bool {
		st, err := s.c.Status(context.Background(), "job:2")
		return err == nil && len(st) == 1 && st[0].State == supervisor.Running
	})
	if webPID() == 0 {
		t.Error("web stopped on reload")
	}
	os.WriteFile(s.file, good, 0o644)
	if out, code = s.ctl("reload"); code != 0 || out != "resized: job\nunchanged: web, broken\n" {
		t.Errorf("reload: exit %d\n%q", code, out)
	}
}

// Item 12: a config with a dependency cycle (or any problem) stops the
// supervisor before it starts anything, with exit code 3 and the cycle
// named at its file:line.
func TestBadConfigIsRefused(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "shoal.yaml")
	os.WriteFile(file, []byte(`brokers:
  - {name: b0, clients: "tcp://127.0.0.1:0", workers: "tcp://127.0.0.1:0"}
programs:
  - {name: web, command: sleep 1, depends_on: [api]}
  - {name: api, command: sleep 1, depends_on: [db]}
  - {name: db, command: sleep 1, depends_on: [web]}
  - {name: worker, command: sleep 1, depends_on: [queue]}
`), 0o644)
	cmd := exec.Command(shoalBin, "supervisor", "-c", file)
	out, err := cmd.CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 3 {
		t.Fatalf("shoal supervisor with a cycle: %v\n%s", err, out)
	}
	want := file + `:4:47: programs[0].depends_on: dependency cycle: web → api → db → web
` + file + `:7:51: programs[3].depends_on[0]: no program is named "queue"
`
	if string(out) != want {
		t.Errorf("output:\n%s\nwant:\n%s", out, want)
	}
	if _, err := os.Stat(filepath.Join(dir, "run")); !os.IsNotExist(err) {
		t.Errorf("a refused config created the run dir: %v", err)
	}
}
