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

// Item 8: depth per state and queue, processed / failed / retried
// counters, and the two latency histograms, in Prometheus text.
func TestMetrics(t *testing.T) {
	e := newEnv(t)
	clientSet := metrics.NewSet()
	client := queue.NewClient(e.rdb, queue.ClientOptions{Metrics: clientSet})
	mux := queue.NewServeMux()
	mux.HandleFunc("ok", func(ctx context.Context, task *queue.Task) error { return nil })
	mux.HandleFunc("fail", func(ctx context.Context, task *queue.Task) error { return errors.New("no") })
	set := metrics.NewSet()
	e.consume(t, queue.ConsumerOptions{Metrics: set, Queues: map[string]int{"default": 1, "mail": 1},
		RetryDelay: func(int, error, *queue.Task) time.Duration { return time.Hour }}, mux)
	for range 5 {
		mustEnqueue(t, client, "ok", nil)
	}
	mustEnqueue(t, client, "fail", nil, queue.Queue("mail"))
	mustEnqueue(t, client, "ok", nil, queue.ProcessIn(time.Hour))
	testenv.Eventually(t, 10*time.Second, "gauges to show the retry", func() bool {
		return metricValue(set, `shoal_queue_tasks{queue="mail",state="retry"}`) == 1 &&
			metricValue(set, `shoal_queue_tasks{queue="default",state="scheduled"}`) == 1
	})
	for name, want := range map[string]float64{
		`shoal_queue_processed_total{queue="default"}`:       5,
		`shoal_queue_failed_total{queue="mail"}`:             1,
		`shoal_queue_retried_total{queue="mail"}`:            1,
		`shoal_queue_tasks{queue="default",state="pending"}`: 0,
		`shoal_queue_tasks{queue="mail",state="dead"}`:       0,
		`shoal_queue_paused{queue="mail"}`:                   0,
		`shoal_queue_redis_up`:                               1,
		`shoal_queue_wait_seconds_count{queue="default"}`:    5,
		`shoal_queue_run_seconds_count{queue="mail"}`:        1,
	} {
		if v := metricValue(set, name); v != want {
			t.Errorf("%s = %v, want %v", name, v, want)
		}
	}
	if v := metricValue(clientSet, `shoal_queue_enqueued_total{queue="default"}`); v != 6 {
		t.Errorf("enqueued_total = %v", v)
	}
	var b strings.Builder
	set.WritePrometheus(&b)
	for _, s := range queue.States {
		if !strings.Contains(b.String(), `shoal_queue_tasks{queue="default",state="`+string(s)+`"}`) {
			t.Errorf("no depth gauge for state %s", s)
		}
	}
	if !strings.Contains(b.String(), `shoal_queue_run_seconds_bucket{queue="default",le="0.001"}`) {
		t.Errorf("no run histogram buckets:\n%s", b.String())
	}
}
