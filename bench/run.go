package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// target is one thing under load: the bare server or a pipeline stack.
type target struct {
	name  string
	url   string
	stack *stack // nil for bare
}

// procResult is one process's share of a window.
type procResult struct {
	Name      string        `json:"name"`
	PID       int           `json:"pid,omitempty"`
	CPU       time.Duration `json:"cpu_ns"`
	CPUPerReq float64       `json:"cpu_us_per_req"`
	RSSKiB    int64         `json:"rss_kib"` // -1: not applicable
	// SwitchesPerReq is context switches (all threads) per request;
	// -1: not measured (the load generator).
	SwitchesPerReq float64 `json:"ctx_switches_per_req"`
}

// window is one measured load window of one target.
type window struct {
	Round  int          `json:"round"`
	Target string       `json:"target"`
	Load   loadResult   `json:"load"`
	Procs  []procResult `json:"procs"` // the target's processes, then "total" (pipeline) and "load"
	Ratio  float64      `json:"ratio_to_bare,omitempty"`
	// Others is the CPU that processes outside the benchmark used during
	// the window, in cores (1.0 = one CPU busy the whole time). Above ~0.1
	// the machine was not quiet and the window's figures are suspect.
	Others float64 `json:"other_cores"`
	// IRQ is the interrupt time in the window, in cores: mostly the
	// kernel's loopback TCP work for this window's traffic.
	IRQ float64 `json:"irq_cores"`
}

// analysis is the extra perf window of one target.
type analysis struct {
	Target    string                        `json:"target"`
	Requests  int64                         `json:"requests"`
	RPS       float64                       `json:"rps"`
	Syscalls  map[string]map[string]float64 `json:"syscalls_per_req,omitempty"` // process → syscall → per request
	TopFuncs  map[string][]string           `json:"top_functions,omitempty"`    // process → "pct symbol"
	Processes []string                      `json:"processes"`
	Notes     []string                      `json:"notes,omitempty"`
}

// results is everything a run measured; -out writes it as JSON.
type results struct {
	Started    time.Time  `json:"started"`
	Load       string     `json:"load"`
	Conns      int        `json:"conns"`
	Duration   string     `json:"duration"`
	Warmup     string     `json:"warmup"`
	Rounds     int        `json:"rounds"`
	Workers    int        `json:"workers"`
	Body       int        `json:"request_body_bytes"`
	ReplyBytes int        `json:"reply_bytes_pipeline"`
	BareBytes  int        `json:"reply_bytes_bare"`
	Windows    []window   `json:"windows"`
	Summary    []summary  `json:"summary"`
	Ratio      float64    `json:"ratio_pipeline_bare"`
	Analysis   []analysis `json:"analysis,omitempty"`
}

func run(ctx context.Context, o options) (err error) {
	specs := []stackSpec{{name: "pipeline", workers: o.workers,
		brokerProcs: o.brokerProcs, frontendProcs: o.frontendProcs, workerProcs: o.workerProcs}}
	if o.p1 {
		specs = append(specs, stackSpec{name: "pipeline-p1", workers: o.workers,
			brokerProcs: 1, frontendProcs: o.frontendProcs, workerProcs: 1})
	}
	ctx, cancel := context.WithTimeout(ctx, o.budget(len(specs)+1))
	defer cancel()

	dir, err := os.MkdirTemp("", "shoal-bench-")
	if err != nil {
		return err
	}
	defer func() {
		if o.keep || (err != nil && !errors.Is(err, context.Canceled)) {
			fmt.Fprintf(os.Stderr, "bench: configs and logs kept in %s\n", dir)
			return
		}
		os.RemoveAll(dir)
	}()

	// The stacks, then the bare server shaped after the pipeline's reply.
	var stacks []*stack
	defer func() {
		for _, s := range stacks {
			s.stop()
		}
	}()
	for _, spec := range specs {
		s, err := startStack(ctx, o.shoal, dir, spec)
		if err != nil {
			return err
		}
		stacks = append(stacks, s)
		pids := make([]string, len(s.procs))
		for i, p := range s.procs {
			pids[i] = fmt.Sprintf("%s=%d", p.name, p.pid())
		}
		fmt.Printf("%s ready at %s (%s)\n", spec.name, s.url, strings.Join(pids, " "))
	}
	body := requestBody(o.bodySize)
	replyBytes, ref, err := rawExchange(stacks[0].listen, "/echo", body)
	if err != nil {
		return fmt.Errorf("sizing the pipeline's reply: %w", err)
	}
	bare, err := startBare(ref)
	if err != nil {
		return err
	}
	defer bare.close()
	bareBytes, err := bare.matchSize("/echo", body, replyBytes)
	if err != nil {
		return fmt.Errorf("sizing the bare reply: %w", err)
	}
	fmt.Printf("bare ready at %s (in this process, pid %d)\n", bare.url, os.Getpid())
	fmt.Printf("reply on the wire: pipeline %d bytes, bare %d bytes; request body %d bytes\n", replyBytes, bareBytes, len(body))

	var ld loader
	if o.load == "wrk" {
		if ld, err = newWrkLoader(dir, o.threads, o.conns, body); err != nil {
			return err
		}
	} else {
		ld = &goLoader{conns: o.conns, body: body}
	}

	targets := []target{{name: "bare", url: bare.url}}
	for _, s := range stacks {
		targets = append(targets, target{name: s.spec.name, url: s.url, stack: s})
	}
	res := &results{Started: time.Now(), Load: o.load, Conns: o.conns, Duration: o.duration.String(),
		Warmup: o.warmup.String(), Rounds: o.rounds, Workers: o.workers, Body: len(body),
		ReplyBytes: replyBytes, BareBytes: bareBytes}
	fmt.Printf("\n%d rounds × %d targets, %s load, %d connections, %v measured after %v warm-up each\n",
		o.rounds, len(targets), o.load, o.conns, o.duration, o.warmup)

	for round := 1; round <= o.rounds; round++ {
		var bareRPS float64
		for _, t := range targets {
			w, err := measure(ctx, o, ld, t, targets)
			for retry := 0; err == nil && w.Others > busyCores && retry < o.retries; retry++ {
				fmt.Printf("  round %d %-12s other processes used %.2f cores: measuring again\n", round, t.name, w.Others)
				w, err = measure(ctx, o, ld, t, targets)
			}
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", round, t.name, err)
			}
			w.Round = round
			if t.stack == nil {
				bareRPS = w.Load.RPS
			} else if bareRPS > 0 {
				w.Ratio = w.Load.RPS / bareRPS
			}
			res.Windows = append(res.Windows, w)
			printProgress(w)
		}
	}
	res.Summary = summarize(res.Windows, targets)
	res.Ratio = medianRatio(res.Windows, "pipeline")

	if o.syscalls || o.perfRecord != "" {
		for _, t := range targets {
			if err := waitQuiet(ctx, o.quiet, targets); err != nil {
				return err
			}
			a, err := analyze(ctx, o, ld, t, dir)
			if err != nil {
				return fmt.Errorf("perf window, %s: %w", t.name, err)
			}
			res.Analysis = append(res.Analysis, a)
		}
	}

	printReport(os.Stdout, res, targets)
	if o.out != "" {
		if err := writeJSON(o.out, res); err != nil {
			return err
		}
		fmt.Printf("\nresults written to %s\n", o.out)
	}
	return nil
}

// measure runs one warm-up and one measured window against t and samples
// every process of t around the measured one.
func measure(ctx context.Context, o options, ld loader, t target, all []target) (window, error) {
	w := window{Target: t.name}
	if err := waitQuiet(ctx, o.quiet, all); err != nil {
		return w, err
	}
	if o.warmup > 0 {
		if _, err := ld.run(ctx, t.url, o.warmup); err != nil {
			return w, fmt.Errorf("warm-up: %w", err)
		}
	}
	busy0, irq0, err := machineBusy()
	if err != nil {
		return w, err
	}
	before, self0, err := sample(t)
	if err != nil {
		return w, err
	}
	selfSw0 := contextSwitches(os.Getpid())
	t0 := time.Now()
	lr, err := ld.run(ctx, t.url, o.duration)
	if err != nil {
		return w, err
	}
	elapsed := time.Since(t0)
	after, self1, err := sample(t)
	if err != nil {
		return w, err
	}
	selfSw1 := contextSwitches(os.Getpid())
	busy1, irq1, err := machineBusy()
	if err != nil {
		return w, err
	}
	if t.stack != nil {
		if err := t.stack.check(); err != nil {
			return w, err
		}
	}
	w.Load = lr
	reqs := float64(max(lr.Requests, 1))
	perReq := func(d time.Duration) float64 { return float64(d.Microseconds()) / reqs }
	if t.stack == nil {
		// The bare server lives in this process.
		cpu := self1 - self0
		sw := float64(selfSw1-selfSw0) / reqs
		w.Procs = append(w.Procs, procResult{Name: "bench", PID: os.Getpid(), CPU: cpu, CPUPerReq: perReq(cpu), RSSKiB: -1, SwitchesPerReq: sw})
	} else {
		var total time.Duration
		var rss, sw int64
		for i, p := range t.stack.procs {
			cpu := after[i].cpu - before[i].cpu
			d := after[i].switches - before[i].switches
			total += cpu
			rss += after[i].rssKiB
			sw += d
			w.Procs = append(w.Procs, procResult{Name: p.name, PID: p.pid(), CPU: cpu, CPUPerReq: perReq(cpu),
				RSSKiB: after[i].rssKiB, SwitchesPerReq: float64(d) / reqs})
		}
		w.Procs = append(w.Procs, procResult{Name: "total", CPU: total, CPUPerReq: perReq(total), RSSKiB: rss, SwitchesPerReq: float64(sw) / reqs})
	}
	w.Procs = append(w.Procs, procResult{Name: "load", CPU: lr.LoadCPU, CPUPerReq: perReq(lr.LoadCPU), RSSKiB: -1, SwitchesPerReq: -1})

	// Ours: the stack's processes, this process (bare server and/or the Go
	// load generator) and wrk.
	ours := self1 - self0
	for i := range before {
		ours += after[i].cpu - before[i].cpu
	}
	if o.load == "wrk" {
		ours += lr.LoadCPU
	}
	w.Others = max(0, (busy1-busy0-ours).Seconds()/elapsed.Seconds())
	w.IRQ = (irq1 - irq0).Seconds() / elapsed.Seconds()
	return w, nil
}

// waitQuiet waits, at most limit, until processes outside the benchmark use
// less than busyCores for one second: on a shared machine a window started
// while something else runs measures the neighbour as much as the target.
func waitQuiet(ctx context.Context, limit time.Duration, targets []target) error {
	if limit <= 0 {
		return nil
	}
	deadline := time.Now().Add(limit)
	for {
		others, err := idleOthers(ctx, time.Second, targets)
		if err != nil || others < busyCores {
			return err
		}
		if time.Now().After(deadline) {
			fmt.Printf("  (machine still busy after %v: other processes use %.2f cores; measuring anyway)\n", limit, others)
			return nil
		}
	}
}

// idleOthers measures, over d with no load running, the cores used by
// processes that are not part of the benchmark.
func idleOthers(ctx context.Context, d time.Duration, targets []target) (float64, error) {
	ours := func() time.Duration {
		sum := selfCPU()
		for _, t := range targets {
			if us, _, err := sample(t); err == nil {
				for _, u := range us {
					sum += u.cpu
				}
			}
		}
		return sum
	}
	b0, _, err := machineBusy()
	if err != nil {
		return 0, err
	}
	o0, t0 := ours(), time.Now()
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(d):
	}
	b1, _, err := machineBusy()
	if err != nil {
		return 0, err
	}
	o1 := ours()
	return max(0, (b1-b0-(o1-o0)).Seconds()/time.Since(t0).Seconds()), nil
}

// sample reads the usage of every process of t, and this process's CPU.
func sample(t target) ([]usage, time.Duration, error) {
	self := selfCPU()
	if t.stack == nil {
		return nil, self, nil
	}
	us := make([]usage, len(t.stack.procs))
	for i, p := range t.stack.procs {
		u, err := readUsage(p.pid())
		if err != nil {
			if cerr := t.stack.check(); cerr != nil {
				return nil, 0, cerr
			}
			return nil, 0, err
		}
		us[i] = u
	}
	return us, self, nil
}

// analyze runs one more window against t with perf attached to each of its
// processes: syscall counts (-syscalls) and CPU samples (-perf-record).
func analyze(ctx context.Context, o options, ld loader, t target, tmp string) (analysis, error) {
	a := analysis{Target: t.name}
	type attached struct {
		name string
		pid  int
	}
	var ps []attached
	if t.stack == nil {
		ps = append(ps, attached{"bench", os.Getpid()})
	} else {
		for _, p := range t.stack.procs {
			ps = append(ps, attached{p.name, p.pid()})
		}
	}
	for _, p := range ps {
		a.Processes = append(a.Processes, p.name)
	}
	if o.warmup > 0 {
		if _, err := ld.run(ctx, t.url, o.warmup); err != nil {
			return a, fmt.Errorf("warm-up: %w", err)
		}
	}
	recDir := o.perfRecord
	if recDir != "" {
		if err := os.MkdirAll(recDir, 0o755); err != nil {
			return a, err
		}
	}
	var stats, recs []*perfRun
	stopAll := func() error {
		var errs []error
		for _, r := range append(stats, recs...) {
			errs = append(errs, r.stop())
		}
		stats, recs = nil, nil
		return errors.Join(errs...)
	}
	defer stopAll()
	for _, p := range ps {
		if o.syscalls {
			r, err := startPerf(ctx, "stat", tmp, t.name+"-"+p.name, p.pid)
			if err != nil {
				return a, err
			}
			stats = append(stats, r)
		}
		if recDir != "" {
			r, err := startPerf(ctx, "record", recDir, t.name+"-"+p.name, p.pid)
			if err != nil {
				return a, err
			}
			recs = append(recs, r)
		}
	}
	time.Sleep(300 * time.Millisecond) // let perf attach before the load starts
	lr, err := ld.run(ctx, t.url, o.duration)
	if err != nil {
		return a, err
	}
	statRuns, recRuns := stats, recs
	if err := stopAll(); err != nil {
		a.Notes = append(a.Notes, err.Error())
	}
	a.Requests, a.RPS = lr.Requests, lr.RPS
	if len(statRuns) > 0 {
		a.Syscalls = make(map[string]map[string]float64)
		for _, r := range statRuns {
			counts, err := syscallCounts(r.out)
			if err != nil {
				a.Notes = append(a.Notes, err.Error())
				continue
			}
			name := strings.TrimPrefix(r.proc, t.name+"-")
			m := make(map[string]float64, len(counts))
			for k, v := range counts {
				m[k] = float64(v) / float64(max(lr.Requests, 1))
			}
			a.Syscalls[name] = m
		}
	}
	if len(recRuns) > 0 {
		a.TopFuncs = make(map[string][]string)
		for _, r := range recRuns {
			top, err := topSymbols(ctx, r.out, 15)
			if err != nil {
				a.Notes = append(a.Notes, err.Error())
				continue
			}
			a.TopFuncs[strings.TrimPrefix(r.proc, t.name+"-")] = top
		}
		a.Notes = append(a.Notes, "perf data in "+filepath.Clean(recDir))
	}
	return a, nil
}
