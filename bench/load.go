package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
)

// loadResult is what one measured window of load produced.
type loadResult struct {
	Requests int64         `json:"requests"`
	Elapsed  time.Duration `json:"elapsed_ns"`
	RPS      float64       `json:"rps"`
	P50      time.Duration `json:"p50_ns"`
	P90      time.Duration `json:"p90_ns"`
	P99      time.Duration `json:"p99_ns"`
	Errors   int64         `json:"errors"`      // non-2xx answers and socket errors
	LoadCPU  time.Duration `json:"load_cpu_ns"` // the load generator's CPU time; 0 if unknown
}

// loader drives HTTP load against one URL.
type loader interface {
	run(ctx context.Context, url string, d time.Duration) (loadResult, error)
}

// requestBody is the body every request carries: printable, so that the
// echo worker's JSON reply holds it unescaped.
func requestBody(n int) []byte {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[i%len(alphabet)]
	}
	return b
}

// wrkLoader runs wrk with a Lua script that POSTs the body.
type wrkLoader struct {
	threads, conns int
	script         string
}

func newWrkLoader(dir string, threads, conns int, body []byte) (*wrkLoader, error) {
	script := filepath.Join(dir, "post.lua")
	lua := fmt.Sprintf("wrk.method = \"POST\"\nwrk.body = %q\nwrk.headers[\"Content-Type\"] = \"text/plain\"\n", body)
	if err := os.WriteFile(script, []byte(lua), 0o644); err != nil {
		return nil, err
	}
	return &wrkLoader{threads: min(threads, conns), conns: conns, script: script}, nil
}

var (
	wrkRPS      = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkTotal    = regexp.MustCompile(`(\d+) requests in ([0-9.]+)(us|ms|s|m|h)`)
	wrkPct      = regexp.MustCompile(`(?m)^\s+(50|75|90|99)%\s+([0-9.]+)(us|ms|s|m|h)\s*$`)
	wrkNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	wrkSockErrs = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

func (w *wrkLoader) run(ctx context.Context, target string, d time.Duration) (loadResult, error) {
	secs := max(1, int((d+time.Second-1)/time.Second)) // wrk takes whole seconds
	cmd := exec.CommandContext(ctx, "wrk", "-t", strconv.Itoa(w.threads), "-c", strconv.Itoa(w.conns),
		"-d", strconv.Itoa(secs)+"s", "--latency", "-s", w.script, target)
	cmd.WaitDelay = 5 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return loadResult{}, ctx.Err()
		}
		return loadResult{}, fmt.Errorf("wrk: %v\n%s%s", err, out.Bytes(), errb.Bytes())
	}
	res, err := parseWrk(out.String())
	if err != nil {
		return res, fmt.Errorf("%w\nwrk said:\n%s", err, out.Bytes())
	}
	res.LoadCPU = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	return res, nil
}

// parseWrk reads the figures of `wrk --latency` output.
func parseWrk(s string) (loadResult, error) {
	var r loadResult
	m := wrkRPS.FindStringSubmatch(s)
	if m == nil {
		return r, errors.New("wrk: no Requests/sec line")
	}
	r.RPS, _ = strconv.ParseFloat(m[1], 64)
	if m = wrkTotal.FindStringSubmatch(s); m != nil {
		r.Requests, _ = strconv.ParseInt(m[1], 10, 64)
		r.Elapsed = parseWrkDuration(m[2], m[3])
	}
	for _, m := range wrkPct.FindAllStringSubmatch(s, -1) {
		v := parseWrkDuration(m[2], m[3])
		switch m[1] {
		case "50":
			r.P50 = v
		case "90":
			r.P90 = v
		case "99":
			r.P99 = v
		}
	}
	if r.P50 == 0 || r.Requests == 0 {
		return r, errors.New("wrk: no latency distribution or request count")
	}
	if m = wrkNon2xx.FindStringSubmatch(s); m != nil {
		n, _ := strconv.ParseInt(m[1], 10, 64)
		r.Errors += n
	}
	if m = wrkSockErrs.FindStringSubmatch(s); m != nil {
		for _, x := range m[1:] {
			n, _ := strconv.ParseInt(x, 10, 64)
			r.Errors += n
		}
	}
	return r, nil
}

func parseWrkDuration(num, unit string) time.Duration {
	v, _ := strconv.ParseFloat(num, 64)
	mult := map[string]float64{"us": 1e3, "ms": 1e6, "s": 1e9, "m": 60e9, "h": 3600e9}[unit]
	return time.Duration(v * mult)
}

// goLoader is the load generator used without wrk: one goroutine per
// connection, each with a fasthttp.HostClient of its own limited to one
// connection, sending the next request as soon as the previous reply is
// read (like wrk). Every latency is kept and sorted at the end.
type goLoader struct {
	conns int
	body  []byte
}

func (g *goLoader) run(parent context.Context, target string, d time.Duration) (loadResult, error) {
	u, err := url.Parse(target)
	if err != nil {
		return loadResult{}, err
	}
	ctx, cancel := context.WithTimeout(parent, d)
	defer cancel()
	type worker struct {
		lat    []time.Duration
		errors int64
		last   error
	}
	ws := make([]worker, g.conns)
	cpu0 := selfCPU()
	start := time.Now()
	var wg sync.WaitGroup
	for i := range ws {
		wg.Add(1)
		go func(w *worker) {
			defer wg.Done()
			hc := &fasthttp.HostClient{Addr: u.Host, MaxConns: 1, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second}
			defer hc.CloseIdleConnections()
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			req.SetRequestURI(target)
			req.Header.SetMethod(fasthttp.MethodPost)
			req.Header.SetContentType("text/plain")
			req.SetBody(g.body)
			w.lat = make([]time.Duration, 0, 1<<16)
			for ctx.Err() == nil {
				t0 := time.Now()
				err := hc.Do(req, resp)
				lat := time.Since(t0)
				if err != nil || resp.StatusCode() != fasthttp.StatusOK {
					w.errors++
					if err == nil {
						err = fmt.Errorf("status %d: %.200s", resp.StatusCode(), resp.Body())
					}
					w.last = err
					if ctx.Err() == nil && err != nil && resp.StatusCode() == 0 {
						time.Sleep(10 * time.Millisecond) // connection trouble: do not spin
					}
					continue
				}
				w.lat = append(w.lat, lat)
			}
		}(&ws[i])
	}
	wg.Wait()
	elapsed := time.Since(start)
	var r loadResult
	var all []time.Duration
	var lastErr error
	for i := range ws {
		all = append(all, ws[i].lat...)
		r.Errors += ws[i].errors
		if ws[i].last != nil {
			lastErr = ws[i].last
		}
	}
	if err := parent.Err(); err != nil {
		return r, err
	}
	slices.Sort(all)
	r.Requests = int64(len(all))
	r.Elapsed = elapsed
	r.RPS = float64(r.Requests) / elapsed.Seconds()
	r.P50, r.P90, r.P99 = percentile(all, 0.50), percentile(all, 0.90), percentile(all, 0.99)
	r.LoadCPU = selfCPU() - cpu0 // includes the bare server when it is the target
	if r.Requests == 0 {
		return r, fmt.Errorf("go load: no request succeeded (last error: %v)", lastErr)
	}
	return r, nil
}

// percentile returns the q-quantile of sorted (nearest rank).
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// shortDur formats a latency compactly: 812µs, 1.24ms, 2.1s.
func shortDur(d time.Duration) string {
	switch {
	case d <= 0:
		return "-"
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < time.Second:
		return fmt.Sprintf("%.2fms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
}
