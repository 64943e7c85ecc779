package supervisor

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/testenv"
)

// Item 1: numprocs instances NAME:INDEX, each with its index in
// SHOAL_INSTANCE and in its arguments ({index}, {index+N}), env from the
// supervisor and the program, and a working directory under the run dir
// that the supervisor creates.
func TestInstancesGetIndexEnvDirAndArgs(t *testing.T) {
	h := start(t, `supervisor:
  socket: @SOCKET@
  notify_brokers: false
  env: {Y: from-supervisor, X: overridden}
programs:
  - name: app
    numprocs: 3
    command: [/bin/sh, -c, 'echo "i=$SHOAL_INSTANCE p=$SHOAL_PROGRAM arg=$0 port=$1 x=$X y=$Y pwd=$(pwd)"; exec sleep 1000', "{index}", "{index+9000}"]
    env: {X: "x{index}"}
    dir: "{run_dir}/work"
    startsecs: 0s
brokers:
  - {name: b0, clients: "tcp://127.0.0.1:0", workers: "tcp://127.0.0.1:0"}
`)
	st := h.waitRunning(10 * time.Second)
	if len(st) != 3 {
		t.Fatalf("%d instances, want 3: %v", len(st), st)
	}
	work := filepath.Join(h.sup.RunDir(), "work")
	for i := range 3 {
		name := "app:" + strconv.Itoa(i)
		if st[name].PID == 0 {
			t.Errorf("%s has no pid", name)
		}
		want := fmt.Sprintf("i=%d p=app arg=%d port=%d x=x%d y=from-supervisor pwd=%s\n", i, i, 9000+i, i, work)
		file := File(filepath.Join(h.sup.RunDir(), "log"), "app", i, Stdout)
		testenv.Eventually(t, 5*time.Second, name+"'s output", func() bool {
			b, _ := os.ReadFile(file)
			return string(b) == want
		}, func() string { b, _ := os.ReadFile(file); return fmt.Sprintf("got %q, want %q", b, want) })
	}
}

// Item 1: autorestart always | on-failure | never, for instances that ran
// past startsecs.
func TestAutorestartPolicies(t *testing.T) {
	h := start(t, `programs:
  - {name: always, command: [/bin/sh, -c, "sleep 0.2; exit 0"], startsecs: 100ms}
  - {name: onfail-ok, command: [/bin/sh, -c, "sleep 0.2; exit 0"], startsecs: 100ms, autorestart: on-failure}
  - {name: onfail-bad, command: [/bin/sh, -c, "sleep 0.2; exit 3"], startsecs: 100ms, autorestart: on-failure}
  - {name: never, command: [/bin/sh, -c, "sleep 0.2; exit 3"], startsecs: 100ms, autorestart: never}
`)
	for _, name := range []string{"always:0", "onfail-bad:0"} {
		testenv.Eventually(t, 10*time.Second, name+" to be restarted twice", func() bool {
			s := h.status(name)
			return s.Restarts >= 2
		})
	}
	if s := h.status("always:0"); s.LastExit != "exit 0" {
		t.Errorf("always: last exit %q, want exit 0", s.LastExit)
	}
	if s := h.status("onfail-bad:0"); s.LastExit != "exit 3" {
		t.Errorf("onfail-bad: last exit %q, want exit 3", s.LastExit)
	}
	ok := h.waitState("onfail-ok:0", Exited, 10*time.Second)
	never := h.waitState("never:0", Exited, 10*time.Second)
	if ok.LastExit != "exit 0" || ok.Restarts != 0 || never.LastExit != "exit 3" || never.Restarts != 0 {
		t.Errorf("on-failure with 0: %+v\nnever with 3: %+v", ok, never)
	}
}

// Item 1: a start that dies before startsecs is retried with an
// exponential, capped backoff, startretries times; then FATAL, with the
// cause; then retried on the slow fatal_retry timer instead of staying
// dead.
func TestFailedStartsBackoffFatalAndSlowRetry(t *testing.T) {
	h := start(t, `supervisor:
  socket: @SOCKET@
  fatal_retry: 800ms
programs:
  - name: crash
    command: [/bin/sh, -c, 'date +%s%N >> {run_dir}/starts; echo "cannot open /etc/thing.conf" >&2; exit 1']
    startsecs: 1s
    startretries: 3
    backoff: 50ms
    backoff_max: 150ms
brokers:
  - {name: b0, clients: "tcp://127.0.0.1:0", workers: "tcp://127.0.0.1:0"}
`)
	fatal := h.waitState("crash:0", Fatal, 10*time.Second)
	for _, want := range []string{"exited too quickly (exit 1 after", "gave up after 4 failed starts in a row"} {
		if !strings.Contains(fatal.Info, want) {
			t.Errorf("FATAL info %q lacks %q", fatal.Info, want)
		}
	}
	if fatal.LastOutput != "cannot open /etc/thing.conf" {
		t.Errorf("last output %q, want the child's last line", fatal.LastOutput)
	}
	starts := func() []time.Time {
		b, _ := os.ReadFile(filepath.Join(h.sup.RunDir(), "starts"))
		var ts []time.Time
		for _, l := range strings.Fields(string(b)) {
			ns, _ := strconv.ParseInt(l, 10, 64)
			ts = append(ts, time.Unix(0, ns))
		}
		return ts
	}
	if n := len(starts()); n != 4 {
		t.Fatalf("%d starts before FATAL, want 4 (1 + startretries 3)", n)
	}
	// The slow retry: FATAL is not forever.
	testenv.Eventually(t, 10*time.Second, "the fatal_retry start", func() bool { return len(starts()) >= 5 })
	ts := starts()
	d := make([]time.Duration, len(ts)-1)
	for i := range d {
		d[i] = ts[i+1].Sub(ts[i])
	}
	t.Logf("gaps between starts: %v", d)
	// backoff 50ms, 100ms, then capped at 150ms, each ±20%, plus the
	// time a shell takes to start and exit (which a loaded host makes
	// longer, never shorter).
	if !(d[0] >= 40*time.Millisecond && d[1] >= 80*time.Millisecond && d[2] >= 120*time.Millisecond && d[2] < time.Second) {
		t.Errorf("retry gaps %v: want about 50ms, 100ms, 150ms (capped)", d[:3])
	}
	if d[3] < 750*time.Millisecond {
		t.Errorf("fatal_retry gap %v, want at least 800ms", d[3])
	}
}

// Item 3: an instance that dies after startsecs is replaced at once: no
// backoff, no polling interval. The gap from kill -9 to the replacement's
// start has a median within 20ms.
func TestFastRestartAfterStartsecs(t *testing.T) {
	h := start(t, `programs:
  - {name: s, command: sleep 1000, startsecs: 50ms}
`)
	const kills = 30
	var ext []time.Duration
	prev := h.waitState("s:0", Running, 5*time.Second)
	for i := range kills {
		// Up past startsecs, so that a death is not a failed start.
		time.Sleep(time.Until(prev.Started.Add(60 * time.Millisecond)))
		killed := time.Now()
		kill(t, prev.PID, syscall.SIGKILL)
		var next Status
		testenv.Eventually(t, 5*time.Second, "the replacement", func() bool {
			next = h.status("s:0")
			return next.PID != prev.PID && next.PID != 0
		})
		if next.State == Backoff || next.Restarts != prev.Restarts+1 || next.LastExit != "signal KILL" {
			t.Fatalf("kill %d: after %+v came %+v", i, prev, next)
		}
		ext = append(ext, next.Started.Sub(killed))
		prev = h.waitState("s:0", Running, 5*time.Second)
	}
	gaps := h.sup.Gaps()
	if len(gaps) != kills {
		t.Fatalf("%d gaps recorded, want %d", len(gaps), kills)
	}
	p50, p99 := percentile(gaps, 50), percentile(gaps, 99)
	e50, e99 := percentile(ext, 50), percentile(ext, 99)
	t.Logf("death→start gap over %d kills: seen by the supervisor p50 %v p99 %v; kill(2)→start p50 %v p99 %v", kills, p50, p99, e50, e99)
	if e50 > 20*time.Millisecond || p50 > 20*time.Millisecond {
		t.Errorf("median gap %v (kill→start %v), want ≤ 20ms", p50, e50)
	}
}

func percentile(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(0, min(len(s)-1, i-1))]
}

// Item 1: stopsignal, then SIGKILL after stopwaitsecs for a child that
// ignores it. Item 12: a child ignoring SIGTERM cannot hold a stop up.
func TestStopSignalAndStopWait(t *testing.T) {
	// Each child touches a marker once its trap is installed: a signal sent
	// before that would meet the shell's default action, not the trap.
	dir := t.TempDir()
	h := start(t, fmt.Sprintf(`programs:
  - name: stubborn
    command: [/bin/sh, -c, 'trap "" TERM; touch %[1]s/stubborn; while :; do sleep 0.05; done']
    startsecs: 0s
    stopwaitsecs: 300ms
  - name: polite
    command: [/bin/sh, -c, 'trap "exit 7" INT; touch %[1]s/polite; while :; do sleep 0.05; done']
    startsecs: 0s
    stopsignal: INT
`, dir))
	h.waitRunning(5 * time.Second)
	testenv.Eventually(t, 5*time.Second, "both traps installed", func() bool {
		_, err1 := os.Stat(filepath.Join(dir, "stubborn"))
		_, err2 := os.Stat(filepath.Join(dir, "polite"))
		return err1 == nil && err2 == nil
	})
	begin := time.Now()
	res, err := h.c.Stop(h.ctx(), []string{"stubborn"}, 0)
	took := time.Since(begin)
	if err != nil || len(res) != 1 || res[0].State != Stopped {
		t.Fatalf("stop stubborn: %+v, %v", res, err)
	}
	s := h.status("stubborn:0")
	if s.LastExit != "signal KILL" || took < 300*time.Millisecond || took > 3*time.Second {
		t.Errorf("stubborn stopped in %v with %q; want SIGKILL after stopwaitsecs 300ms", took, s.LastExit)
	}
	begin = time.Now()
	if _, err := h.c.Stop(h.ctx(), []string{"polite"}, 0); err != nil {
		t.Fatal(err)
	}
	if s := h.status("polite:0"); s.LastExit != "exit 7" || time.Since(begin) > 2*time.Second {
		t.Errorf("polite stopped in %v with %q; want exit 7 from its INT trap", time.Since(begin), s.LastExit)
	}
}

// Item 1: user switching when root; item 12: a bad user is a clear error
// naming the program and the cause.
func TestUser(t *testing.T) {
	h := start(t, `programs:
  - {name: nobody, command: [/bin/sh, -c, 'id -u; exec sleep 1000'], user: nobody, dir: /, startsecs: 0s}
  - {name: ghost, command: sleep 1000, user: no-such-user-x}
`)
	ghost := h.waitState("ghost:0", Fatal, 5*time.Second)
	if want := `cannot start: user "no-such-user-x": no such user on this host`; ghost.Info != want {
		t.Errorf("ghost: info %q, want %q", ghost.Info, want)
	}
	if os.Geteuid() != 0 {
		s := h.waitState("nobody:0", Fatal, 5*time.Second)
		if !strings.Contains(s.Info, "only root can run a program as another user") {
			t.Errorf("as uid %d, nobody: %q", os.Geteuid(), s.Info)
		}
		return
	}
	h.waitState("nobody:0", Running, 5*time.Second)
	file := File(filepath.Join(h.sup.RunDir(), "log"), "nobody", 0, Stdout)
	testenv.Eventually(t, 5*time.Second, "id -u's output", func() bool {
		b, _ := os.ReadFile(file)
		return string(b) == "65534\n"
	}, func() string { b, _ := os.ReadFile(file); return fmt.Sprintf("got %q", b) })
}

// Item 12: a missing command and a port already in use each get a clear
// error naming the program and the cause, and start nothing.
func TestMissingCommandAndPortInUse(t *testing.T) {
	port := testenv.FreePort(t)
	ln, err := listenTCP(port)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	h := start(t, fmt.Sprintf(`programs:
  - {name: missing, command: no-such-command-x --flag}
  - {name: relative, command: ./bin/nothing-here}
  - name: squatted
    command: sleep 1000
    ready: {tcp: "127.0.0.1:%d"}
    backoff: 10ms
    startretries: 1
`, port))
	missing := h.waitState("missing:0", Fatal, 5*time.Second)
	if want := `cannot start: command "no-such-command-x": not found in $PATH`; missing.Info != want {
		t.Errorf("missing: %q, want %q", missing.Info, want)
	}
	rel := h.waitState("relative:0", Fatal, 5*time.Second)
	if want := "cannot start: command " + filepath.Join(h.dir, "bin/nothing-here") + ": no such file or directory"; rel.Info != want {
		t.Errorf("relative: %q, want %q", rel.Info, want)
	}
	sq := h.waitState("squatted:0", Fatal, 5*time.Second)
	if want := fmt.Sprintf("cannot start: 127.0.0.1:%d is already in use by another process", port); !strings.HasPrefix(sq.Info, want) {
		t.Errorf("squatted: %q, want it to start with %q", sq.Info, want)
	}
	for _, s := range []Status{missing, rel, sq} {
		if s.PID != 0 || !s.Started.IsZero() {
			t.Errorf("%s started a process: %+v", s.Name, s)
		}
	}
	if log := h.logs.String(); !strings.Contains(log, `msg="program FATAL" name=missing:0 line=`) {
		t.Errorf("the supervisor's log does not name the FATAL program:\n%s", log)
	}
}

// Item 2: a readiness check that does not pass in time fails the start.
func TestReadyTimeoutFailsTheStart(t *testing.T) {
	port := testenv.FreePort(t)
	h := start(t, fmt.Sprintf(`programs:
  - name: deaf
    command: sleep 1000
    ready: {tcp: "127.0.0.1:%d", timeout: 300ms}
    startretries: 0
`, port))
	s := h.waitState("deaf:0", Fatal, 10*time.Second)
	if !strings.Contains(s.Info, "not ready: not ready within 300ms (last check: dial tcp 127.0.0.1:") || s.LastExit != "signal KILL" {
		t.Errorf("deaf: %+v", s)
	}
}
