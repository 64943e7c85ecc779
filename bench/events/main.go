// Command events measures Shoal's live push: many Server-Sent Events
// clients on one frontend, events published at a fixed rate, delivery
// latency from publish to client, memory per connection and events
// delivered per second.
//
// One run:
//
//  1. raises this process's file-descriptor limit to the hard limit
//     (children inherit it), writes a config with free 127.0.0.1 ports and
//     starts the real stack from the shoal binary as separate processes:
//     one broker (with its event forwarder) and one frontend;
//  2. measures the frontend's resident memory, opens -n SSE connections
//     to /events?topic=bench (raw TCP clients in this process, -dialers at
//     a time), waits until every stream is open and the broker holds the
//     subscription, lets the frontend settle and measures again: the
//     difference divided by -n is the memory per connection (RSS, and Go
//     heap from the frontend's /metrics);
//  3. after a -warmup at 5 events/s (first writes grow every stream's
//     goroutine stack and buffers; not counted), for each rate of -rates,
//     publishes events at that rate for -d
//     through a publisher in this process (to the broker's events_in),
//     each carrying its publish time, and counts what every client
//     receives: delivery latency p50/p99/max (publish → client read),
//     deliveries per second, and deliveries missing (dropped slow
//     clients, at-most-once losses);
//  4. stops everything with SIGTERM.
//
// The clients, the broker and the frontend share this machine's cores:
// the figures are for the whole system on one host, client work included.
//
// Usage:
//
//	make build && go run ./bench/events -shoal bin/shoal
//	go run ./bench/events -shoal bin/shoal -n 10000 -rates 1,10,20 -d 15s
//	go run ./bench/events -shoal bin/shoal -n 500 -rates 100 -d 5s -json
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/shoal-dev/shoal/broker"
	"github.com/shoal-dev/shoal/wire"
	"github.com/vmihailenco/msgpack/v5"
)

var (
	shoalBin = flag.String("shoal", "bin/shoal", "the shoal binary (make build)")
	nClients = flag.Int("n", 10000, "SSE clients held open on the frontend")
	ratesArg = flag.String("rates", "1,10,20", "publish rates to measure, events per second, comma-separated")
	dur      = flag.Duration("d", 10*time.Second, "publishing time per rate")
	bodySize = flag.Int("body", 200, "bytes of padding in each event's body")
	dialers  = flag.Int("dialers", 64, "connections opened at once")
	settle   = flag.Duration("settle", 3*time.Second, "wait after connecting before measuring memory")
	warmup   = flag.Duration("warmup", 3*time.Second, "publish at 5/s for this long before the measured phases (not counted)")
	asJSON   = flag.Bool("json", false, "print the results as JSON too")
	keep     = flag.Bool("keep", false, "keep the run directory (config and logs)")
)

// Result is what one run measured.
type Result struct {
	Clients       int         `json:"clients"`
	ConnectSecs   float64     `json:"connect_seconds"`
	RSSIdleKiB    int64       `json:"frontend_rss_idle_kib"`
	RSSConnKiB    int64       `json:"frontend_rss_connected_kib"`
	HeapIdle      int64       `json:"frontend_heap_idle_bytes"`
	HeapConn      int64       `json:"frontend_heap_connected_bytes"`
	BytesPerConn  float64     `json:"rss_bytes_per_connection"`
	HeapPerConn   float64     `json:"heap_bytes_per_connection"`
	BrokerRSSKiB  int64       `json:"broker_rss_kib"`
	Phases        []PhaseStat `json:"phases"`
	BodyBytes     int         `json:"body_bytes"`
	SlowDropTotal int64       `json:"slow_client_drops"`
}

// PhaseStat is one publish rate.
type PhaseStat struct {
	Rate         int     `json:"rate"`
	Published    int     `json:"published"`
	Expected     int64   `json:"expected_deliveries"`
	Delivered    int64   `json:"delivered"`
	Missing      int64   `json:"missing"`
	PerSec       float64 `json:"deliveries_per_second"`
	P50ms        float64 `json:"p50_ms"`
	P90ms        float64 `json:"p90_ms"`
	P99ms        float64 `json:"p99_ms"`
	MaxMs        float64 `json:"max_ms"`
	FrontendCPU  float64 `json:"frontend_cpu_cores"`
	BrokerCPU    float64 `json:"broker_cpu_cores"`
	BenchCPU     float64 `json:"bench_cpu_cores"`
	OthersCPU    float64 `json:"others_cpu_cores"` // the rest of the machine: noise
	FrontendUS   float64 `json:"frontend_cpu_us_per_delivery"`
	FrontendRSSK int64   `json:"frontend_rss_kib"`
}

func main() {
	flag.Parse()
	rates, err := parseRates(*ratesArg)
	if err != nil {
		fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := run(ctx, rates)
	if err != nil {
		fatal(err)
	}
	report(os.Stdout, res)
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(res)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "bench/events:", err)
	os.Exit(1)
}

func parseRates(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("bad rate %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// raiseFDLimit sets the soft RLIMIT_NOFILE to the hard one. Setting it
// explicitly also makes children (the frontend) inherit it.
func raiseFDLimit(need int) error {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return err
	}
	rl.Cur = rl.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return err
	}
	if rl.Cur < uint64(need) {
		return fmt.Errorf("file-descriptor limit %d is below the %d this run needs (raise the hard limit: ulimit -Hn)", rl.Cur, need)
	}
	return nil
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

func startProc(dir, bin, cfg, name string, args ...string) (*proc, error) {
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, append(args, "-c", cfg)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); logf.Close(); close(p.done) }()
	return p, nil
}

func (p *proc) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

func waitHTTP(ctx context.Context, url string, timeout time.Duration) error {
	c := http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := c.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v: %v", url, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func run(ctx context.Context, rates []int) (*Result, error) {
	if err := raiseFDLimit(*nClients + 500); err != nil {
		return nil, err
	}
	bin, err := filepath.Abs(*shoalBin)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("no shoal binary at %s (make build): %w", bin, err)
	}
	dir, err := os.MkdirTemp("", "shoal-bench-events-")
	if err != nil {
		return nil, err
	}
	if *keep {
		fmt.Fprintln(os.Stderr, "run directory:", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	addr := map[string]string{}
	for _, k := range []string{"clients", "workers", "badmin", "in", "out", "listen", "fadmin"} {
		if addr[k], err = freeAddr(); err != nil {
			return nil, err
		}
	}
	cfg := filepath.Join(dir, "shoal.yaml")
	err = os.WriteFile(cfg, []byte(fmt.Sprintf(`log: {level: warn}
brokers:
  - {name: b0, clients: tcp://%s, workers: tcp://%s, admin: %q, events_in: tcp://%s, events_out: tcp://%s}
frontend:
  listen: %q
  admin: %q
  max_conns: %d
  write_timeout: 10s
events:
  heartbeat: 15s
`, addr["clients"], addr["workers"], addr["badmin"], addr["in"], addr["out"], addr["listen"], addr["fadmin"], *nClients+1000)), 0o644)
	if err != nil {
		return nil, err
	}
	br, err := startProc(dir, bin, cfg, "broker", "broker")
	if err != nil {
		return nil, err
	}
	defer br.stop()
	if err := waitHTTP(ctx, "http://"+addr["badmin"]+"/healthz", 10*time.Second); err != nil {
		return nil, err
	}
	fe, err := startProc(dir, bin, cfg, "frontend", "frontend")
	if err != nil {
		return nil, err
	}
	defer fe.stop()
	if err := waitHTTP(ctx, "http://"+addr["listen"]+"/readyz", 10*time.Second); err != nil {
		return nil, err
	}
	pub, err := broker.NewPublisher(broker.PublisherOptions{Endpoints: []string{"tcp://" + addr["in"]}})
	if err != nil {
		return nil, err
	}
	defer pub.Close()

	res := &Result{Clients: *nClients, BodyBytes: *bodySize}
	time.Sleep(time.Second)
	res.RSSIdleKiB = rssKiB(fe.cmd.Process.Pid)
	res.HeapIdle = heapInuse("http://" + addr["fadmin"] + "/metrics")

	fmt.Fprintf(os.Stderr, "opening %d streams…\n", *nClients)
	start := time.Now()
	clients, err := connect(ctx, addr["listen"], *nClients)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, c := range clients {
			c.conn.Close()
		}
	}()
	res.ConnectSecs = time.Since(start).Seconds()
	if err := waitSubscribed(ctx, "http://"+addr["badmin"]+"/stats"); err != nil {
		return nil, err
	}
	select {
	case <-time.After(*settle):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	res.RSSConnKiB = rssKiB(fe.cmd.Process.Pid)
	res.HeapConn = heapInuse("http://" + addr["fadmin"] + "/metrics")
	res.BytesPerConn = float64(res.RSSConnKiB-res.RSSIdleKiB) * 1024 / float64(*nClients)
	res.HeapPerConn = float64(res.HeapConn-res.HeapIdle) / float64(*nClients)
	fmt.Fprintf(os.Stderr, "%d streams open in %.1fs; frontend RSS %d → %d MiB\n", *nClients, res.ConnectSecs,
		res.RSSIdleKiB>>10, res.RSSConnKiB>>10)

	pad := strings.Repeat("x", *bodySize)
	if *warmup > 0 {
		d := *dur
		*dur = *warmup
		if _, err := phase(ctx, pub, clients, 5, pad, fe.cmd.Process.Pid, br.cmd.Process.Pid); err != nil {
			return nil, err
		}
		*dur = d
	}
	for _, rate := range rates {
		ph, err := phase(ctx, pub, clients, rate, pad, fe.cmd.Process.Pid, br.cmd.Process.Pid)
		if err != nil {
			return nil, err
		}
		res.Phases = append(res.Phases, ph)
		fmt.Fprintf(os.Stderr, "rate %d/s: %d of %d delivered, p50 %.1f ms p99 %.1f ms\n", rate, ph.Delivered, ph.Expected, ph.P50ms, ph.P99ms)
	}
	res.BrokerRSSKiB = rssKiB(br.cmd.Process.Pid)
	res.SlowDropTotal = metricInt("http://"+addr["fadmin"]+"/metrics", `shoal_frontend_event_clients_dropped_total{reason="slow_client"}`)
	return res, nil
}

// client is one SSE connection; its reader goroutine records the latency
// of every event it gets.
type client struct {
	conn net.Conn
	mu   sync.Mutex
	lat  []int32 // microseconds
	got  atomic.Int64
	dead atomic.Bool
}

func connect(ctx context.Context, addr string, n int) ([]*client, error) {
	clients := make([]*client, n)
	var next atomic.Int64
	var firstErr error
	var emu sync.Mutex
	var wg sync.WaitGroup
	for range *dialers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				c, err := open(addr)
				if err != nil {
					emu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("stream %d: %w", i, err)
					}
					emu.Unlock()
					return
				}
				clients[i] = c
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		for _, c := range clients {
			if c != nil {
				c.conn.Close()
			}
		}
		return nil, firstErr
	}
	return clients, ctx.Err()
}

const request = "GET /events?topic=bench HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n"

// open connects one stream, reads the response head and the opening
// comment, and starts its reader.
func open(addr string) (*client, error) {
	var conn net.Conn
	var err error
	for attempt := 0; ; attempt++ {
		conn, err = net.DialTimeout("tcp", addr, 5*time.Second)
		if err == nil || attempt == 5 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return nil, err
	}
	if _, err := io.WriteString(conn, request); err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReaderSize(conn, 2048)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return nil, err
	}
	if resp.StatusCode != 200 {
		conn.Close()
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	body := bufio.NewReaderSize(resp.Body, 2048)
	if _, err := body.ReadSlice('\n'); err != nil { // ": shoal event stream"
		conn.Close()
		return nil, err
	}
	conn.SetReadDeadline(time.Time{})
	c := &client{conn: conn}
	go c.read(body)
	return c, nil
}

var tKey = []byte(`"t":`)

func (c *client) read(r *bufio.Reader) {
	defer c.dead.Store(true)
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				continue
			}
			return
		}
		now := time.Now().UnixNano()
		if !bytes.HasPrefix(line, []byte("data: ")) {
			continue
		}
		i := bytes.Index(line, tKey)
		if i < 0 {
			continue
		}
		var t int64
		for _, ch := range line[i+len(tKey):] {
			if ch < '0' || ch > '9' {
				break
			}
			t = t*10 + int64(ch-'0')
		}
		c.mu.Lock()
		c.lat = append(c.lat, int32(min((now-t)/1000, 1<<31-1)))
		c.mu.Unlock()
		c.got.Add(1)
	}
}

// benchEvent is the published value: t first, so the client finds it fast.
type benchEvent struct {
	T   int64  `msgpack:"t"`
	Seq int    `msgpack:"seq"`
	Pad string `msgpack:"pad"`
}

func phase(ctx context.Context, pub *broker.Publisher, clients []*client, rate int, pad string, fePid, brPid int) (PhaseStat, error) {
	ph := PhaseStat{Rate: rate}
	alive := int64(0)
	for _, c := range clients {
		c.mu.Lock()
		c.lat = c.lat[:0]
		c.mu.Unlock()
		c.got.Store(0)
		if !c.dead.Load() {
			alive++
		}
	}
	fe0, br0, self0, all0 := cpu(fePid), cpu(brPid), cpu(os.Getpid()), machineBusy()
	start := time.Now()
	interval := time.Second / time.Duration(rate)
	next := start
	for time.Since(start) < *dur {
		if err := ctx.Err(); err != nil {
			return ph, err
		}
		body, _ := msgpack.Marshal(benchEvent{T: time.Now().UnixNano(), Seq: ph.Published, Pad: pad})
		if err := pub.Publish(&wire.Event{Topic: "bench.tick", Body: body}); err != nil {
			return ph, fmt.Errorf("publish: %w", err)
		}
		ph.Published++
		next = next.Add(interval)
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
	}
	ph.Expected = alive * int64(ph.Published)
	// Let the last events arrive.
	for wait := time.Now().Add(5 * time.Second); time.Now().Before(wait); time.Sleep(50 * time.Millisecond) {
		var n int64
		for _, c := range clients {
			n += c.got.Load()
		}
		if n >= ph.Expected {
			break
		}
	}
	elapsed := time.Since(start)
	ph.FrontendCPU = (cpu(fePid) - fe0).Seconds() / elapsed.Seconds()
	ph.BrokerCPU = (cpu(brPid) - br0).Seconds() / elapsed.Seconds()
	ph.BenchCPU = (cpu(os.Getpid()) - self0).Seconds() / elapsed.Seconds()
	ph.OthersCPU = max(0, (machineBusy()-all0).Seconds()/elapsed.Seconds()-ph.FrontendCPU-ph.BrokerCPU-ph.BenchCPU)
	ph.FrontendRSSK = rssKiB(fePid)
	var all []int32
	for _, c := range clients {
		c.mu.Lock()
		all = append(all, c.lat...)
		c.mu.Unlock()
		ph.Delivered += c.got.Load()
	}
	ph.Missing = ph.Expected - ph.Delivered
	if ph.Delivered > 0 {
		ph.FrontendUS = ph.FrontendCPU * elapsed.Seconds() * 1e6 / float64(ph.Delivered)
	}
	ph.PerSec = float64(ph.Delivered) / dur.Seconds()
	if len(all) > 0 {
		slices.Sort(all)
		ms := func(q float64) float64 { return float64(all[min(len(all)-1, int(q*float64(len(all))))]) / 1000 }
		ph.P50ms, ph.P90ms, ph.P99ms, ph.MaxMs = ms(0.50), ms(0.90), ms(0.99), float64(all[len(all)-1])/1000
	}
	return ph, nil
}

// waitSubscribed polls the broker until the frontend's subscription is in.
func waitSubscribed(ctx context.Context, url string) error {
	c := http.Client{Timeout: 2 * time.Second}
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
		resp, err := c.Get(url)
		if err == nil {
			var st broker.Stats
			json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			if st.Events != nil && slices.Contains(st.Events.Prefixes, "bench") {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return errors.New("the broker never saw the frontend's subscription")
}

func rssKiB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// cpu is the user+system time a process used so far.
func cpu(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// machineBusy is the CPU time all cores spent outside idle and iowait.
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	var busy int64
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		if i != 3 && i != 4 && i < 8 { // idle, iowait; guest is in user already
			busy += n
		}
	}
	return time.Duration(busy) * time.Second / 100
}

func metricInt(url, name string) int64 {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return int64(f)
		}
	}
	return -1
}

func heapInuse(url string) int64 { return metricInt(url, "go_memstats_heap_inuse_bytes") }

func report(w io.Writer, r *Result) {
	fmt.Fprintf(w, "\nShoal events: %d SSE clients on one frontend (topic bench, %d-byte padding)\n", r.Clients, r.BodyBytes)
	fmt.Fprintf(w, "  connect: %.1fs; frontend RSS %d → %d MiB = %.1f KiB per connection (Go heap %.1f KiB per connection)\n",
		r.ConnectSecs, r.RSSIdleKiB>>10, r.RSSConnKiB>>10, r.BytesPerConn/1024, r.HeapPerConn/1024)
	fmt.Fprintf(w, "  broker RSS at the end: %d MiB; slow clients dropped: %d\n\n", r.BrokerRSSKiB>>10, r.SlowDropTotal)
	fmt.Fprintf(w, "  %8s %10s %12s %10s %14s %8s %8s %8s %8s %8s %9s %8s %8s %8s %10s\n",
		"rate/s", "published", "delivered", "missing", "deliveries/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "fe CPU", "fe µs/dlv", "br CPU", "bench", "others", "fe RSS MiB")
	for _, p := range r.Phases {
		noisy := ""
		if p.OthersCPU > 0.15 {
			noisy = " ! other work on the machine"
		}
		fmt.Fprintf(w, "  %8d %10d %12d %10d %14.0f %8.1f %8.1f %8.1f %8.1f %8.2f %9.1f %8.2f %8.2f %8.2f %10d%s\n",
			p.Rate, p.Published, p.Delivered, p.Missing, p.PerSec, p.P50ms, p.P90ms, p.P99ms, p.MaxMs,
			p.FrontendCPU, p.FrontendUS, p.BrokerCPU, p.BenchCPU, p.OthersCPU, p.FrontendRSSK>>10, noisy)
	}
	fmt.Fprintln(w)
}
