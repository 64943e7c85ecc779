package queue_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/shoal-dev/shoal/queue"
	"github.com/shoal-dev/shoal/wire"
)

type note struct {
	Text string `msgpack:"text"`
	N    int    `msgpack:"n"`
}

// Item 1: enqueue with every option, as stored and as seen by Get.
func TestEnqueueOptions(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	trace := []wire.Hop{{Service: "frontend", Process: "f/1", Start: 1, Dur: 2}}
	task, err := queue.NewTask("notes.write", note{Text: "hi", N: 1}, queue.MaxRetries(3))
	if err != nil {
		t.Fatal(err)
	}
	info, err := e.client.Enqueue(ctx, task, queue.Queue("critical"), queue.Timeout(5*time.Second),
		queue.WithTrace("req-1", trace), queue.Retention(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if !queue.ValidID(info.ID) || info.State != queue.Pending || info.Queue != "critical" {
		t.Fatalf("info = %+v", info)
	}
	got := e.get(t, info.ID)
	if got.Type != "notes.write" || got.Queue != "critical" || got.State != queue.Pending || got.MaxRetries != 3 ||
		got.Timeout != 5*time.Second || got.RequestID != "req-1" || len(got.Trace) != 1 || got.Trace[0].Service != "frontend" {
		t.Errorf("stored = %+v", got)
	}
	var n note
	if err := queue.NewRawTask("x", got.Payload).Decode(&n); err != nil || n.Text != "hi" {
		t.Errorf("payload = %+v, %v", n, err)
	}

	// Delay and process-at: scheduled, with the due time.
	in := mustEnqueue(t, e.client, "later", 1, queue.ProcessIn(time.Hour))
	at := mustEnqueue(t, e.client, "later", 2, queue.ProcessAt(time.Now().Add(2*time.Hour)))
	for _, id := range []string{in.ID, at.ID} {
		if g := e.get(t, id); g.State != queue.Scheduled || time.Until(g.At) < 50*time.Minute {
			t.Errorf("scheduled task %s: state %s at %v", id, g.State, g.At)
		}
	}

	// Uniqueness: a duplicate is refused with a typed error naming the holder.
	first := mustEnqueue(t, e.client, "email", "a", queue.Unique("user-7", time.Minute))
	_, err = e.client.Enqueue(ctx, queue.NewRawTask("email", nil), queue.Unique("user-7", time.Minute))
	var dup *queue.DuplicateError
	if !errors.Is(err, queue.ErrDuplicateTask) || !errors.As(err, &dup) || dup.ID != first.ID || dup.Key != "user-7" {
		t.Fatalf("duplicate enqueue: %v", err)
	}
	// Same key in another queue is another lock.
	mustEnqueue(t, e.client, "email", "a", queue.Unique("user-7", time.Minute), queue.Queue("other"))
	// Deleting the holder releases the key.
	if err := e.insp.Delete(ctx, first.ID); err != nil {
		t.Fatal(err)
	}
	mustEnqueue(t, e.client, "email", "a", queue.Unique("user-7", time.Minute))

	// Idempotency key: the repeat returns the first id and stores nothing.
	a := mustEnqueue(t, e.client, "pay", 10, queue.IdempotencyKey("order-42"))
	b := mustEnqueue(t, e.client, "pay", 10, queue.IdempotencyKey("order-42"))
	if b.ID != a.ID || !b.Existing || a.Existing {
		t.Errorf("idempotent enqueue: first %+v, second %+v", a, b)
	}
	if st := e.stats(t, "default"); st.Pending != 2 { // email (the second), pay
		t.Errorf("default pending = %d, want 2", st.Pending)
	}

	// The enqueue is bound by ctx's deadline (a worker handler's request
	// deadline): one that has passed fails at once.
	past, cancel := context.WithDeadline(ctx, time.Now().Add(-time.Millisecond))
	defer cancel()
	if _, err := e.client.Enqueue(past, queue.NewRawTask("late", nil)); err == nil {
		t.Error("enqueue with a passed deadline succeeded")
	}

	// Bad arguments are refused before Redis.
	for name, c := range map[string]struct {
		task *queue.Task
		opts []queue.Option
	}{
		"empty type":    {queue.NewRawTask("", nil), nil},
		"bad queue":     {queue.NewRawTask("x", nil), []queue.Option{queue.Queue("Bad Queue")}},
		"negative":      {queue.NewRawTask("x", nil), []queue.Option{queue.MaxRetries(-1)}},
		"unique no ttl": {queue.NewRawTask("x", nil), []queue.Option{queue.Unique("k", 0)}},
	} {
		if _, err := e.client.Enqueue(ctx, c.task, c.opts...); !errors.Is(err, queue.ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
	}
}

// countingHook counts the round trips a client makes.
type countingHook struct{ single, pipelines atomic.Int64 }

func (h *countingHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *countingHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { h.single.Add(1); return next(ctx, cmd) }
}
func (h *countingHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { h.pipelines.Add(1); return next(ctx, cmds) }
}

// Item 1: a batch is one round trip, with per-task results.
func TestEnqueueBatchOneRoundTrip(t *testing.T) {
	e := newEnv(t)
	rdb := queue.NewRedis(queue.RedisOptions{Addr: e.srv.Addr})
	defer rdb.Close()
	c := queue.NewClient(rdb, queue.ClientOptions{})
	// Warm up: connect, and have Redis cache the script (after a restart
	// the first call costs one more round trip to load it).
	for _, warm := range [][]*queue.Task{
		{queue.NewRawTask("warm", nil, queue.Queue("warm"))},                                                                // the uniform batch script
		{queue.NewRawTask("warm", nil, queue.Queue("warm"), queue.Unique("w", time.Second)), queue.NewRawTask("warm", nil)}, // the general one
	} {
		if _, err := c.EnqueueBatch(context.Background(), warm); err != nil {
			t.Fatal(err)
		}
	}
	hook := &countingHook{}
	rdb.AddHook(hook)

	tasks := make([]*queue.Task, 1200)
	for i := range tasks {
		tasks[i] = queue.NewRawTask("bulk", []byte{byte(i)})
	}
	tasks[7] = queue.NewRawTask("bulk", nil, queue.Unique("only-one", time.Minute))
	tasks[8] = queue.NewRawTask("bulk", nil, queue.Unique("only-one", time.Minute))
	tasks[9] = queue.NewRawTask("", nil)
	res, err := c.EnqueueBatch(context.Background(), tasks)
	if err != nil {
		t.Fatal(err)
	}
	if n := hook.pipelines.Load() + hook.single.Load(); n != 1 {
		t.Errorf("batch of 1200 took %d round trips (pipelines %d, single %d); want 1", n, hook.pipelines.Load(), hook.single.Load())
	}
	ok := 0
	for i, r := range res {
		switch {
		case i == 8:
			if !errors.Is(r.Err, queue.ErrDuplicateTask) {
				t.Errorf("task 8: %v, want a duplicate", r.Err)
			}
		case i == 9:
			if !errors.Is(r.Err, queue.ErrInvalid) {
				t.Errorf("task 9: %v, want invalid", r.Err)
			}
		case r.Err != nil:
			t.Errorf("task %d: %v", i, r.Err)
		default:
			ok++
		}
	}
	if st := e.stats(t, "default"); ok != 1198 || st.Pending != 1198+1 { // + a warm-up task
		t.Errorf("enqueued %d, pending %d; want 1198 (+1)", ok, st.Pending)
	}
}

// Item 1 and 11: with Redis down, Enqueue fails fast with a clear error.
func TestEnqueueRedisDown(t *testing.T) {
	e := newEnv(t)
	e.srv.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	_, err := e.client.Enqueue(ctx, queue.NewRawTask("x", nil))
	if err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("enqueue with Redis down: %v after %v", err, time.Since(start))
	}
	if want := "queue: cannot enqueue a x task: "; len(err.Error()) < len(want) || err.Error()[:len(want)] != want {
		t.Errorf("error %q does not say what failed", err)
	}
	_, err = e.client.EnqueueBatch(ctx, []*queue.Task{queue.NewRawTask("x", nil)})
	if err == nil {
		t.Error("batch enqueue with Redis down succeeded")
	}
}

// After a Redis restart the script cache is empty: a batch whose calls get
// NOSCRIPT sends those again, and only those — no task is stored twice.
func TestEnqueueAfterScriptFlush(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	mustEnqueue(t, e.client, "warm", nil, queue.Queue("a")) // caches enqueue1 only
	if _, err := e.client.EnqueueBatch(ctx, []*queue.Task{queue.NewRawTask("x", nil)}); err != nil {
		t.Fatal(err) // caches enqueueN
	}
	e.rdb.ScriptFlush(ctx)
	mustEnqueue(t, e.client, "one", nil)
	tasks := make([]*queue.Task, 1200)
	for i := range tasks {
		tasks[i] = queue.NewRawTask("x", nil)
	}
	tasks[600] = queue.NewRawTask("x", nil, queue.IdempotencyKey("k")) // a chunk for the general script
	if _, err := e.client.EnqueueBatch(ctx, tasks); err != nil {
		t.Fatal(err)
	}
	if st := e.stats(t, "default"); st.Pending != 1+1+1200 {
		t.Errorf("pending %d, want %d", st.Pending, 1+1+1200)
	}
}
