package queue_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/shoal-dev/shoal/internal/testenv"
	"github.com/shoal-dev/shoal/queue"
	"github.com/shoal-dev/shoal/wire"
)

// Item 2: handlers per type, bounded concurrency, a per-task deadline, the
// request's id and trace in the handler's ctx.
func TestConsumeHandlers(t *testing.T) {
	e := newEnv(t)
	var now, peak, ran atomic.Int64
	type seen struct {
		rid      string
		trace    []wire.Hop
		deadline time.Duration
		text     string
	}
	got := make(chan seen, 1)
	mux := queue.NewServeMux()
	mux.HandleFunc("slow", func(ctx context.Context, task *queue.Task) error {
		n := now.Add(1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		time.Sleep(20 * time.Millisecond)
		now.Add(-1)
		ran.Add(1)
		return nil
	})
	mux.Handle("note", queue.Typed(func(ctx context.Context, task *queue.Task, n note) error {
		rid, trace, ok := queue.TraceFrom(ctx)
		if !ok || queue.TaskFrom(ctx) != task {
			return errors.New("no task in ctx")
		}
		d, _ := ctx.Deadline()
		got <- seen{rid, trace, time.Until(d), n.Text}
		return nil
	}))
	e.consume(t, queue.ConsumerOptions{Concurrency: 3}, mux)

	mustEnqueue(t, e.client, "note", note{Text: "hello"}, queue.Timeout(7*time.Second),
		queue.WithTrace("req-9", []wire.Hop{{Service: "notes", Process: "w/1"}}))
	select {
	case s := <-got:
		if s.rid != "req-9" || s.text != "hello" || len(s.trace) != 2 || s.trace[0].Service != "notes" ||
			s.trace[1].Service != "task:note" {
			t.Errorf("handler saw %+v", s)
		}
		if s.deadline <= 6*time.Second || s.deadline > 7*time.Second {
			t.Errorf("handler deadline in %v, want about 7s", s.deadline)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("note task never ran")
	}

	for i := range 15 {
		mustEnqueue(t, e.client, "slow", i)
	}
	testenv.Eventually(t, 10*time.Second, "15 slow tasks", func() bool { return ran.Load() == 15 })
	if p := peak.Load(); p != 3 {
		t.Errorf("peak concurrency %d, want exactly 3", p)
	}
	testenv.Eventually(t, 5*time.Second, "queue empty", func() bool {
		st := e.stats(t, "default")
		return st.Pending == 0 && st.Active == 0 && st.Processed == 16
	})
}

// Item 2: a task whose deadline passes gets a cancelled ctx and counts as
// a failure; a panic counts as a failure and the consumer lives on.
func TestDeadlineAndPanic(t *testing.T) {
	e := newEnv(t)
	var runs atomic.Int64
	mux := queue.NewServeMux()
	mux.HandleFunc("hang", func(ctx context.Context, task *queue.Task) error {
		<-ctx.Done()
		return ctx.Err()
	})
	mux.HandleFunc("panic", func(ctx context.Context, task *queue.Task) error {
		if runs.Add(1) == 1 {
			var m map[string]int
			m["boom"] = 1
		}
		return nil
	})
	set := metrics.NewSet()
	e.consume(t, queue.ConsumerOptions{Metrics: set, RetryDelay: func(int, error, *queue.Task) time.Duration { return time.Millisecond }}, mux)
	hang := mustEnqueue(t, e.client, "hang", nil, queue.Timeout(100*time.Millisecond), queue.MaxRetries(0))
	p := mustEnqueue(t, e.client, "panic", nil, queue.MaxRetries(1))
	testenv.Eventually(t, 10*time.Second, "hang task dead", func() bool { return stateOf(e, hang.ID) == queue.Dead })
	if info := e.get(t, hang.ID); !strings.Contains(info.LastError, "deadline exceeded") {
		t.Errorf("hang task's error: %q", info.LastError)
	}
	testenv.Eventually(t, 10*time.Second, "panicking task done on its retry", func() bool { return runs.Load() == 2 && e.stats(t, "default").Processed == 1 })
	if _, err := e.insp.Get(context.Background(), p.ID); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("done task still stored: %v", err)
	}
	if v := metricValue(set, "shoal_queue_panics_total"); v != 1 {
		t.Errorf("panics_total = %v", v)
	}
}

func stateOf(e *env, id string) queue.State {
	info, err := e.insp.Get(context.Background(), id)
	if err != nil {
		return ""
	}
	return info.State
}

// Item 3: retries with backoff until the budget is spent, then dead with
// the last error; SkipRetry goes straight to dead; dead tasks are listed,
// replayed one or all, deleted.
func TestRetryDeadReplayDelete(t *testing.T) {
	e := newEnv(t)
	var mu sync.Mutex
	runs := map[string][]time.Time{}
	failing := atomic.Bool{}
	failing.Store(true)
	mux := queue.NewServeMux()
	mux.HandleFunc("flaky", func(ctx context.Context, task *queue.Task) error {
		mu.Lock()
		runs[task.ID()] = append(runs[task.ID()], time.Now())
		mu.Unlock()
		if failing.Load() {
			return fmt.Errorf("attempt %d failed", task.Retried()+1)
		}
		return nil
	})
	mux.HandleFunc("hopeless", func(ctx context.Context, task *queue.Task) error {
		return fmt.Errorf("account closed: %w", queue.SkipRetry)
	})
	var delays []int
	var dmu sync.Mutex
	retry := func(n int, err error, task *queue.Task) time.Duration {
		dmu.Lock()
		delays = append(delays, n)
		dmu.Unlock()
		return time.Duration(10<<n) * time.Millisecond // 10ms, 20ms, 40ms
	}
	var deadSeen atomic.Int64
	e.consume(t, queue.ConsumerOptions{RetryDelay: retry, OnDead: func(*queue.Task, error) { deadSeen.Add(1) }}, mux)

	f := mustEnqueue(t, e.client, "flaky", nil, queue.MaxRetries(3))
	h := mustEnqueue(t, e.client, "hopeless", nil, queue.MaxRetries(10))
	testenv.Eventually(t, 10*time.Second, "both dead", func() bool { return e.stats(t, "default").Dead == 2 })

	mu.Lock()
	fr := runs[f.ID]
	mu.Unlock()
	if len(fr) != 4 {
		t.Fatalf("flaky ran %d times, want 4 (1 + 3 retries)", len(fr))
	}
	for i := 1; i < len(fr); i++ {
		if gap := fr[i].Sub(fr[i-1]); gap < time.Duration(10<<(i-1))*time.Millisecond {
			t.Errorf("retry %d came %v after the previous run, before its backoff", i, gap)
		}
	}
	dmu.Lock()
	if fmt.Sprint(delays) != "[0 1 2]" {
		t.Errorf("RetryDelay called with %v, want [0 1 2]", delays)
	}
	dmu.Unlock()
	fi := e.get(t, f.ID)
	if fi.State != queue.Dead || fi.Retried != 3 || !strings.Contains(fi.LastError, "attempt 4 failed") {
		t.Errorf("flaky task: %+v", fi)
	}
	if hi := e.get(t, h.ID); hi.State != queue.Dead || hi.Retried != 0 || !strings.Contains(hi.LastError, "account closed") {
		t.Errorf("hopeless task: %+v", hi)
	}
	if deadSeen.Load() != 2 {
		t.Errorf("OnDead called %d times", deadSeen.Load())
	}
	st := e.stats(t, "default")
	if st.Failed != 5 || st.Retried != 3 || st.Died != 2 {
		t.Errorf("stats %+v", st)
	}

	ctx := context.Background()
	dead, err := e.insp.List(ctx, "default", queue.Dead, 0, 10)
	if err != nil || len(dead) != 2 {
		t.Fatalf("list dead: %v %v", dead, err)
	}

	// Replay one: it runs again with a fresh budget, and succeeds now.
	failing.Store(false)
	if err := e.insp.Replay(ctx, f.ID); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "replayed task done", func() bool { return stateOf(e, f.ID) == "" })
	if err := e.insp.Replay(ctx, f.ID); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("replaying a done task: %v", err)
	}

	// Delete the other; replay all when there is nothing left.
	if err := e.insp.Delete(ctx, h.ID); err != nil {
		t.Fatal(err)
	}
	if n, err := e.insp.ReplayAll(ctx, ""); n != 0 || err != nil {
		t.Errorf("ReplayAll with no dead tasks: %d %v", n, err)
	}

	// Replay all: three dead tasks come back.
	failing.Store(true)
	var ids []string
	for range 3 {
		ids = append(ids, mustEnqueue(t, e.client, "flaky", nil, queue.MaxRetries(0)).ID)
	}
	testenv.Eventually(t, 10*time.Second, "three dead", func() bool { return e.stats(t, "default").Dead == 3 })
	failing.Store(false)
	if n, err := e.insp.ReplayAll(ctx, "default"); n != 3 || err != nil {
		t.Fatalf("ReplayAll: %d %v", n, err)
	}
	testenv.Eventually(t, 10*time.Second, "replayed tasks done", func() bool {
		st := e.stats(t, "default")
		return st.Dead == 0 && st.Pending == 0 && st.Active == 0
	})

	// DeleteAll of dead tasks.
	failing.Store(true)
	for range 4 {
		mustEnqueue(t, e.client, "flaky", nil, queue.MaxRetries(0))
	}
	testenv.Eventually(t, 10*time.Second, "four dead", func() bool { return e.stats(t, "default").Dead == 4 })
	if n, err := e.insp.DeleteAll(ctx, "default", queue.Dead); n != 4 || err != nil {
		t.Errorf("DeleteAll: %d %v", n, err)
	}
}

func TestDefaultRetryDelay(t *testing.T) {
	for n, want := range map[int]time.Duration{0: time.Second, 1: 2 * time.Second, 5: 32 * time.Second, 12: time.Hour, 40: time.Hour} {
		seen := map[time.Duration]bool{}
		for range 50 {
			d := queue.DefaultRetryDelay(n, nil, nil)
			if d < want/2 || d >= want {
				t.Errorf("retry %d: %v, want in [%v, %v)", n, d, want/2, want)
			}
			seen[d] = true
		}
		if len(seen) < 10 {
			t.Errorf("retry %d: only %d distinct delays in 50: no jitter?", n, len(seen))
		}
	}
}

// Item 4: strict priority drains the higher queue first; weighted serves
// both in proportion; a paused queue is left alone until resumed.
func TestQueuePriorityAndPause(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	var mu sync.Mutex
	var order []string
	mux := queue.NewServeMux()
	mux.HandleFunc("job", func(ctx context.Context, task *queue.Task) error {
		mu.Lock()
		order = append(order, task.Queue())
		mu.Unlock()
		return nil
	})
	batch := func(q string, n int) {
		tasks := make([]*queue.Task, n)
		for i := range tasks {
			tasks[i] = queue.NewRawTask("job", nil)
		}
		if _, err := e.client.EnqueueBatch(ctx, tasks, queue.Queue(q)); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("strict", func(t *testing.T) {
		order = nil
		batch("low", 30)
		batch("high", 30)
		_, stop := e.consume(t, queue.ConsumerOptions{Queues: map[string]int{"high": 2, "low": 1}, Strict: true,
			Concurrency: 1, Prefetch: -1}, mux)
		testenv.Eventually(t, 10*time.Second, "60 tasks", func() bool { mu.Lock(); defer mu.Unlock(); return len(order) == 60 })
		stop()
		for i, q := range order {
			if want := map[bool]string{true: "high", false: "low"}[i < 30]; q != want {
				t.Fatalf("task %d came from %s, want %s: %v", i, q, want, order)
			}
		}
	})

	t.Run("weighted", func(t *testing.T) {
		order = nil
		batch("low", 400)
		batch("high", 400)
		_, stop := e.consume(t, queue.ConsumerOptions{Queues: map[string]int{"high": 3, "low": 1},
			Concurrency: 1, Prefetch: -1}, mux)
		testenv.Eventually(t, 20*time.Second, "400 tasks", func() bool { mu.Lock(); defer mu.Unlock(); return len(order) >= 400 })
		stop()
		mu.Lock()
		high := 0
		for _, q := range order[:400] {
			if q == "high" {
				high++
			}
		}
		mu.Unlock()
		// 3:1 means 300 of the first 400; allow for chance.
		if high < 250 || high > 350 {
			t.Errorf("%d of the first 400 tasks came from high (weight 3 of 4), want about 300", high)
		}
		testenv.Eventually(t, 20*time.Second, "the rest", func() bool { mu.Lock(); defer mu.Unlock(); return len(order) >= 400 })
	})

	t.Run("pause", func(t *testing.T) {
		for _, q := range []string{"high", "low"} { // whatever weighted left
			e.rdb.Del(ctx, "shoal:q:{"+q+"}:pending")
		}
		order = nil
		if err := e.insp.Pause(ctx, "mail"); err != nil {
			t.Fatal(err)
		}
		batch("mail", 5)
		batch("other", 5)
		e.consume(t, queue.ConsumerOptions{Queues: map[string]int{"mail": 1, "other": 1}}, mux)
		testenv.Eventually(t, 10*time.Second, "other queue drained", func() bool { return e.stats(t, "other").Processed == 5 })
		st := e.stats(t, "mail")
		if !st.Paused || st.Pending != 5 {
			t.Fatalf("paused queue: %+v", st)
		}
		if err := e.insp.Resume(ctx, "mail"); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, 10*time.Second, "mail drained after resume", func() bool { return e.stats(t, "mail").Processed == 5 })
		if e.stats(t, "mail").Paused {
			t.Error("still paused after Resume")
		}
	})
}
