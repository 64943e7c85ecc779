package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/supervisor"
)

// The figures of item 3, from the real binary:
//
//	go test -run '^$' -bench . -benchtime 200x ./supervisor/e2e
//
// BenchmarkRestartGap kills a child that is past its startsecs b.N times
// with SIGKILL and reports the gap until its replacement has started:
// from the kill(2) call (kill-p50-ms, kill-p99-ms) and as the supervisor
// sees it, from reaping the dead child to the new one's exec
// (reap-p50-ms, reap-p99-ms). BenchmarkSupervisorRSS reports the
// supervisor's resident memory with 20 children running.

func BenchmarkRestartGap(b *testing.B) {
	s := newStack(b, `programs:
  - {name: s, command: sleep 100000, startsecs: 20ms}
`)
	s.writeConfig(strings.Replace(brokerHead, "log: {level: debug}", "log: {level: warn}", 1) + `programs:
  - {name: s, command: sleep 100000, startsecs: 20ms}
`)
	s.start()
	ctx := context.Background()
	status := func() supervisor.Status {
		st, err := s.c.Status(ctx, "s:0")
		if err != nil || len(st) != 1 {
			b.Fatalf("status: %v %v", st, err)
		}
		return st[0]
	}
	var kills []time.Duration
	prev := status()
	b.ResetTimer()
	for range b.N {
		for prev.State != supervisor.Running || time.Since(prev.Started) < 25*time.Millisecond {
			time.Sleep(time.Millisecond)
			prev = status()
		}
		killed := time.Now()
		syscall.Kill(prev.PID, syscall.SIGKILL)
		next := status()
		for next.PID == prev.PID || next.PID == 0 {
			time.Sleep(200 * time.Microsecond)
			next = status()
		}
		kills = append(kills, next.Started.Sub(killed))
		prev = next
	}
	b.StopTimer()
	gaps, err := s.c.Gaps(ctx)
	if err != nil {
		b.Fatal(err)
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(pct(kills, 50)), "kill-p50-ms")
	b.ReportMetric(ms(pct(kills, 99)), "kill-p99-ms")
	b.ReportMetric(ms(pct(gaps, 50)), "reap-p50-ms")
	b.ReportMetric(ms(pct(gaps, 99)), "reap-p99-ms")
	b.ReportMetric(0, "ns/op")
}

func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(0, min(len(s)-1, i-1))]
}

func BenchmarkSupervisorRSS(b *testing.B) {
	// One measurement, whatever b.N: each starts a supervisor and 20
	// children.
	burst, settled := rssWith20Children(b)
	b.ReportMetric(float64(burst)/(1<<20), "burst-rss-MB")
	b.ReportMetric(float64(settled)/(1<<20), "rss-MB")
	b.ReportMetric(0, "ns/op")
}

// rssWith20Children runs the supervisor with 20 children, puts it
// through 100 status calls, a restart of 10 children and a tail of all
// 40 logs, and returns its resident memory right after that burst and
// once it has settled (the supervisor returns a burst's memory to the OS
// 2s after the last control request).
func rssWith20Children(tb testing.TB) (burst, settled int64) {
	s := newStack(tb, "")
	s.writeConfig(strings.Replace(brokerHead, "log: {level: debug}", "log: {level: info}", 1) + `programs:
  - {name: a, numprocs: 10, command: sleep 100000, startsecs: 0s}
  - {name: b, numprocs: 10, command: [/bin/sh, -c, 'echo started; exec sleep 100000'], startsecs: 0s}
`)
	s.start()
	st := s.waitRunning(10 * time.Second)
	if len(st) != 20 {
		tb.Fatalf("%d instances, want 20", len(st))
	}
	ctx := context.Background()
	for range 100 {
		if _, err := s.c.Status(ctx); err != nil {
			tb.Fatal(err)
		}
	}
	if _, err := s.c.Restart(ctx, []string{"b"}, false, 0); err != nil {
		tb.Fatal(err)
	}
	var out bytes.Buffer
	if err := s.c.Tail(ctx, &out, supervisor.TailOptions{Names: []string{"all"}}); err != nil {
		tb.Fatal(err)
	}
	if all, err := s.c.Status(ctx); err != nil || len(all) != 20 {
		tb.Fatalf("status: %v %v", all, err)
	}
	burst = rss(tb, s.cmd.Process.Pid)
	time.Sleep(3 * time.Second)
	return burst, rss(tb, s.cmd.Process.Pid)
}

// rss reads VmRSS of pid, in bytes.
func rss(tb testing.TB, pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	tb.Fatal("no VmRSS")
	return 0
}

// Item 3: the supervisor stays within 15 MB of resident memory with 20
// children.
func TestSupervisorMemoryWith20Children(t *testing.T) {
	burst, r := rssWith20Children(t)
	t.Logf("supervisor RSS with 20 children: %.1f MB (%.1f MB right after a burst of control requests)", float64(r)/(1<<20), float64(burst)/(1<<20))
	if r > 15<<20 {
		t.Errorf("supervisor RSS %.1f MB with 20 children, want ≤ 15 MB", float64(r)/(1<<20))
	}
}
