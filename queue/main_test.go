package queue_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/shoal-dev/shoal/queue"
)

// quietRedis drops go-redis's own log lines (dial failures while a test
// has Redis down on purpose); the queue reports those errors itself.
type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

func TestMain(m *testing.M) {
	// The test binary doubles as a consumer process that tests kill -9.
	if addr := os.Getenv("QUEUE_TEST_CONSUMER"); addr != "" {
		os.Exit(helperConsumer(addr))
	}
	flag.Parse()
	if !testing.Verbose() {
		redis.SetLogger(quietRedis{})
	}
	code := m.Run()
	if builtIn != "" {
		os.RemoveAll(builtIn)
	}
	os.Exit(code)
}

// helperConsumer runs a consumer whose "block" handler records that it
// started (SET started:<id> <pid>) and then never returns, and whose "fast"
// handler records each run (RPUSH runs <id>).
func helperConsumer(addr string) int {
	redis.SetLogger(quietRedis{})
	lease, _ := time.ParseDuration(os.Getenv("QUEUE_TEST_LEASE"))
	conc, _ := strconv.Atoi(os.Getenv("QUEUE_TEST_CONCURRENCY"))
	rdb := queue.NewRedis(queue.RedisOptions{Addr: addr})
	mux := queue.NewServeMux()
	mux.HandleFunc("block", func(ctx context.Context, t *queue.Task) error {
		rdb.Set(ctx, "started:"+t.ID(), os.Getpid(), 0)
		select {}
	})
	mux.HandleFunc("fast", func(ctx context.Context, t *queue.Task) error {
		return rdb.RPush(ctx, "runs", t.ID()).Err()
	})
	c, err := queue.NewConsumer(rdb, queue.ConsumerOptions{Lease: lease, Poll: 50 * time.Millisecond, Concurrency: conc}, mux)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	c.Run(ctx)
	return 0
}
