package e2e

import (
	"fmt"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/testenv"
)

// slack is how late after its route's deadline a response may come.
const slack = 500 * time.Millisecond

// TestKillWorkerUnderLoad (fault 7a): one of two echo worker processes is
// killed with SIGKILL while it holds requests. Every HTTP request still gets
// a response before its deadline; idempotent GETs held by the dead worker
// are re-dispatched to the other one (all 200); POSTs, which may not run
// twice, end in 200 or 502 worker_died and nothing else.
func TestKillWorkerUnderLoad(t *testing.T) {
	// Not parallel: a CPU-heavy load whose latencies are asserted.
	s := newStack(t, settings{})
	b := s.startBroker(0)
	fe := s.startFrontend()
	victim := s.startWorker("echo")
	survivor := s.startWorker("echo")
	s.waitWorkers(0, "echo", 2, 10*time.Second)
	host, _ := os.Hostname()
	victimProc := fmt.Sprintf("%s/%d", host, victim.Pid())

	const run = 4 * time.Second
	gets := startLoad(t, load{Name: "GET /echo", Method: "GET", URL: s.url("/echo?k=v"), Deadline: 2 * time.Second,
		Clients: 16, Duration: run, Max: 50000})
	posts := startLoad(t, load{Name: "POST /echo", Method: "POST", URL: s.url("/echo"), Body: []byte("payload"),
		Deadline: 2 * time.Second, Clients: 16, Duration: run, Max: 50000})

	// In the middle of the load, kill the victim while it holds requests.
	// An echo handler answers at once, so a running worker holds requests
	// only for microseconds at a time: freeze it first (SIGSTOP), let the
	// broker hand it requests it cannot answer, then SIGKILL it.
	time.Sleep(run / 3)
	victim.Signal(t, syscall.SIGSTOP)
	holding := 0
	testenv.Eventually(t, 2*time.Second, "the frozen victim worker to hold >= 10 requests", func() bool {
		st, err := s.stats(0)
		if err != nil {
			return false
		}
		for _, w := range st.Workers {
			if w.Process == victimProc {
				holding = w.InFlight
			}
		}
		return holding >= 10
	})
	killedAt := time.Now()
	victim.Kill9(t)
	t.Logf("killed %s (pid %d) holding %d requests", victim.name, victim.Pid(), holding)

	g, p := gets(), posts()
	t.Log(g.summary())
	t.Log(p.summary())

	for _, r := range []*report{g, p} {
		if late := r.late(slack); len(late) > 0 {
			t.Errorf("%s: %d of %d requests had no response within deadline %v + %v:%s",
				r.Name, len(late), len(r.Results), r.Deadline, slack, describe(late))
		}
	}
	var badGets []result
	for _, x := range g.Results {
		if x.Status != 200 {
			badGets = append(badGets, x)
		}
	}
	if len(badGets) > 0 {
		t.Errorf("GET /echo: %d requests not 200 (idempotent, 3 attempts: must be re-dispatched):%s", len(badGets), describe(badGets))
	}
	var badPosts []result
	died := 0
	for _, x := range p.Results {
		switch {
		case x.Status == 200:
		case x.Status == 502 && x.Code == "worker_died":
			died++
		default:
			badPosts = append(badPosts, x)
		}
	}
	if len(badPosts) > 0 {
		t.Errorf("POST /echo: %d requests neither 200 nor 502 worker_died:%s", len(badPosts), describe(badPosts))
	}
	afterKill := 0
	for _, x := range g.Results {
		if x.Start.After(killedAt) && x.Status == 200 {
			afterKill++
		}
	}
	if afterKill == 0 {
		t.Errorf("no GET succeeded after the kill")
	}

	st := s.mustStats(0)
	echo := service(st, "echo")
	t.Logf("broker: echo %+v; workers_died %d; POSTs answered worker_died: %d; GETs ok after the kill: %d",
		echo, st.WorkersDied, died, afterKill)
	if st.WorkersDied < 1 {
		t.Errorf("broker counted %d dead workers, want 1", st.WorkersDied)
	}
	if echo.Requeued == 0 {
		t.Errorf("broker requeued nothing: the victim held %d requests when killed; the GETs among them must be re-dispatched", holding)
	}
	if echo.Workers != 1 {
		t.Errorf("echo has %d workers after the kill, want 1 (the survivor)", echo.Workers)
	}
	if st.LateReplies != 0 {
		t.Errorf("late_replies %d, want 0", st.LateReplies)
	}
	requireAlive(t, b, fe, survivor)
}

// TestBrokerOutageRecovers (fault 7b): the only broker is killed with
// SIGKILL and stays down for 10s. Meanwhile the frontend answers 503 at
// once (it does not hang), and neither the frontend nor the worker process
// exits. A new broker process with the same config is started; within 2s of
// its /healthz answering, GET /echo answers 200 again, through the same
// frontend and worker processes.
func TestBrokerOutageRecovers(t *testing.T) {
	t.Parallel()
	s := newStack(t, settings{})
	b := s.startBroker(0)
	fe := s.startFrontend()
	w := s.startWorker("echo")
	s.waitWorkers(0, "echo", 1, 10*time.Second)
	fePid, wPid := fe.Pid(), w.Pid()
	if st, body, _ := s.get(s.url("/echo")); st != 200 {
		t.Fatalf("GET /echo before the outage: %d %s", st, body)
	}

	stop := make(chan struct{})
	halt := sync.OnceFunc(func() { close(stop) })
	wait := startLoad(t, load{Name: "GET /echo (light, across the outage)", Method: "GET", URL: s.url("/echo"),
		Deadline: 2 * time.Second, Clients: 2, Pace: 50 * time.Millisecond, Duration: 40 * time.Second, Max: 2000, Stop: stop})
	defer func() { halt(); wait() }()
	time.Sleep(500 * time.Millisecond) // some traffic before the outage

	const outage = 10 * time.Second
	killedAt := time.Now()
	b.Kill9(t)
	t.Logf("broker killed at %s", killedAt.Format("15:04:05.000"))

	// During the outage: readiness goes down, requests fail fast.
	testenv.Eventually(t, 3*time.Second, "frontend /readyz 503 without a broker", func() bool {
		st, _, _ := s.get("http://" + s.frontend + "/readyz")
		return st == 503
	})
	var worst time.Duration
	probes := 0
	for time.Since(killedAt) < outage-500*time.Millisecond {
		start := time.Now()
		st, body, _ := s.get(s.url("/echo"))
		el := time.Since(start)
		worst = max(worst, el)
		probes++
		if st != 503 {
			t.Errorf("GET /echo during the outage: %d %s, want 503", st, body)
		}
		if el > 500*time.Millisecond {
			t.Errorf("GET /echo during the outage took %v, want a fast 503", el)
		}
		requireAlive(t, fe, w)
		if t.Failed() {
			t.FailNow()
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("during the outage: %d probes, all 503, slowest %v", probes, worst.Round(time.Microsecond))
	time.Sleep(time.Until(killedAt.Add(outage)))

	restartAt := time.Now()
	nb := s.start("broker-b0-restarted", shoalBin, "broker", "-c", s.cfg, "--name", "b0")
	s.waitHealthy(nb, s.brokers[0])
	healthyAt := time.Now()
	var recovered time.Duration
	testenv.Eventually(t, 2*time.Second, "GET /echo 200 within 2s of the new broker's /healthz", func() bool {
		st, _, _ := s.get(s.url("/echo"))
		recovered = time.Since(healthyAt)
		return st == 200
	})
	t.Logf("GET /echo answered 200 %v after the new broker's /healthz (which came %v after its start; outage %v)",
		recovered.Round(time.Millisecond), healthyAt.Sub(restartAt).Round(time.Millisecond), healthyAt.Sub(killedAt).Round(time.Millisecond))
	if recovered > 2*time.Second {
		t.Errorf("recovery took %v, want < 2s after /healthz", recovered)
	}
	recoveredAt := healthyAt.Add(recovered)

	// Steady again: every request of the light load succeeds.
	time.Sleep(time.Second)
	halt()
	rep := wait()
	t.Log(rep.summary())
	var during, bad []result
	for _, x := range rep.Results {
		switch {
		case x.Start.Before(killedAt):
			// In flight at the kill: any answer, in time (checked below).
		case x.Start.Before(restartAt):
			during = append(during, x)
			if x.Status != 503 && x.Status != 504 {
				bad = append(bad, x)
			}
		case x.Start.Before(recoveredAt.Add(100 * time.Millisecond)):
			// The new broker is coming up: 503 or 200.
		default:
			if x.Status != 200 {
				bad = append(bad, x)
			}
		}
	}
	if late := rep.late(slack); len(late) > 0 {
		t.Errorf("%d requests without a response within deadline + %v:%s", len(late), slack, describe(late))
	}
	if len(bad) > 0 {
		t.Errorf("%d requests with the wrong status (503/504 during the outage, 200 after recovery):%s", len(bad), describe(bad))
	}
	t.Logf("light load: %d requests during the outage", len(during))

	if fe.Pid() != fePid || w.Pid() != wPid {
		t.Errorf("pids changed: frontend %d → %d, worker %d → %d", fePid, fe.Pid(), wPid, w.Pid())
	}
	requireAlive(t, fe, w, nb)
	if st := service(s.mustStats(0), "echo"); st.Workers != 1 {
		t.Errorf("new broker: echo has %d workers, want the old worker process re-registered", st.Workers)
	}
}
