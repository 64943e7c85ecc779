package queue_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/shoal-dev/shoal/internal/testenv"
	"github.com/shoal-dev/shoal/queue"
)

// startHelper runs this test binary as a consumer process (see
// helperConsumer) and returns it.
func startHelper(t *testing.T, addr string, lease time.Duration, conc int) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "QUEUE_TEST_CONSUMER="+addr, "QUEUE_TEST_LEASE="+lease.String(),
		"QUEUE_TEST_CONCURRENCY="+strconv.Itoa(conc))
	if testing.Verbose() {
		cmd.Stderr = os.Stderr
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	return cmd
}

// Item 2: a consumer killed with kill -9 loses its lease and the task runs
// again elsewhere, counted as a retry with the reason.
func TestKilledConsumerLosesLease(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	const lease = 600 * time.Millisecond
	info := mustEnqueue(t, e.client, "block", nil)
	last := mustEnqueue(t, e.client, "block", nil, queue.MaxRetries(0)) // no retry left after a lost lease
	helper := startHelper(t, e.srv.Addr, lease, 2)
	testenv.Eventually(t, 10*time.Second, "the helper to start the tasks", func() bool {
		return e.rdb.Exists(ctx, "started:"+info.ID, "started:"+last.ID).Val() == 2
	})
	if got := e.get(t, info.ID); got.State != queue.Active || !strings.Contains(got.Owner, "#") || time.Until(got.LeaseUntil) <= 0 {
		t.Fatalf("running task: %+v", got)
	}
	// Leases are extended while the task runs: well past one lease, it is
	// still the helper's.
	time.Sleep(2 * lease)
	if got := e.get(t, info.ID); got.State != queue.Active || e.stats(t, "default").Recovered != 0 {
		t.Fatalf("after 2 leases of running: %+v, stats %+v", got, e.stats(t, "default"))
	}

	if err := helper.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	ran := make(chan *queue.Task, 1)
	mux := queue.NewServeMux()
	mux.HandleFunc("block", func(ctx context.Context, task *queue.Task) error {
		ran <- task
		return nil
	})
	e.consume(t, queue.ConsumerOptions{Lease: lease}, mux)
	select {
	case task := <-ran:
		if task.ID() != info.ID || task.Retried() != 1 {
			t.Errorf("rerun: id %s retried %d", task.ID(), task.Retried())
		}
		if since := time.Since(killed); since > lease+2*time.Second {
			t.Errorf("task ran again %v after the kill; lease is %v", since, lease)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the killed consumer's task never ran again")
	}
	testenv.Eventually(t, 5*time.Second, "one task done, one dead", func() bool {
		st := e.stats(t, "default")
		return st.Processed == 1 && st.Dead == 1
	})
	if st := e.stats(t, "default"); st.Recovered != 2 {
		t.Errorf("recovered = %d, want 2", st.Recovered)
	}
	if got := e.get(t, last.ID); got.State != queue.Dead || !strings.Contains(got.LastError, "lease expired") ||
		!strings.Contains(got.LastError, "no retries left") {
		t.Errorf("task without retries after its consumer died: %+v", got)
	}
}

// Item 2: a consumer that learns its lease was taken (here: the owner
// entry rewritten, as after an expiry and a re-fetch elsewhere) cancels
// the handler's ctx with ErrLeaseLost, and its late outcome is refused.
func TestLeaseLostCancelsHandler(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	started := make(chan string, 1)
	cause := make(chan error, 1)
	mux := queue.NewServeMux()
	mux.HandleFunc("long", func(ctx context.Context, task *queue.Task) error {
		started <- task.ID()
		<-ctx.Done()
		cause <- context.Cause(ctx)
		return nil // "done": must be refused
	})
	set := metrics.NewSet()
	e.consume(t, queue.ConsumerOptions{Lease: 300 * time.Millisecond, Metrics: set}, mux)
	info := mustEnqueue(t, e.client, "long", nil)
	<-started
	e.rdb.HSet(ctx, "shoal:q:{default}:owner", info.ID, "another-consumer#1")
	select {
	case err := <-cause:
		if !errors.Is(err, queue.ErrLeaseLost) {
			t.Errorf("cause %v, want ErrLeaseLost", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("handler not cancelled")
	}
	// The outcome was refused: the task is still active, owned by the other.
	testenv.Eventually(t, 5*time.Second, "the late outcome", func() bool { return metricValue(set, "shoal_queue_late_acks_total") == 1 })
	got := e.get(t, info.ID)
	if got.State != queue.Active || got.Owner != "another-consumer#1" {
		t.Errorf("after a refused outcome: %+v", got)
	}
	if v := metricValue(set, "shoal_queue_lease_lost_total"); v != 1 {
		t.Errorf("lease_lost_total = %v", v)
	}
}

// Lease extension keeps a long task from running twice.
func TestLongTaskRunsOnce(t *testing.T) {
	e := newEnv(t)
	var runs atomic.Int64
	mux := queue.NewServeMux()
	mux.HandleFunc("long", func(ctx context.Context, task *queue.Task) error {
		runs.Add(1)
		time.Sleep(2 * time.Second)
		return nil
	})
	// Two consumers with a 600ms lease: without extension the second would
	// take the task from the first.
	e.consume(t, queue.ConsumerOptions{Lease: 600 * time.Millisecond}, mux)
	e.consume(t, queue.ConsumerOptions{Lease: 600 * time.Millisecond}, mux)
	mustEnqueue(t, e.client, "long", nil)
	testenv.Eventually(t, 10*time.Second, "done", func() bool { return e.stats(t, "default").Processed == 1 })
	if n := runs.Load(); n != 1 {
		t.Errorf("ran %d times", n)
	}
	if st := e.stats(t, "default"); st.Recovered != 0 {
		t.Errorf("recovered %d", st.Recovered)
	}
}

// A consumer that stops gives back, at once and without counting a retry,
// the tasks it fetched but did not start, lets the running one finish, and
// gives back a handler's task that ignores its cancelled context.
func TestShutdownGivesTasksBack(t *testing.T) {
	e := newEnv(t)
	started := make(chan string, 10)
	mux := queue.NewServeMux()
	mux.HandleFunc("polite", func(ctx context.Context, task *queue.Task) error {
		started <- task.ID()
		select {
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
		}
		return nil
	})
	_, stop := e.consume(t, queue.ConsumerOptions{Concurrency: 1, Prefetch: 5}, mux)
	for range 6 {
		mustEnqueue(t, e.client, "polite", nil)
	}
	first := <-started
	testenv.Eventually(t, 5*time.Second, "the prefetched tasks leased", func() bool { return e.stats(t, "default").Active == 6 })
	stop()
	st := e.stats(t, "default")
	if st.Processed != 1 || st.Pending != 5 || st.Active != 0 || st.Recovered != 0 {
		t.Fatalf("after stop: %+v", st)
	}
	if _, err := e.insp.Get(context.Background(), first); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("the running task did not finish: %v", err)
	}
	pending, _ := e.insp.List(context.Background(), "default", queue.Pending, 0, 10)
	for _, p := range pending {
		if p.Retried != 0 {
			t.Errorf("given-back task %s counts %d retries", p.ID, p.Retried)
		}
	}

	// A handler that ignores its context past the shutdown timeout: its
	// task goes back to the queue for another consumer.
	e2 := newEnv(t)
	release := make(chan struct{})
	defer close(release)
	stubborn := queue.NewServeMux()
	stubborn.HandleFunc("stubborn", func(ctx context.Context, task *queue.Task) error {
		started <- task.ID()
		<-release
		return nil
	})
	_, stop2 := e2.consume(t, queue.ConsumerOptions{Concurrency: 1, ShutdownTimeout: 100 * time.Millisecond}, stubborn)
	id := mustEnqueue(t, e2.client, "stubborn", nil).ID
	for got := <-started; got != id; got = <-started {
	}
	stop2()
	if info := e2.get(t, id); info.State != queue.Pending || info.Retried != 0 {
		t.Errorf("abandoned task: %+v", info)
	}
}
