package queue_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/shoal-dev/shoal/internal/testenv"
	"github.com/shoal-dev/shoal/queue"
)

// Item 11: a payload that does not decode, an unknown task type and a
// corrupt stored message each end in the dead-letter set with the reason
// and a metric; the consumer carries on.
func TestBadInputGoesToDeadLetters(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	mux := queue.NewServeMux()
	mux.Handle("note", queue.Typed(func(ctx context.Context, task *queue.Task, n note) error { return nil }))
	set := metrics.NewSet()
	e.consume(t, queue.ConsumerOptions{Metrics: set}, mux)

	bad := mustEnqueue(t, e.client, "note", "not a note", queue.MaxRetries(5))
	garbage, err := e.client.Enqueue(ctx, queue.NewRawTask("note", []byte{0xc1, 0xff}), queue.MaxRetries(5))
	if err != nil {
		t.Fatal(err)
	}
	unknown := mustEnqueue(t, e.client, "nobody.handles.this", note{}, queue.MaxRetries(5))
	// A message that was damaged in Redis.
	corrupt := mustEnqueue(t, e.client, "note", note{}, queue.ProcessIn(time.Hour), queue.MaxRetries(5))
	e.rdb.HSet(ctx, "shoal:q:t:"+corrupt.ID, "m", "\x81\xa1t\xc0garbage")
	if err := e.insp.Replay(ctx, corrupt.ID); err != nil { // run it now
		t.Fatal(err)
	}
	mustEnqueue(t, e.client, "note", note{Text: "fine"})

	testenv.Eventually(t, 10*time.Second, "four dead, one done", func() bool {
		st := e.stats(t, "default")
		return st.Dead == 4 && st.Processed == 1
	})
	for id, want := range map[string]string{
		bad.ID:     "payload does not decode",
		garbage.ID: "payload does not decode",
		unknown.ID: `no handler for task type "nobody.handles.this"`,
		corrupt.ID: "corrupt task message",
	} {
		info := e.get(t, id)
		if info.State != queue.Dead || info.Retried != 0 || !strings.Contains(info.LastError, want) {
			t.Errorf("task %s: state %s, retried %d, error %q; want dead at once with %q", id, info.State, info.Retried, info.LastError, want)
		}
	}
	for name, want := range map[string]float64{
		`shoal_queue_bad_payload_total{queue="default"}`:  2,
		`shoal_queue_unknown_type_total{queue="default"}`: 1,
		`shoal_queue_bad_message_total{queue="default"}`:  1,
		`shoal_queue_dead_total{queue="default"}`:         4,
		`shoal_queue_processed_total{queue="default"}`:    1,
	} {
		if v := metricValue(set, name); v != want {
			t.Errorf("%s = %v, want %v", name, v, want)
		}
	}
}

// Item 11: a Redis that is down when the consumer starts is an error in
// the log and the metrics, not a crash; once it is up the consumer works.
// A Redis that goes away mid-run is the same (TestRedisRestartLosesNothing
// has it come back with every task).
func TestRedisDownAtStart(t *testing.T) {
	e := newEnv(t)
	e.srv.Kill()
	set := metrics.NewSet()
	done := make(chan struct{}, 1)
	mux := queue.NewServeMux()
	mux.HandleFunc("t", func(ctx context.Context, task *queue.Task) error { done <- struct{}{}; return nil })
	e.consume(t, queue.ConsumerOptions{Metrics: set, Poll: 20 * time.Millisecond}, mux)
	testenv.Eventually(t, 10*time.Second, "redis errors counted", func() bool {
		return metricValue(set, `shoal_queue_redis_errors_total{op="fetch"}`) > 0 &&
			metricValue(set, `shoal_queue_redis_errors_total{op="maintain"}`) > 0
	})
	if v := metricValue(set, "shoal_queue_redis_up"); v != 0 {
		t.Errorf("redis_up = %v with Redis down", v)
	}
	e.srv.StartAgain(t)
	mustEnqueue(t, e.client, "t", nil)
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("consumer did not recover once Redis came up")
	}
	testenv.Eventually(t, 5*time.Second, "redis_up", func() bool { return metricValue(set, "shoal_queue_redis_up") == 1 })
}

// Bad options are refused by NewConsumer, not discovered at run time.
func TestConsumerOptionsChecked(t *testing.T) {
	e := newEnv(t)
	mux := queue.NewServeMux()
	for name, o := range map[string]queue.ConsumerOptions{
		"bad queue name": {Queues: map[string]int{"Bad Name": 1}},
		"zero weight":    {Queues: map[string]int{"a": 0}},
		"tiny lease":     {Lease: time.Millisecond},
	} {
		if _, err := queue.NewConsumer(e.rdb, o, mux); !errors.Is(err, queue.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
}
