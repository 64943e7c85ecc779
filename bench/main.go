// Command bench measures what the Shoal pipeline costs compared with a bare
// fasthttp server on the same machine, under the same HTTP load.
//
// One run does everything:
//
//  1. It writes a config with free 127.0.0.1 ports into a temporary
//     directory (routes GET and POST /echo to the echo service, log level
//     warn) and starts the real stack from the shoal binary as separate
//     processes: one broker, -workers echo workers and one frontend. It
//     waits until the frontend's /readyz answers and /echo works.
//  2. It starts a bare fasthttp server inside this process that answers
//     every request with a reply of exactly the pipeline's size (same
//     headers, same body; the sizes are measured on the wire and printed).
//  3. It drives both with the same load: -conns keep-alive connections
//     POSTing a -body byte body to /echo for -d after a -warmup, with wrk
//     when it is on PATH (-load=wrk) or with the Go load generator of this
//     package (-load=go).
//  4. Targets alternate within each of -rounds rounds (bare, pipeline,
//     bare, pipeline, …), because this machine's speed drifts by ±20 %
//     between rounds: a pipeline round is compared with the bare round next
//     to it.
//  5. Everything it started is stopped with SIGTERM at the end, on failure
//     and on Ctrl-C (children also get SIGTERM if bench itself dies).
//
// Usage:
//
//	make bench                                  # go run ./bench -shoal bin/shoal
//	go run ./bench -shoal bin/shoal -rounds 5 -out bench/results/run.json
//	go run ./bench -shoal bin/shoal -conns 1    # one connection: latency
//	go run ./bench -shoal bin/shoal -p1         # add a GOMAXPROCS=1 broker+worker variant
//	go build -o /tmp/shoal-sym ./cmd/shoal      # symbols for perf (make build strips them)
//	go run ./bench -shoal /tmp/shoal-sym -syscalls -perf-record /tmp/prof
//
// # Reading the output
//
// The rounds table has one line per target and round: req/s, the 50th, 90th
// and 99th latency percentiles, errors (non-2xx answers, socket errors),
// the ratio to the bare round just before, "irq": the cores spent in
// interrupts (mostly the kernel's loopback TCP work for this traffic, which
// no process is charged for), and "others": the cores that processes
// outside the benchmark used during the window. Before each window bench
// waits up to -quiet for the machine to be idle; a window where others
// exceed 0.10 cores is measured again (-retries) and, if still noisy,
// marked "!": its figures are suspect.
//
// The process table gives, per process and round, the CPU time it used in
// the measured window, that time divided by the requests served
// (CPU-µs/req: the cost of one request in that process, the figure to
// compare across machines and runs), its context switches per request
// (all threads; every sleep and wake-up of a thread is one, and on a VM
// each costs tens of µs of CPU) and its resident memory at the end of the
// window. For bare, the "bench" line is this process, that is the bare
// server when wrk drives the load (with -load=go it includes the load
// generator); its RSS is n/a since the process also holds bench itself.
// The "load" line is the load generator's CPU: on a 2-core machine it
// competes with the targets.
//
// The summary gives per target the medians over rounds, and
//
//	RATIO pipeline/bare = 0.xx (target >= 0.40)
//
// is the median over rounds of pipeline req/s divided by the bare req/s of
// the same round. With -conns 1 the interesting figure is p50: what the
// pipeline adds to one request's latency.
//
// -syscalls and -perf-record add one more window per target after the
// rounds (not counted in them), with perf attached to every process of the
// target: syscalls per request by syscall (perf stat on the syscall
// tracepoints) and the hottest functions (perf record, cpu-clock). Both
// need perf and enough privileges; symbols need a binary built without
// -s -w. The perf.data files stay in the -perf-record directory for
// `perf report -i`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

// options are the command-line flags.
type options struct {
	shoal         string
	workers       int
	brokerProcs   int
	frontendProcs int
	workerProcs   int
	p1            bool
	load          string
	duration      time.Duration
	warmup        time.Duration
	rounds        int
	conns         int
	threads       int
	bodySize      int
	out           string
	syscalls      bool
	perfRecord    string
	keep          bool
	quiet         time.Duration
	retries       int
}

func parseFlags() options {
	var o options
	defLoad := "go"
	if _, err := exec.LookPath("wrk"); err == nil {
		defLoad = "wrk"
	}
	flag.StringVar(&o.shoal, "shoal", "bin/shoal", "the shoal `binary` to run (make build)")
	flag.IntVar(&o.workers, "workers", 1, "echo worker processes")
	flag.IntVar(&o.brokerProcs, "broker-procs", 0, "GOMAXPROCS of the broker (0 = unset)")
	flag.IntVar(&o.frontendProcs, "frontend-procs", 0, "GOMAXPROCS of the frontend (0 = unset)")
	flag.IntVar(&o.workerProcs, "worker-procs", 0, "GOMAXPROCS of each worker (0 = unset)")
	flag.BoolVar(&o.p1, "p1", false, "also measure a second stack, pipeline-p1, whose broker and workers run with GOMAXPROCS=1")
	flag.StringVar(&o.load, "load", defLoad, "load generator: wrk or go (default wrk when on PATH)")
	flag.DurationVar(&o.duration, "d", 10*time.Second, "measured duration of each target in each round")
	flag.DurationVar(&o.warmup, "warmup", 3*time.Second, "unmeasured load before each measured window")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds; each measures every target once, interleaved")
	flag.IntVar(&o.conns, "conns", 64, "concurrent connections (1 = latency mode)")
	flag.IntVar(&o.threads, "threads", 2, "wrk threads (at most -conns)")
	flag.IntVar(&o.bodySize, "body", 100, "request body size in bytes")
	flag.StringVar(&o.out, "out", "", "also write the results as JSON to this `file`")
	flag.BoolVar(&o.syscalls, "syscalls", false, "after the rounds, count syscalls per request in each pipeline process (perf stat)")
	flag.StringVar(&o.perfRecord, "perf-record", "", "after the rounds, record a CPU profile of each pipeline process into this `dir` (perf record) and print the top functions")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory (configs, logs)")
	flag.IntVar(&o.retries, "retries", 2, "measure a window again, at most this many times, when other processes used more than 0.10 cores during it")
	flag.DurationVar(&o.quiet, "quiet", 30*time.Second, "before each window, wait up to this long for other processes to leave the CPUs idle (0 = do not wait)")
	flag.Parse()
	return o
}

func (o *options) validate() error {
	var errs []error
	if o.workers < 1 {
		errs = append(errs, errors.New("-workers must be at least 1"))
	}
	if o.load != "wrk" && o.load != "go" {
		errs = append(errs, fmt.Errorf("-load must be wrk or go, got %q", o.load))
	}
	if o.load == "wrk" {
		if _, err := exec.LookPath("wrk"); err != nil {
			errs = append(errs, errors.New("-load=wrk: wrk is not on PATH"))
		}
	}
	if o.duration < time.Second || o.duration > 10*time.Minute {
		errs = append(errs, errors.New("-d must be between 1s and 10m"))
	}
	if o.warmup < 0 || o.warmup > 5*time.Minute {
		errs = append(errs, errors.New("-warmup must be between 0 and 5m"))
	}
	if o.quiet < 0 || o.quiet > 10*time.Minute {
		errs = append(errs, errors.New("-quiet must be between 0 and 10m"))
	}
	if o.retries < 0 || o.retries > 10 {
		errs = append(errs, errors.New("-retries must be between 0 and 10"))
	}
	if o.rounds < 1 || o.rounds > 50 {
		errs = append(errs, errors.New("-rounds must be between 1 and 50"))
	}
	if o.conns < 1 || o.conns > 4096 {
		errs = append(errs, errors.New("-conns must be between 1 and 4096"))
	}
	if o.threads < 1 {
		errs = append(errs, errors.New("-threads must be at least 1"))
	}
	if o.bodySize < 1 || o.bodySize > 1<<20 {
		errs = append(errs, errors.New("-body must be between 1 and 1048576"))
	}
	for _, p := range []int{o.brokerProcs, o.frontendProcs, o.workerProcs} {
		if p < 0 {
			errs = append(errs, errors.New("-*-procs must not be negative"))
			break
		}
	}
	abs, err := filepath.Abs(o.shoal)
	if err == nil {
		o.shoal = abs
	}
	if st, err := os.Stat(o.shoal); err != nil || st.IsDir() {
		errs = append(errs, fmt.Errorf("-shoal %s: not a file (run make build)", o.shoal))
	}
	return errors.Join(errs...)
}

// budget bounds the whole run: every window plus generous slack for
// start-up, readiness and shutdown.
func (o *options) budget(targets int) time.Duration {
	windows := o.rounds * targets * (1 + o.retries)
	if o.syscalls || o.perfRecord != "" {
		windows++
	}
	return time.Duration(windows)*(o.warmup+o.duration+o.quiet+30*time.Second) + 2*time.Minute
}

func main() {
	o := parseFlags()
	if err := o.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	// The first Ctrl-C cancels the run, which then stops every process it
	// started; after it, signals get their default action again.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop()
	}()
	err := run(ctx, o)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}
