package supervisor

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/testenv"
)

// Item 12: a child that floods its output cannot take the supervisor
// down or make it unresponsive, and its logs stay within the rotation
// bounds.
func TestFloodingChildKeepsSupervisorResponsive(t *testing.T) {
	h := start(t, `supervisor:
  socket: @SOCKET@
  log_max_size: 1MiB
  log_keep: 1
programs:
  - {name: flood, command: yes flood-flood-flood-flood-flood-flood-flood-flood, startsecs: 0s}
  - {name: calm, command: sleep 1000, startsecs: 0s}
brokers:
  - {name: b0, clients: "tcp://127.0.0.1:0", workers: "tcp://127.0.0.1:0"}
`)
	h.waitRunning(5 * time.Second)
	logDir := filepath.Join(h.sup.RunDir(), "log")
	var worst time.Duration
	deadline := time.Now().Add(1500 * time.Millisecond)
	calls := 0
	for time.Now().Before(deadline) {
		begin := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := h.c.Status(ctx)
		cancel()
		if err != nil || len(st) != 2 {
			t.Fatalf("status while flooding: %v, %v", st, err)
		}
		worst = max(worst, time.Since(begin))
		calls++
		time.Sleep(20 * time.Millisecond)
	}
	files, _ := filepath.Glob(filepath.Join(logDir, "flood.0.stdout*.log"))
	var total int64
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil {
			total += fi.Size()
		}
	}
	t.Logf("%d status calls while flooding, slowest %v; %d log files, %d bytes", calls, worst, len(files), total)
	if worst > time.Second {
		t.Errorf("a status call took %v while a child flooded its output", worst)
	}
	begin := time.Now()
	if _, err := h.c.Stop(h.ctx(), []string{"flood"}, 0); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(begin); took > 3*time.Second {
		t.Errorf("stopping the flood took %v", took)
	}
	// Old files are removed in the background (lumberjack's mill).
	testenv.Eventually(t, 5*time.Second, "the current log file and at most 1 rotated", func() bool {
		files, _ = filepath.Glob(filepath.Join(logDir, "flood.0.stdout*.log"))
		return len(files) >= 1 && len(files) <= 2
	}, func() string { return fmt.Sprint(files) })
	for _, f := range files {
		if fi, err := os.Stat(f); err != nil || fi.Size() > 1<<20 {
			t.Errorf("%s: %d bytes, over log_max_size", f, fi.Size())
		}
	}
	if s := h.status("calm:0"); s.State != Running || s.Restarts != 0 {
		t.Errorf("calm: %+v", s)
	}
}

// Item 9 and 12: what a child forks stays in its process group and dies
// with it; a grandchild that escapes to its own session and keeps the
// output pipe open does not hold up the child's replacement.
func TestChildrenThatFork(t *testing.T) {
	h := start(t, `programs:
  - name: forker
    command: [/bin/sh, -c, 'sleep 1000 & echo $! > {run_dir}/grandchild; sleep 0.3; exit 1']
    startsecs: 100ms
    autorestart: never
  - name: escaper
    command: [/bin/sh, -c, 'setsid sleep 1000 & echo $! >> {run_dir}/escaped; sleep 0.3; exit 0']
    startsecs: 100ms
`)
	run := h.sup.RunDir()
	t.Cleanup(func() {
		b, _ := os.ReadFile(filepath.Join(run, "escaped"))
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	s := h.waitState("forker:0", Exited, 5*time.Second)
	if s.LastExit != "exit 1" {
		t.Errorf("forker: %+v", s)
	}
	b, err := os.ReadFile(filepath.Join(run, "grandchild"))
	if err != nil {
		t.Fatal(err)
	}
	gc, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	testenv.Eventually(t, 2*time.Second, "the grandchild to die with its group", func() bool { return !alive(gc) })

	// The escaped grandchild keeps escaper's stdout open; the supervisor
	// does not wait for that pipe, so replacements come on time.
	testenv.Eventually(t, 10*time.Second, "escaper's third start", func() bool { return h.status("escaper:0").Restarts >= 3 })
	for _, d := range h.sup.Gaps() {
		if d > 500*time.Millisecond {
			t.Errorf("a restart took %v after escaper's death", d)
		}
	}
}

// Item 12: a child that exits in a tight loop ends FATAL after its start
// retries; the supervisor stays up and responsive.
func TestTightLoop(t *testing.T) {
	h := start(t, `programs:
  - {name: spin, command: /bin/true, startretries: 5, backoff: 10ms, backoff_max: 20ms}
  - {name: calm, command: sleep 1000, startsecs: 0s}
`)
	s := h.waitState("spin:0", Fatal, 5*time.Second)
	if s.Restarts != 5 || !strings.Contains(s.Info, "gave up after 6 failed starts in a row") {
		t.Errorf("spin: %+v", s)
	}
	if c := h.status("calm:0"); c.State != Running || c.Restarts != 0 {
		t.Errorf("calm: %+v", c)
	}
}
