// Command queuebench runs Shoal's task queue and hibiken/asynq side by side
// on the same redis-server in the same run, and prints enqueues per second
// (one goroutine, one task per call; and Shoal's batched enqueue) and tasks
// processed per second with a no-op handler at concurrency 10, with the
// ratios and the targets of issue 4.
//
// It is its own module so that asynq never becomes a dependency of Shoal:
//
//	cd bench/queue && go run . [-n 20000] [-process 50000] [-check]
//
// By default it starts its own redis-server (the same arguments as Shoal's:
// AOF on, fsync every second) on a free port in a temporary directory;
// -addr uses a running one instead (it is FLUSHDB'd between phases).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/shoal-dev/shoal/internal/queue/redistest"
	"github.com/shoal-dev/shoal/queue"
)

var (
	addr        = flag.String("addr", "", "use this running redis-server (host:port) instead of starting one; it is flushed")
	redisBin    = flag.String("redis-server", "redis-server", "redis-server binary to start")
	nEnqueue    = flag.Int("n", 20000, "tasks per single-enqueue run")
	nBatch      = flag.Int("batch-n", 200000, "tasks per batched-enqueue run")
	batchSize   = flag.Int("batch", 500, "tasks per EnqueueBatch call")
	nProcess    = flag.Int("process", 50000, "tasks per processing run")
	concurrency = flag.Int("c", 10, "consumer concurrency")
	prefetch    = flag.Int("prefetch", 0, "Shoal consumer prefetch (0: its default)")
	rounds      = flag.Int("rounds", 5, "rounds of every measurement; medians are reported")
	check       = flag.Bool("check", false, "exit 1 when a target is missed")
	only        = flag.String("only", "", "run one measurement of Shoal alone: enqueue, batch or process (for profiling)")
	cpuprofile  = flag.String("cpuprofile", "", "with -only: write a CPU profile here")
)

type result struct {
	name               string
	shoal, peer, ratio float64 // per second; ratio: the median of the rounds' ratios
}

func main() {
	flag.Parse()
	log.SetFlags(0)
	redis.SetLogger(quiet{})
	a := *addr
	if a == "" {
		stop, started, err := startRedis()
		if err != nil {
			log.Fatalf("queuebench: %v", err)
		}
		defer stop()
		a = started
	}
	rdb := queue.NewRedis(queue.RedisOptions{Addr: a})
	defer rdb.Close()
	ctx := context.Background()
	if err := rdb.Ping(ctx).Err(); err != nil {
		log.Fatalf("queuebench: redis at %s: %v", a, err)
	}
	info, _ := rdb.Info(ctx, "server", "persistence").Result()
	fmt.Printf("queuebench: redis %s at %s (%s), GOMAXPROCS %d, %d rounds (median)\n",
		field(info, "redis_version"), a, "aof="+field(info, "aof_enabled"), runtime.GOMAXPROCS(0), *rounds)

	flush := func() {
		if err := rdb.FlushDB(ctx).Err(); err != nil {
			log.Fatalf("queuebench: flush: %v", err)
		}
	}
	aq := asynq.NewClient(asynq.RedisClientOpt{Addr: a})
	defer aq.Close()
	sc := queue.NewClient(rdb, queue.ClientOptions{})

	if *only != "" {
		flush()
		if *cpuprofile != "" {
			f, err := os.Create(*cpuprofile)
			if err != nil {
				log.Fatal(err)
			}
			pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
		var v float64
		cpu0, rcpu0 := cpuNow(), redisCPU(rdb)
		defer func() {
			n := float64(*nEnqueue)
			switch *only {
			case "batch":
				n = float64(*nBatch)
			case "process", "asynq-process":
				n = float64(*nProcess)
			}
			fmt.Printf("client cpu %.2fus/op, redis cpu %.2fus/op\n", (cpuNow()-cpu0).Seconds()*1e6/n, (redisCPU(rdb)-rcpu0)*1e6/n)
		}()
		switch *only {
		case "enqueue":
			v = shoalEnqueue(sc, *nEnqueue)
		case "batch":
			v = shoalBatch(sc, *nBatch, *batchSize)
		case "process":
			v = shoalProcess(rdb, sc, *nProcess, *concurrency)
		case "asynq-enqueue":
			v = asynqEnqueue(aq, *nEnqueue)
		case "asynq-process":
			v = asynqProcess(a, aq, *nProcess, *concurrency)
		default:
			log.Fatalf("queuebench: -only %q: want enqueue, batch or process", *only)
		}
		fmt.Printf("shoal %s: %.0f/s\n", *only, v)
		return
	}

	// Each round measures everything once, Shoal and asynq back to back,
	// so that both see the same machine load; the medians are reported.
	type round struct{ single, asingle, batch, proc, aproc float64 }
	var rr []round
	for r := range *rounds {
		var x round
		both := func(shoal, peer *float64, fs, fp func() float64) {
			if r%2 == 0 {
				flush()
				*shoal = fs()
				flush()
				*peer = fp()
			} else {
				flush()
				*peer = fp()
				flush()
				*shoal = fs()
			}
		}
		// Enqueues: the three measurements run in turns of a slice each,
		// the order rotating, so that all three see the same moments of
		// machine load (a shared machine's load changes by the second).
		flush()
		const slice = 1000
		slices := max(1, *nEnqueue/slice)
		batchSlice := max(*batchSize, *nBatch/slices)
		var tSingle, tPeer, tBatch time.Duration
		runs := []func(){
			func() { tSingle += timed(func() { shoalEnqueue(sc, slice) }) },
			func() { tPeer += timed(func() { asynqEnqueue(aq, slice) }) },
			func() { tBatch += timed(func() { shoalBatch(sc, batchSlice, *batchSize) }) },
		}
		for k := range slices {
			for j := range runs {
				runs[(j+k)%len(runs)]()
			}
		}
		x.single = float64(slices*slice) / tSingle.Seconds()
		x.asingle = float64(slices*slice) / tPeer.Seconds()
		x.batch = float64(slices*batchSlice) / tBatch.Seconds()
		both(&x.proc, &x.aproc, func() float64 { return shoalProcess(rdb, sc, *nProcess, *concurrency) },
			func() float64 { return asynqProcess(a, aq, *nProcess, *concurrency) })
		fmt.Fprintf(os.Stderr, "round %d: enqueue %.0f vs %.0f, batch %.0f, processed %.0f vs %.0f\n",
			r+1, x.single, x.asingle, x.batch, x.proc, x.aproc)
		rr = append(rr, x)
	}
	median := func(f func(round) float64) float64 {
		v := make([]float64, len(rr))
		for i, x := range rr {
			v[i] = f(x)
		}
		sort.Float64s(v)
		return v[len(v)/2]
	}
	rs := []result{
		{name: "enqueue/s, one goroutine, one task per call",
			shoal: median(func(x round) float64 { return x.single }), peer: median(func(x round) float64 { return x.asingle }),
			ratio: median(func(x round) float64 { return x.single / x.asingle })},
		{name: fmt.Sprintf("enqueue/s, batched (%d per call) vs asynq single", *batchSize),
			shoal: median(func(x round) float64 { return x.batch }), peer: median(func(x round) float64 { return x.asingle }),
			ratio: median(func(x round) float64 { return x.batch / x.asingle })},
		{name: fmt.Sprintf("processed/s, no-op handler, concurrency %d", *concurrency),
			shoal: median(func(x round) float64 { return x.proc }), peer: median(func(x round) float64 { return x.aproc }),
			ratio: median(func(x round) float64 { return x.proc / x.aproc })},
	}

	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "measure (median of rounds)\tshoal\tasynq\tratio\ttarget\t")
	targets := []float64{1, 5, 3}
	missed := 0
	for i, r := range rs {
		ratio := r.ratio
		ok := "ok"
		if ratio < targets[i] {
			ok = "MISSED"
			missed++
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%.2fx\t>= %.0fx %s\t\n", r.name, r.shoal, r.peer, ratio, targets[i], ok)
	}
	tw.Flush()
	if missed > 0 && *check {
		os.Exit(1)
	}
}

func field(info, name string) string {
	for _, line := range splitLines(info) {
		if len(line) > len(name) && line[:len(name)+1] == name+":" {
			return line[len(name)+1:]
		}
	}
	return "?"
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			line := s[start:i]
			if len(line) > 0 && line[len(line)-1] == '\r' {
				line = line[:len(line)-1]
			}
			out = append(out, line)
			start = i + 1
		}
	}
	return out
}

// cpuNow is this process's user+system CPU time.
func cpuNow() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// redisCPU is redis-server's main thread CPU seconds.
func redisCPU(rdb *redis.Client) float64 {
	info, _ := rdb.Info(context.Background(), "cpu").Result()
	u, _ := strconv.ParseFloat(field(info, "used_cpu_user_main_thread"), 64)
	s, _ := strconv.ParseFloat(field(info, "used_cpu_sys_main_thread"), 64)
	return u + s
}

func timed(f func()) time.Duration {
	start := time.Now()
	f()
	return time.Since(start)
}

type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

// startRedis runs redis-server with Shoal's arguments on a free port.
func startRedis() (stop func(), addr string, err error) {
	dir, err := os.MkdirTemp("", "queuebench-")
	if err != nil {
		return nil, "", err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	args := append(redistest.Args(port, dir), "--logfile", filepath.Join(dir, "redis.log"))
	cmd := exec.Command(*redisBin, args...)
	if err := cmd.Start(); err != nil {
		return nil, "", fmt.Errorf("cannot start %s: %w", *redisBin, err)
	}
	addr = "127.0.0.1:" + strconv.Itoa(port)
	stop = func() { cmd.Process.Kill(); cmd.Wait(); os.RemoveAll(dir) }
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	for i := 0; ; i++ {
		if rdb.Ping(context.Background()).Err() == nil {
			return stop, addr, nil
		}
		if i > 500 {
			stop()
			return nil, "", fmt.Errorf("redis-server did not answer on %s", addr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var payload = []byte(`{"user":12345,"text":"a short note of some forty bytes"}`)

func shoalEnqueue(c *queue.Client, n int) float64 {
	ctx := context.Background()
	start := time.Now()
	for range n {
		if _, err := c.Enqueue(ctx, queue.NewRawTask("bench", payload)); err != nil {
			log.Fatalf("shoal enqueue: %v", err)
		}
	}
	return float64(n) / time.Since(start).Seconds()
}

func asynqEnqueue(c *asynq.Client, n int) float64 {
	start := time.Now()
	for range n {
		if _, err := c.Enqueue(asynq.NewTask("bench", payload)); err != nil {
			log.Fatalf("asynq enqueue: %v", err)
		}
	}
	return float64(n) / time.Since(start).Seconds()
}

func shoalBatch(c *queue.Client, n, size int) float64 {
	ctx := context.Background()
	tasks := make([]*queue.Task, size)
	for i := range tasks {
		tasks[i] = queue.NewRawTask("bench", payload)
	}
	start := time.Now()
	for done := 0; done < n; done += size {
		res, err := c.EnqueueBatch(ctx, tasks[:min(size, n-done)])
		if err != nil {
			log.Fatalf("shoal batch: %v", err)
		}
		for _, r := range res {
			if r.Err != nil {
				log.Fatalf("shoal batch: %v", r.Err)
			}
		}
	}
	return float64(n) / time.Since(start).Seconds()
}

// fill enqueues n tasks for a processing run (not timed).
func fillShoal(c *queue.Client, n int) {
	shoalBatch(c, n, 1000)
}

func fillAsynq(c *asynq.Client, n int) {
	var wg sync.WaitGroup
	per := n / 16
	for g := range 16 {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			k := per
			if g == 15 {
				k = n - 15*per
			}
			asynqEnqueue(c, k)
		}(g)
	}
	wg.Wait()
}

func shoalProcess(rdb *redis.Client, c *queue.Client, n, conc int) float64 {
	fillShoal(c, n)
	var done atomic.Int64
	all := make(chan struct{})
	mux := queue.NewServeMux()
	mux.HandleFunc("bench", func(ctx context.Context, t *queue.Task) error {
		if done.Add(1) == int64(n) {
			close(all)
		}
		return nil
	})
	cons, err := queue.NewConsumer(rdb, queue.ConsumerOptions{Concurrency: conc, Prefetch: *prefetch,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, mux)
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	start := time.Now()
	go func() { cons.Run(ctx); close(stopped) }()
	<-all
	el := time.Since(start)
	cancel()
	<-stopped
	return float64(n) / el.Seconds()
}

func asynqProcess(a string, c *asynq.Client, n, conc int) float64 {
	fillAsynq(c, n)
	var done atomic.Int64
	all := make(chan struct{})
	srv := asynq.NewServer(asynq.RedisClientOpt{Addr: a}, asynq.Config{
		Concurrency: conc,
		LogLevel:    asynq.ErrorLevel,
		Logger:      nopLogger{},
	})
	mux := asynq.NewServeMux()
	mux.HandleFunc("bench", func(ctx context.Context, t *asynq.Task) error {
		if done.Add(1) == int64(n) {
			close(all)
		}
		return nil
	})
	start := time.Now()
	if err := srv.Start(mux); err != nil {
		log.Fatalf("asynq server: %v", err)
	}
	<-all
	el := time.Since(start)
	srv.Shutdown()
	return float64(n) / el.Seconds()
}

type nopLogger struct{}

func (nopLogger) Debug(...any) {}
func (nopLogger) Info(...any)  {}
func (nopLogger) Warn(...any)  {}
func (nopLogger) Error(...any) {}
func (nopLogger) Fatal(...any) {}
