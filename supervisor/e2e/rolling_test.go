package e2e

import (
	"strings"
	"testing"
	"time"
)

// Item 7: under steady HTTP load through the frontend, `shoal ctl restart
// --rolling workers` replaces every worker, one at a time, each once its
// replacement is registered with the broker, and not one request fails:
// a worker being stopped drains its in-flight requests first.
func TestRollingRestartUnderLoadFailsNothing(t *testing.T) {
	s := newStack(t, `programs:
  - name: broker
    command: "{shoal} broker -c {config}"
    ready: {http: "http://127.0.0.1:{{Admin}}/healthz"}
  - name: echo
    group: workers
    command: "{shoal} worker echo -c {config}"
    numprocs: 3
    startsecs: 200ms
    depends_on: [broker]
    ready: {broker_service: echo}
  - name: frontend
    command: "{shoal} frontend -c {config}"
    depends_on: [echo]
    ready: {http: "http://127.0.0.1:{{Listen}}/readyz"}
`)
	s.start()
	before := s.waitRunning(30 * time.Second)

	stop := startLoad(s.url("/echo?rolling=1"), 8)
	time.Sleep(300 * time.Millisecond) // load before, during and after
	begin := time.Now()
	out, code := s.ctl("restart", "--rolling", "workers")
	took := time.Since(begin)
	time.Sleep(300 * time.Millisecond)
	res := stop()

	t.Logf("rolling restart of 3 workers took %v under load: %d requests ok, %d failed\n%s", took.Round(time.Millisecond), res.ok, res.failed, out)
	if code != 0 {
		t.Fatalf("shoal ctl restart --rolling workers: exit %d\n%s", code, out)
	}
	if res.failed != 0 {
		t.Errorf("%d requests failed during the rolling restart: %v", res.failed, res.errs)
	}
	if res.ok < 100 {
		t.Errorf("only %d requests succeeded: the load did not run", res.ok)
	}
	after := s.waitRunning(5 * time.Second)
	for _, n := range []string{"echo:0", "echo:1", "echo:2"} {
		if after[n].PID == before[n].PID || after[n].Restarts != 1 {
			t.Errorf("%s: pid %d → %d, restarts %d: not restarted once", n, before[n].PID, after[n].PID, after[n].Restarts)
		}
		if !strings.Contains(out, n+": RUNNING") {
			t.Errorf("ctl output lacks %s", n)
		}
	}
	for _, n := range []string{"broker:0", "frontend:0"} {
		if after[n].PID != before[n].PID {
			t.Errorf("%s was restarted by a rolling restart of the workers", n)
		}
	}
	// One at a time: each replacement was ready before the next stopped.
	if !(after["echo:0"].Ready.Before(after["echo:1"].Started) && after["echo:1"].Ready.Before(after["echo:2"].Started)) {
		t.Errorf("not one at a time: %+v", after)
	}
}
