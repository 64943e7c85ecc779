package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"text/tabwriter"
	"time"
)

// busyCores is the CPU of other processes, in cores, above which a window
// is flagged as noisy.
const busyCores = 0.10

// summary is one target's medians over the rounds.
type summary struct {
	Target string        `json:"target"`
	RPS    float64       `json:"rps"`
	P50    time.Duration `json:"p50_ns"`
	P99    time.Duration `json:"p99_ns"`
	Ratio  float64       `json:"ratio_to_bare,omitempty"` // median of the rounds' ratios
	Procs  []procMedian  `json:"procs"`
}

type procMedian struct {
	Name           string  `json:"name"`
	CPUPerReq      float64 `json:"cpu_us_per_req"`
	SwitchesPerReq float64 `json:"ctx_switches_per_req"`
	RSSKiB         int64   `json:"rss_kib"`
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func summarize(ws []window, targets []target) []summary {
	var out []summary
	for _, t := range targets {
		var rps, p50, p99, ratio []float64
		cpu := map[string][]float64{}
		rss := map[string][]float64{}
		sw := map[string][]float64{}
		var names []string
		for _, w := range ws {
			if w.Target != t.name {
				continue
			}
			rps = append(rps, w.Load.RPS)
			p50 = append(p50, float64(w.Load.P50))
			p99 = append(p99, float64(w.Load.P99))
			if w.Ratio > 0 {
				ratio = append(ratio, w.Ratio)
			}
			for _, p := range w.Procs {
				if _, ok := cpu[p.Name]; !ok {
					names = append(names, p.Name)
				}
				cpu[p.Name] = append(cpu[p.Name], p.CPUPerReq)
				rss[p.Name] = append(rss[p.Name], float64(p.RSSKiB))
				sw[p.Name] = append(sw[p.Name], p.SwitchesPerReq)
			}
		}
		s := summary{Target: t.name, RPS: median(rps), P50: time.Duration(median(p50)),
			P99: time.Duration(median(p99)), Ratio: median(ratio)}
		for _, n := range names {
			s.Procs = append(s.Procs, procMedian{Name: n, CPUPerReq: median(cpu[n]),
				SwitchesPerReq: median(sw[n]), RSSKiB: int64(median(rss[n]))})
		}
		out = append(out, s)
	}
	return out
}

// medianRatio is the median over rounds of name's req/s divided by bare's
// in the same round.
func medianRatio(ws []window, name string) float64 {
	var rs []float64
	for _, w := range ws {
		if w.Target == name && w.Ratio > 0 {
			rs = append(rs, w.Ratio)
		}
	}
	return median(rs)
}

// printProgress prints one line as each window ends.
func printProgress(w window) {
	ratio := ""
	if w.Ratio > 0 {
		ratio = fmt.Sprintf("  ×bare %.2f", w.Ratio)
	}
	warn := ""
	if w.Others > busyCores {
		warn = fmt.Sprintf("  (other processes used %.2f cores: noisy)", w.Others)
	}
	fmt.Printf("  round %d %-12s %9.0f req/s  p50 %-8s p99 %-8s%s%s\n",
		w.Round, w.Target, w.Load.RPS, shortDur(w.Load.P50), shortDur(w.Load.P99), ratio, warn)
}

func rss(kib int64) string {
	if kib < 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.1f MiB", float64(kib)/1024)
}

func printReport(out io.Writer, r *results, targets []target) {
	fmt.Fprintf(out, "\n== Rounds (%s, %d conns, %s each after %s warm-up; reply %d B pipeline, %d B bare)\n",
		r.Load, r.Conns, r.Duration, r.Warmup, r.ReplyBytes, r.BareBytes)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "round\ttarget\treq/s\tp50\tp90\tp99\trequests\terrors\t×bare\tirq\tothers\t")
	noisy := 0
	for _, w := range r.Windows {
		ratio := ""
		if w.Ratio > 0 {
			ratio = fmt.Sprintf("%.2f", w.Ratio)
		}
		mark := ""
		if w.Others > busyCores {
			mark, noisy = "!", noisy+1
		}
		fmt.Fprintf(tw, "%d\t%s\t%.0f\t%s\t%s\t%s\t%d\t%d\t%s\t%.2f\t%.2f%s\t\n", w.Round, w.Target, w.Load.RPS,
			shortDur(w.Load.P50), shortDur(w.Load.P90), shortDur(w.Load.P99), w.Load.Requests, w.Load.Errors, ratio, w.IRQ, w.Others, mark)
	}
	tw.Flush()
	fmt.Fprintln(out, "(irq: cores spent in interrupts, mostly loopback TCP for this traffic; others: cores used by processes outside the benchmark)")
	if noisy > 0 {
		fmt.Fprintf(out, "WARNING: in %d window(s) (!) other processes used more than %.2f cores: the machine was not quiet, req/s and ratios are unreliable\n", noisy, busyCores)
	}

	fmt.Fprintf(out, "\n== CPU and memory per process in each measured window (bench = this process: the bare server; load = the load generator)\n")
	tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "round\ttarget\tprocess\tpid\tCPU-s\tCPU-µs/req\tctxsw/req\tRSS\t")
	for _, w := range r.Windows {
		for _, p := range w.Procs {
			pid := "-"
			if p.PID > 0 {
				pid = fmt.Sprint(p.PID)
			}
			sw := "-"
			if p.SwitchesPerReq >= 0 {
				sw = fmt.Sprintf("%.3f", p.SwitchesPerReq)
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%.2f\t%.1f\t%s\t%s\t\n", w.Round, w.Target, p.Name, pid, p.CPU.Seconds(), p.CPUPerReq, sw, rss(p.RSSKiB))
		}
	}
	tw.Flush()

	fmt.Fprintf(out, "\n== Medians over %d rounds\n", r.Rounds)
	tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "target\treq/s\tp50\tp99\t×bare\t")
	for _, s := range r.Summary {
		ratio := ""
		if s.Ratio > 0 {
			ratio = fmt.Sprintf("%.2f", s.Ratio)
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%s\t%s\t%s\t\n", s.Target, s.RPS, shortDur(s.P50), shortDur(s.P99), ratio)
	}
	tw.Flush()
	fmt.Fprintln(out)
	tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "target\tprocess\tCPU-µs/req\tctxsw/req\tRSS\t")
	for _, s := range r.Summary {
		for _, p := range s.Procs {
			sw := "-"
			if p.SwitchesPerReq >= 0 {
				sw = fmt.Sprintf("%.3f", p.SwitchesPerReq)
			}
			fmt.Fprintf(tw, "%s\t%s\t%.1f\t%s\t%s\t\n", s.Target, p.Name, p.CPUPerReq, sw, rss(p.RSSKiB))
		}
	}
	tw.Flush()

	for _, a := range r.Analysis {
		printAnalysis(out, a)
	}

	fmt.Fprintln(out)
	if r.Conns == 1 {
		for _, s := range r.Summary {
			fmt.Fprintf(out, "P50 1 conn %s = %s\n", s.Target, shortDur(s.P50))
		}
	}
	for _, s := range r.Summary {
		if s.Target != "pipeline" && s.Ratio > 0 {
			fmt.Fprintf(out, "ratio %s/bare = %.2f\n", s.Target, s.Ratio)
		}
	}
	fmt.Fprintf(out, "RATIO pipeline/bare = %.2f (target >= 0.40)\n", r.Ratio)
}

func printAnalysis(out io.Writer, a analysis) {
	fmt.Fprintf(out, "\n== perf window: %s, %.0f req/s with perf attached (not part of the rounds)\n", a.Target, a.RPS)
	if len(a.Syscalls) > 0 {
		// Rows: syscalls seen anywhere, total first; columns: processes.
		seen := map[string]bool{}
		for _, m := range a.Syscalls {
			for k, v := range m {
				if v > 0.001 {
					seen[k] = true
				}
			}
		}
		var rows []string
		for k := range seen {
			if k != "total" {
				rows = append(rows, k)
			}
		}
		sort.Strings(rows)
		rows = append([]string{"total"}, rows...)
		tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprint(tw, "syscalls/req\t")
		for _, p := range a.Processes {
			fmt.Fprintf(tw, "%s\t", p)
		}
		fmt.Fprintln(tw)
		for _, row := range rows {
			fmt.Fprintf(tw, "%s\t", row)
			for _, p := range a.Processes {
				fmt.Fprintf(tw, "%.3f\t", a.Syscalls[p][row])
			}
			fmt.Fprintln(tw)
		}
		tw.Flush()
	}
	for _, p := range a.Processes {
		if top := a.TopFuncs[p]; len(top) > 0 {
			fmt.Fprintf(out, "-- hottest functions in %s (self CPU)\n", p)
			for _, l := range top {
				fmt.Fprintf(out, "   %s\n", l)
			}
		}
	}
	for _, n := range a.Notes {
		fmt.Fprintf(out, "note: %s\n", n)
	}
}

func writeJSON(path string, r *results) error {
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
