package queue_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/shoal-dev/shoal/internal/testenv"
	"github.com/shoal-dev/shoal/queue"
)

// runLog counts the runs of each task id.
type runLog struct {
	mu   sync.Mutex
	runs map[string]int
}

func newRunLog() *runLog { return &runLog{runs: make(map[string]int)} }

func (l *runLog) add(id string) {
	l.mu.Lock()
	l.runs[id]++
	l.mu.Unlock()
}

func (l *runLog) count(id string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.runs[id]
}

// Item 6: redis-server restarts in the middle of a stream of enqueues and
// consumes; no acknowledged enqueue is lost and every task runs.
func TestRedisRestartLosesNothing(t *testing.T) {
	for _, c := range []struct {
		name  string
		extra []string
		kill  bool
	}{
		// The configuration Shoal runs Redis with: AOF, fsync every
		// second. A SIGTERM'd Redis fsyncs before it exits.
		{name: "restart", extra: nil},
		// A crash (kill -9) with fsync on every write: nothing that was
		// acknowledged can be lost.
		{name: "kill9-fsync-always", extra: []string{"--appendfsync", "always"}, kill: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, c.extra...)
			log := newRunLog()
			mux := queue.NewServeMux()
			mux.HandleFunc("w", func(ctx context.Context, task *queue.Task) error {
				log.add(task.ID())
				return nil
			})
			set := metrics.NewSet()
			e.consume(t, queue.ConsumerOptions{Concurrency: 8, Lease: time.Second, Metrics: set}, mux)

			var acked []string
			var refused atomic.Int64
			stop := make(chan struct{})
			done := make(chan struct{})
			go func() {
				defer close(done)
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					ctx, cancel := context.WithTimeout(context.Background(), time.Second)
					info, err := e.client.Enqueue(ctx, queue.NewRawTask("w", []byte(strconv.Itoa(i))))
					cancel()
					if err != nil {
						refused.Add(1)
						time.Sleep(5 * time.Millisecond)
						continue
					}
					acked = append(acked, info.ID)
				}
			}()
			count := func() int { return int(metricValue(set, `shoal_queue_processed_total{queue="default"}`)) }
			testenv.Eventually(t, 20*time.Second, "500 tasks processed", func() bool { return count() >= 500 })
			if c.kill {
				e.srv.Kill()
				e.srv.StartAgain(t)
			} else {
				e.srv.Restart(t)
			}
			before := count()
			testenv.Eventually(t, 30*time.Second, "500 more tasks processed after the restart", func() bool { return count() >= before+500 })
			close(stop)
			<-done

			ran := func() bool {
				for _, id := range acked {
					if log.count(id) == 0 {
						return false
					}
				}
				return true
			}
			testenv.Eventually(t, 30*time.Second, "every acknowledged task to run", ran)
			dups := 0
			for _, id := range acked {
				dups += log.count(id) - 1
			}
			t.Logf("%d acknowledged enqueues, %d refused while Redis was down, all ran; %d ran twice (at least once)",
				len(acked), refused.Load(), dups)
			if refused.Load() == 0 {
				t.Error("no enqueue was refused: did Redis restart?")
			}
			testenv.Eventually(t, 10*time.Second, "queue empty", func() bool {
				st := e.stats(t, "default")
				return st.Pending == 0 && st.Active == 0 && st.Retry == 0
			})
			checkInvariants(t, e)
		})
	}
}

// Item 7: with the consumer stopped, 50,000 tasks are enqueued; the
// consumer comes back and runs every one of them, none lost and none twice.
func TestCatchUp50k(t *testing.T) {
	const n = 50000
	e := newEnv(t)
	ctx := context.Background()
	runs := make([]atomic.Int32, n)
	mux := queue.NewServeMux()
	mux.HandleFunc("catchup", func(ctx context.Context, task *queue.Task) error {
		i, err := strconv.Atoi(string(task.Payload()))
		if err != nil {
			return fmt.Errorf("%w: %v", queue.SkipRetry, err)
		}
		runs[i].Add(1)
		return nil
	})
	// The consumer serves a while, then stops: the tasks come after.
	_, stop := e.consume(t, queue.ConsumerOptions{Concurrency: 20}, mux)
	stop()

	start := time.Now()
	tasks := make([]*queue.Task, 0, 1000)
	for i := 0; i < n; i++ {
		tasks = append(tasks, queue.NewRawTask("catchup", []byte(strconv.Itoa(i))))
		if len(tasks) == cap(tasks) {
			res, err := e.client.EnqueueBatch(ctx, tasks)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range res {
				if r.Err != nil {
					t.Fatal(r.Err)
				}
			}
			tasks = tasks[:0]
		}
	}
	enq := time.Since(start)
	if st := e.stats(t, "default"); st.Pending != n {
		t.Fatalf("pending %d after enqueueing %d", st.Pending, n)
	}

	start = time.Now()
	set := metrics.NewSet()
	e.consume(t, queue.ConsumerOptions{Concurrency: 20, Metrics: set}, mux)
	testenv.Eventually(t, 100*time.Second, "all processed", func() bool { return e.stats(t, "default").Processed == n })
	took := time.Since(start)
	missing, twice := 0, 0
	for i := range runs {
		switch r := runs[i].Load(); {
		case r == 0:
			missing++
		case r > 1:
			twice += int(r) - 1
		}
	}
	recovered := e.stats(t, "default").Recovered
	t.Logf("enqueued %d in %v (batches of 1000), processed in %v (%.0f/s); missing %d, duplicates %d, recovered leases %d",
		n, enq.Round(time.Millisecond), took.Round(time.Millisecond), float64(n)/took.Seconds(), missing, twice, recovered)
	if missing != 0 {
		t.Errorf("%d tasks never ran", missing)
	}
	// At least once: a task runs twice only when its lease was recovered,
	// which the stats count. Nothing crashed here, so none.
	if int64(twice) > recovered || twice != 0 {
		t.Errorf("%d duplicate runs, %d recovered leases", twice, recovered)
	}
	if late := metricValue(set, "shoal_queue_late_acks_total"); late != 0 {
		t.Errorf("late acks: %v", late)
	}
	checkInvariants(t, e)
}

// Item 5: every state change is atomic, so whatever happens — failures,
// retries, expired leases of a consumer killed mid-run, replays — each
// task is in exactly one place, and that place agrees with its hash.
func TestStateInvariantsUnderChaos(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	// A consumer process that is killed with tasks in hand.
	helper := startHelper(t, e.srv.Addr, 400*time.Millisecond, 16)

	log := newRunLog()
	mux := queue.NewServeMux()
	mux.HandleFunc("fast", func(ctx context.Context, task *queue.Task) error {
		log.add(task.ID())
		switch r := rand.IntN(10); {
		case r == 0:
			return fmt.Errorf("gave up: %w", queue.SkipRetry)
		case r < 3:
			return fmt.Errorf("transient")
		}
		return nil
	})
	retry := func(int, error, *queue.Task) time.Duration { return time.Duration(rand.IntN(30)) * time.Millisecond }

	var ids []string
	for round := range 5 {
		tasks := make([]*queue.Task, 200)
		for i := range tasks {
			var opts []queue.Option
			if i%7 == 0 {
				opts = append(opts, queue.ProcessIn(time.Duration(rand.IntN(200))*time.Millisecond))
			}
			if i%11 == 0 {
				opts = append(opts, queue.Retention(time.Minute))
			}
			tasks[i] = queue.NewRawTask("fast", nil, append(opts, queue.MaxRetries(3))...)
		}
		res, err := e.client.EnqueueBatch(ctx, tasks)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range res {
			ids = append(ids, r.Info.ID)
		}
		if round == 1 {
			// The helper holds some tasks; kill it mid-run.
			testenv.Eventually(t, 10*time.Second, "helper to run tasks", func() bool { return e.rdb.LLen(ctx, "runs").Val() > 0 })
			helper.Process.Signal(syscall.SIGKILL)
			e.consume(t, queue.ConsumerOptions{Concurrency: 8, Lease: 400 * time.Millisecond, RetryDelay: retry}, mux)
			e.consume(t, queue.ConsumerOptions{Concurrency: 8, Lease: 400 * time.Millisecond, RetryDelay: retry}, mux)
		}
		if round == 3 {
			if _, err := e.insp.ReplayAll(ctx, "default"); err != nil {
				t.Fatal(err)
			}
		}
	}
	testenv.Eventually(t, 30*time.Second, "every task done or dead", func() bool {
		st := e.stats(t, "default")
		return st.Pending == 0 && st.Active == 0 && st.Scheduled == 0 && st.Retry == 0
	})
	checkInvariants(t, e)
	helperRuns := e.rdb.LRange(ctx, "runs", 0, -1).Val()
	for _, id := range helperRuns {
		log.add(id)
	}
	for _, id := range ids {
		if log.count(id) == 0 {
			t.Errorf("task %s never ran", id)
		}
	}
	st := e.stats(t, "default")
	t.Logf("%d tasks: %d runs by the killed helper, %d done, %d dead, %d retried, %d leases recovered",
		len(ids), len(helperRuns), st.Processed, st.Dead, st.Retried, st.Recovered)
	if st.Processed+st.Dead != int64(len(ids)) {
		t.Errorf("done %d + dead %d != %d tasks", st.Processed, st.Dead, len(ids))
	}
}

// checkInvariants scans every key of the queue and checks that each task
// is in exactly one place, the one its hash says.
func checkInvariants(t *testing.T, e *env) {
	t.Helper()
	ctx := context.Background()
	where := map[string][]string{} // id → places
	queues := e.rdb.SMembers(ctx, "shoal:q:queues").Val()
	for _, q := range queues {
		k := func(s string) string { return "shoal:q:{" + q + "}:" + s }
		for _, id := range e.rdb.LRange(ctx, k("pending"), 0, -1).Val() {
			where[id] = append(where[id], "pending")
		}
		for _, s := range []string{"active", "scheduled", "retry", "dead", "done"} {
			for _, id := range e.rdb.ZRange(ctx, k(s), 0, -1).Val() {
				where[id] = append(where[id], s)
			}
		}
		owners := e.rdb.HGetAll(ctx, k("owner")).Val()
		active := map[string]bool{}
		for _, id := range e.rdb.ZRange(ctx, k("active"), 0, -1).Val() {
			active[id] = true
			if owners[id] == "" {
				t.Errorf("active task %s has no owner", id)
			}
		}
		for id := range owners {
			if !active[id] {
				t.Errorf("owner entry for %s, which is not active", id)
			}
		}
	}
	for id, places := range where {
		if len(places) != 1 {
			t.Errorf("task %s is in %v", id, places)
			continue
		}
		h := e.rdb.HGetAll(ctx, "shoal:q:t:"+id).Val()
		if len(h) == 0 {
			t.Errorf("task %s in %s has no hash", id, places[0])
			continue
		}
		state := h["s"]
		if state == "" {
			state = "pending" // a new task's hash is its message alone
		}
		if places[0] != "active" && state != places[0] {
			t.Errorf("task %s is in %s but its hash says %q", id, places[0], state)
		}
	}
	var cursor uint64
	for {
		keys, next, err := e.rdb.Scan(ctx, cursor, "shoal:q:t:*", 1000).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, key := range keys {
			if id := strings.TrimPrefix(key, "shoal:q:t:"); len(where[id]) == 0 {
				t.Errorf("task hash %s is in no queue structure (state %q)", id, e.rdb.HGet(ctx, key, "s").Val())
			}
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
}
