package queue_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"
	"github.com/shoal-dev/shoal/internal/queue/redistest"
	"github.com/shoal-dev/shoal/queue"
)

// env is one test's Redis and a client of it.
type env struct {
	srv    *redistest.Server
	rdb    *redis.Client
	client *queue.Client
	insp   *queue.Inspector
}

func newEnv(t *testing.T, extra ...string) *env {
	t.Helper()
	srv := redistest.Start(t, extra...)
	rdb := queue.NewRedis(queue.RedisOptions{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	return &env{srv: srv, rdb: rdb,
		client: queue.NewClient(rdb, queue.ClientOptions{Metrics: metrics.NewSet()}),
		insp:   queue.NewInspector(rdb)}
}

// testLogger discards logs unless -v.
func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// consume runs a consumer until the test ends or stop is called; stop
// waits for Run to return.
func (e *env) consume(t *testing.T, o queue.ConsumerOptions, h queue.Handler) (c *queue.Consumer, stop func()) {
	t.Helper()
	if o.Logger == nil {
		o.Logger = testLogger(t)
	}
	if o.Poll == 0 {
		o.Poll = 50 * time.Millisecond
	}
	c, err := queue.NewConsumer(e.rdb, o, h)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return c, stop
}

func mustEnqueue(t testing.TB, c *queue.Client, typ string, v any, opts ...queue.Option) *queue.TaskInfo {
	t.Helper()
	task, err := queue.NewTask(typ, v)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Enqueue(context.Background(), task, opts...)
	if err != nil {
		t.Fatalf("Enqueue(%s): %v", typ, err)
	}
	return info
}

func (e *env) stats(t testing.TB, q string) queue.QueueStats {
	t.Helper()
	st, err := e.insp.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.Queue == q {
			return s
		}
	}
	return queue.QueueStats{Queue: q}
}

func (e *env) get(t testing.TB, id string) *queue.TaskInfo {
	t.Helper()
	info, err := e.insp.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("Get(%s): %v", id, err)
	}
	return info
}

// counter reads a metric's value from a set's Prometheus text.
func metricValue(set *metrics.Set, name string) float64 {
	var b writer
	set.WritePrometheus(&b)
	return b.value(name)
}

type writer struct{ strings.Builder }

// value returns the value of the sample named name (with its labels), or
// -1 when there is none.
func (w *writer) value(name string) float64 {
	for _, line := range strings.Split(w.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}
