package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/broker"
	"github.com/shoal-dev/shoal/internal/testenv"
)

var (
	shoalBin string // the binary under test
	repoRoot string // module root, for workers/python
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	root, err := filepath.Abs("..")
	if err == nil {
		_, err = os.Stat(filepath.Join(root, "go.mod"))
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: cannot find the module root: %v\n", err)
		return 1
	}
	repoRoot = root
	shoalBin = os.Getenv("SHOAL_BIN")
	if shoalBin == "" {
		tmp, err := os.MkdirTemp("", "shoal-e2e-")
		if err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
			return 1
		}
		defer os.RemoveAll(tmp)
		shoalBin = filepath.Join(tmp, "shoal")
		args := []string{"build", "-o", shoalBin}
		if os.Getenv("SHOAL_E2E_RACE") == "1" { // race-checked processes: slower, still under the time bounds
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, "./cmd/shoal")...)
		cmd.Dir = repoRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: go build ./cmd/shoal: %v\n%s", err, out)
			return 1
		}
	} else if shoalBin, err = filepath.Abs(shoalBin); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: SHOAL_BIN: %v\n", err)
		return 1
	}
	return m.Run()
}

// ---- polling ----

// ---- ports and config ----

func hostPort(p int) string { return "127.0.0.1:" + strconv.Itoa(p) }

// route is one frontend route of the generated config. Zero Timeout and
// Attempts leave the config's defaults; Idempotent is written only when
// Attempts > 1 (GET is idempotent by default, POST is not).
type route struct {
	Method, Path, Service string
	Timeout               time.Duration
	Attempts              int
}

// Default routes: GET /echo may be re-dispatched (3 attempts), POST /echo
// may not.
var echoRoutes = []route{
	{Method: "GET", Path: "/echo", Service: "echo", Timeout: 2 * time.Second, Attempts: 3},
	{Method: "POST", Path: "/echo", Service: "echo", Timeout: 2 * time.Second},
}

// settings are what a test may change in the generated shoal.yaml.
type settings struct {
	Brokers          int           // default 1: b0 (b1, b2, … after it)
	Heartbeat        time.Duration // default 200ms
	Liveness         int           // default 10: 2s of silence; a loaded 2-core host can stall a process for 1s
	DefaultTimeout   time.Duration // default 5s
	HandshakeTimeout time.Duration // default 5s
	WriteTimeout     time.Duration // default 5s
	FrontendTimeout  time.Duration // default 5s
	MaxBody          string        // default "1MiB"
	Concurrency      int           // default 64
	Routes           []route       // default echoRoutes
}

func (s *settings) defaults() {
	if s.Brokers == 0 {
		s.Brokers = 1
	}
	if s.Heartbeat == 0 {
		s.Heartbeat = 200 * time.Millisecond
	}
	if s.Liveness == 0 {
		s.Liveness = 10
	}
	if s.DefaultTimeout == 0 {
		s.DefaultTimeout = 5 * time.Second
	}
	if s.HandshakeTimeout == 0 {
		s.HandshakeTimeout = 5 * time.Second
	}
	if s.WriteTimeout == 0 {
		s.WriteTimeout = 5 * time.Second
	}
	if s.FrontendTimeout == 0 {
		s.FrontendTimeout = 5 * time.Second
	}
	if s.MaxBody == "" {
		s.MaxBody = "1MiB"
	}
	if s.Concurrency == 0 {
		s.Concurrency = 64
	}
	if s.Routes == nil {
		s.Routes = echoRoutes
	}
}

// brokerAddrs are one broker's endpoints.
type brokerAddrs struct {
	Name    string
	Clients string // tcp://127.0.0.1:port
	Workers string // tcp://127.0.0.1:port
	Admin   string // 127.0.0.1:port
}

// ClientsAddr and WorkersAddr are the host:port of the ZMQ endpoints.
func (b brokerAddrs) ClientsAddr() string { return strings.TrimPrefix(b.Clients, "tcp://") }
func (b brokerAddrs) WorkersAddr() string { return strings.TrimPrefix(b.Workers, "tcp://") }

// stack is one test's deployment: its config file, the addresses in it and
// the processes started from it.
type stack struct {
	t        *testing.T
	dir      string
	cfg      string // path of shoal.yaml
	set      settings
	brokers  []brokerAddrs
	frontend string // host:port of frontend.listen
	feAdmin  string // host:port of frontend.admin
	http     *http.Client

	mu    sync.Mutex
	procs []*proc
}

// newStack writes a shoal.yaml with free ports into a temporary directory.
// Nothing is started yet. When the test ends, every process started through
// the stack is stopped (all at once), and if the test failed, the tail of
// each one's log is printed.
func newStack(t *testing.T, set settings) *stack {
	t.Helper()
	set.defaults()
	dir := t.TempDir()
	if keep := os.Getenv("SHOAL_E2E_LOGS"); keep != "" {
		// Keep configs and logs after the run, for debugging.
		dir = filepath.Join(keep, strings.ReplaceAll(t.Name(), "/", "_"))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s := &stack{t: t, dir: dir, set: set,
		http: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 8}}}
	for i := range set.Brokers {
		s.brokers = append(s.brokers, brokerAddrs{
			Name:    fmt.Sprintf("b%d", i),
			Clients: "tcp://" + hostPort(testenv.FreePort(t)),
			Workers: "tcp://" + hostPort(testenv.FreePort(t)),
			Admin:   hostPort(testenv.FreePort(t)),
		})
	}
	s.frontend = hostPort(testenv.FreePort(t))
	s.feAdmin = hostPort(testenv.FreePort(t))
	s.cfg = s.writeConfig("shoal.yaml", s.frontend, s.feAdmin)
	t.Cleanup(s.stopAll)
	return s
}

// writeConfig writes the stack's config with the given frontend addresses
// (a second frontend needs its own) and returns its path.
func (s *stack) writeConfig(name, listen, admin string) string {
	s.t.Helper()
	set := s.set
	var b strings.Builder
	fmt.Fprintf(&b, "log: {level: info, format: text}\n")
	fmt.Fprintf(&b, "brokers:\n")
	for _, br := range s.brokers {
		fmt.Fprintf(&b, "  - {name: %s, clients: %q, workers: %q, admin: %q}\n", br.Name, br.Clients, br.Workers, br.Admin)
	}
	fmt.Fprintf(&b, "broker: {heartbeat: %s, liveness: %d, queue_limit: 1024, default_timeout: %s}\n",
		set.Heartbeat, set.Liveness, set.DefaultTimeout)
	fmt.Fprintf(&b, "transport: {max_frame: 64MiB, handshake_timeout: %s, write_timeout: %s}\n",
		set.HandshakeTimeout, set.WriteTimeout)
	fmt.Fprintf(&b, "frontend:\n  listen: %q\n  admin: %q\n  timeout: %s\n  max_body: %s\n  shutdown_timeout: 2s\n  routes:\n",
		listen, admin, set.FrontendTimeout, set.MaxBody)
	for _, r := range set.Routes {
		fmt.Fprintf(&b, "    - {method: %s, path: %s, service: %s", r.Method, r.Path, r.Service)
		if r.Timeout > 0 {
			fmt.Fprintf(&b, ", timeout: %s", r.Timeout)
		}
		if r.Attempts > 0 {
			fmt.Fprintf(&b, ", attempts: %d", r.Attempts)
		}
		if r.Attempts > 1 {
			fmt.Fprintf(&b, ", idempotent: true")
		}
		fmt.Fprintf(&b, "}\n")
	}
	fmt.Fprintf(&b, "workers: {concurrency: %d, drain_timeout: 2s}\n", set.Concurrency)
	path := filepath.Join(s.dir, name)
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		s.t.Fatal(err)
	}
	return path
}

func (s *stack) url(path string) string { return "http://" + s.frontend + path }

// startBroker runs `shoal broker --name NAME` and waits for its /healthz.
func (s *stack) startBroker(i int) *proc {
	s.t.Helper()
	b := s.brokers[i]
	p := s.start("broker-"+b.Name, shoalBin, "broker", "-c", s.cfg, "--name", b.Name)
	s.waitHealthy(p, b)
	return p
}

// startFrontend runs `shoal frontend` with the stack's config and waits for
// /readyz (a broker link is up).
func (s *stack) startFrontend() *proc {
	s.t.Helper()
	p := s.start("frontend", shoalBin, "frontend", "-c", s.cfg)
	s.waitReady(p, s.frontend)
	return p
}

// startWorker runs `shoal worker NAME` (echo, greeter). It does not wait:
// see waitWorkers.
func (s *stack) startWorker(name string) *proc {
	s.t.Helper()
	return s.start("worker-"+name, shoalBin, "worker", name, "-c", s.cfg)
}

// start runs a program with its output in a log file of its own.
func (s *stack) start(name, path string, args ...string) *proc {
	s.t.Helper()
	s.mu.Lock()
	n := len(s.procs)
	s.mu.Unlock()
	logPath := filepath.Join(s.dir, fmt.Sprintf("%02d-%s.log", n, name))
	p := startProc(s.t, name, logPath, path, args...)
	s.mu.Lock()
	s.procs = append(s.procs, p)
	s.mu.Unlock()
	return p
}

// stopAll stops every process the stack started, concurrently, and prints
// their logs' tails if the test failed.
func (s *stack) stopAll() {
	s.mu.Lock()
	procs := append([]*proc(nil), s.procs...)
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func() { defer wg.Done(); p.stop(3 * time.Second) }()
	}
	wg.Wait()
	s.http.CloseIdleConnections()
	// A crash or a data race (SHOAL_E2E_RACE=1) in any process fails the test.
	for _, p := range procs {
		for _, l := range p.lines() {
			if strings.HasPrefix(l, "panic: ") || strings.HasPrefix(l, "fatal error: ") || strings.HasPrefix(l, "WARNING: DATA RACE") ||
				strings.HasPrefix(l, "Traceback (most recent call last)") {
				s.t.Errorf("%s (pid %d) log: %s", p.name, p.Pid(), l)
			}
		}
	}
	if s.t.Failed() {
		for _, p := range procs {
			p.dumpTail(s.t, 6000)
		}
	}
}

// waitHealthy polls a broker's /healthz.
func (s *stack) waitHealthy(p *proc, b brokerAddrs) {
	s.t.Helper()
	testenv.Eventually(s.t, 10*time.Second, "broker "+b.Name+" /healthz", func() bool {
		if !p.Alive() {
			s.t.Fatalf("%s exited during startup: %v", p.name, p.exitErr())
		}
		st, _, _ := s.get("http://" + b.Admin + "/healthz")
		return st == 200
	})
}

// waitReady polls a frontend's /readyz.
func (s *stack) waitReady(p *proc, listen string) {
	s.t.Helper()
	testenv.Eventually(s.t, 10*time.Second, "frontend /readyz", func() bool {
		if !p.Alive() {
			s.t.Fatalf("%s exited during startup: %v", p.name, p.exitErr())
		}
		st, _, _ := s.get("http://" + listen + "/readyz")
		return st == 200
	})
}

// get does a GET with the stack's client; status 0 means no response.
func (s *stack) get(url string) (int, []byte, http.Header) {
	resp, err := s.http.Get(url)
	if err != nil {
		return 0, nil, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, resp.Header
}

// stats reads broker i's /stats.
func (s *stack) stats(i int) (broker.Stats, error) {
	var st broker.Stats
	resp, err := s.http.Get("http://" + s.brokers[i].Admin + "/stats")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return st, fmt.Errorf("GET /stats: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("GET /stats: %w", err)
	}
	return st, nil
}

// mustStats is stats that fails the test on error.
func (s *stack) mustStats(i int) broker.Stats {
	s.t.Helper()
	st, err := s.stats(i)
	if err != nil {
		s.t.Fatalf("broker %s: %v", s.brokers[i].Name, err)
	}
	return st
}

// service returns a service's figures from a snapshot (zero if unknown).
func service(st broker.Stats, name string) broker.ServiceStats {
	for _, sv := range st.Services {
		if sv.Service == name {
			return sv
		}
	}
	return broker.ServiceStats{}
}

// waitWorkers polls broker i until service has n registered workers.
func (s *stack) waitWorkers(i int, svc string, n int, timeout time.Duration) {
	s.t.Helper()
	testenv.Eventually(s.t, timeout, fmt.Sprintf("%d %s worker(s) on broker %s", n, svc, s.brokers[i].Name), func() bool {
		st, err := s.stats(i)
		return err == nil && service(st, svc).Workers == n
	})
}

// metrics reads broker i's /metrics and returns every sample by its series
// text (name and labels as written).
func (s *stack) metrics(i int) (map[string]float64, error) {
	resp, err := s.http.Get("http://" + s.brokers[i].Admin + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return parseMetrics(resp.Body)
}

func (s *stack) mustMetrics(i int) map[string]float64 {
	s.t.Helper()
	m, err := s.metrics(i)
	if err != nil {
		s.t.Fatalf("broker %s: %v", s.brokers[i].Name, err)
	}
	return m
}

// parseMetrics reads Prometheus text format: "series value" per line.
func parseMetrics(r io.Reader) (map[string]float64, error) {
	out := make(map[string]float64)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// sumMetric adds up every series of metric name (all label sets).
func sumMetric(m map[string]float64, name string) float64 {
	var sum float64
	for k, v := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			sum += v
		}
	}
	return sum
}

// dropped is shoal_zmtp_conns_dropped_total for one reason.
func dropped(m map[string]float64, reason string) float64 {
	return m[`shoal_zmtp_conns_dropped_total{reason="`+reason+`"}`]
}

// ---- processes ----

// proc is one child process. Its process group is its own, so stopping it
// stops whatever it started too.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	logFile *os.File
	done    chan struct{} // closed when it exited
	err     error         // Wait's result, valid after done
}

// startProc starts path with args; stdout and stderr go to logPath. The
// process dies with the test process (Pdeathsig) and is stopped at the end
// of the test.
func startProc(t *testing.T, name, logPath, path string, args ...string) *proc {
	t.Helper()
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(path, args...)
	cmd.Dir = repoRoot
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), "GOTRACEBACK=all")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("cannot start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, logFile: f, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Logf("started %s (pid %d): %s %s", name, p.Pid(), filepath.Base(path), strings.Join(args, " "))
	return p
}

// Pid is the process id.
func (p *proc) Pid() int { return p.cmd.Process.Pid }

// Alive reports whether the process has not exited.
func (p *proc) Alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func (p *proc) exitErr() error {
	select {
	case <-p.done:
		if p.err == nil {
			return errors.New("exit status 0")
		}
		return p.err
	default:
		return nil
	}
}

// Kill9 sends SIGKILL to the process group and waits for the exit.
func (p *proc) Kill9(t testing.TB) {
	t.Helper()
	_ = syscall.Kill(-p.Pid(), syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s (pid %d) still running 5s after SIGKILL", p.name, p.Pid())
	}
}

// Signal sends sig to the process (not its group).
func (p *proc) Signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if err := syscall.Kill(p.Pid(), sig); err != nil {
		t.Fatalf("%s (pid %d): cannot send %v: %v", p.name, p.Pid(), sig, err)
	}
}

// Term sends SIGTERM and waits up to timeout for the exit; it fails the
// test if the process does not exit in time or exits with an error.
func (p *proc) Term(t testing.TB, timeout time.Duration) {
	t.Helper()
	_ = syscall.Kill(p.Pid(), syscall.SIGTERM)
	select {
	case <-p.done:
		if p.err != nil {
			t.Errorf("%s (pid %d) exited with %v after SIGTERM", p.name, p.Pid(), p.err)
		}
	case <-time.After(timeout):
		t.Fatalf("%s (pid %d) still running %v after SIGTERM", p.name, p.Pid(), timeout)
	}
}

// stop ends the process: SIGTERM to the group, SIGKILL after grace.
func (p *proc) stop(grace time.Duration) {
	if !p.Alive() {
		return
	}
	_ = syscall.Kill(-p.Pid(), syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	_ = syscall.Kill(-p.Pid(), syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
}

// dumpTail logs the last n bytes of the process's log.
func (p *proc) dumpTail(t testing.TB, n int64) {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		t.Logf("--- %s: cannot read log: %v", p.name, err)
		return
	}
	if int64(len(b)) > n {
		b = b[int64(len(b))-n:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	state := "running"
	if !p.Alive() {
		state = fmt.Sprintf("exited: %v", p.exitErr())
	}
	t.Logf("--- %s (pid %d, %s), tail of %s:\n%s", p.name, p.Pid(), state, p.logPath, b)
}

// lines returns the lines of the process's log.
func (p *proc) lines() []string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return nil
	}
	return strings.Split(string(b), "\n")
}

// grep returns the lines of the process's log that contain s.
func (p *proc) grep(s string) []string {
	var out []string
	for _, l := range p.lines() {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return out
}

// requireAlive fails the test for every process that has exited.
func requireAlive(t testing.TB, procs ...*proc) {
	t.Helper()
	for _, p := range procs {
		if !p.Alive() {
			t.Errorf("%s (pid %d) died: %v", p.name, p.Pid(), p.exitErr())
		}
	}
}

// ---- Python ----

const python = "/usr/bin/python3"

// requirePythonZMQ checks that /usr/bin/python3 can import zmq and msgpack
// (Debian's python3-zmq and python3-msgpack). Without them the test fails
// under CI=true and is skipped elsewhere.
func requirePythonZMQ(t *testing.T) {
	t.Helper()
	missing := func(format string, args ...any) {
		t.Helper()
		testenv.Missing(t, fmt.Sprintf(format, args...)+" (apt-get install python3 python3-zmq python3-msgpack, or `make deps-test`)")
	}
	if _, err := os.Stat(python); err != nil {
		missing("%s not found: %v", python, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, python, "-c", "import zmq, msgpack").CombinedOutput()
	if err != nil {
		missing("%s cannot import zmq and msgpack: %v: %s", python, err, bytes.TrimSpace(out))
	}
}

// ---- HTTP load ----

// load describes one stream of HTTP requests, run by Clients goroutines
// for Duration or until Max requests were sent, whichever comes first.
type load struct {
	Name     string
	Method   string
	URL      string // only 127.0.0.1
	Body     []byte
	Deadline time.Duration // the route's timeout
	Clients  int
	Duration time.Duration
	Max      int           // 0 = 100000
	Pace     time.Duration // pause between one goroutine's requests
	Stop     <-chan struct{}
}

// result is one request's outcome.
type result struct {
	Start   time.Time
	Latency time.Duration
	Status  int    // 0: no HTTP response
	Code    string // "error" of a JSON error body
	Err     error
}

// report holds a load's results.
type report struct {
	load
	Results []result
}

// runLoad runs l and returns when every request has finished. Each request
// has a client-side timeout of Deadline + 5s so that a hung request is
// recorded as an error instead of blocking the test.
func runLoad(t testing.TB, l load) *report {
	t.Helper()
	// Errorf, not Fatalf: runLoad also runs on goroutines of startLoad.
	if !strings.HasPrefix(l.URL, "http://127.0.0.1:") {
		t.Errorf("load %s: only 127.0.0.1 targets, got %s", l.Name, l.URL)
		return &report{load: l}
	}
	if l.Duration <= 0 || l.Duration > time.Minute || l.Clients <= 0 || l.Clients > 256 {
		t.Errorf("load %s: duration %v or clients %d out of bounds", l.Name, l.Duration, l.Clients)
		return &report{load: l}
	}
	if l.Max <= 0 || l.Max > 100000 {
		l.Max = 100000
	}
	tr := &http.Transport{MaxIdleConnsPerHost: l.Clients, MaxConnsPerHost: l.Clients}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: l.Deadline + 5*time.Second}
	end := time.Now().Add(l.Duration)
	var (
		mu   sync.Mutex
		res  []result
		sent int
		wg   sync.WaitGroup
	)
	take := func() bool {
		mu.Lock()
		defer mu.Unlock()
		if sent >= l.Max || time.Now().After(end) {
			return false
		}
		if l.Stop != nil {
			select {
			case <-l.Stop:
				return false
			default:
			}
		}
		sent++
		return true
	}
	for range l.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for take() {
				r := doRequest(client, l.Method, l.URL, l.Body)
				mu.Lock()
				res = append(res, r)
				mu.Unlock()
				if l.Pace > 0 {
					time.Sleep(l.Pace)
				}
			}
		}()
	}
	wg.Wait()
	sort.Slice(res, func(i, j int) bool { return res[i].Start.Before(res[j].Start) })
	return &report{load: l, Results: res}
}

// startLoad runs l in the background; the returned function waits for it
// (and may be called again).
func startLoad(t testing.TB, l load) func() *report {
	ch := make(chan *report, 1)
	go func() { ch <- runLoad(t, l) }()
	return sync.OnceValue(func() *report { return <-ch })
}

func doRequest(c *http.Client, method, url string, body []byte) result {
	r := result{Start: time.Now()}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		r.Err = err
		return r
	}
	resp, err := c.Do(req)
	if err != nil {
		r.Latency = time.Since(r.Start)
		r.Err = err
		return r
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	r.Latency = time.Since(r.Start)
	r.Status = resp.StatusCode
	r.Err = err
	if resp.StatusCode != 200 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) == nil {
			r.Code = e.Error
		}
	}
	return r
}

// byStatus counts results per "status code" label, e.g. "200", "502
// worker_died", "error".
func (r *report) byStatus() map[string]int {
	m := make(map[string]int)
	for _, x := range r.Results {
		m[x.label()]++
	}
	return m
}

func (x result) label() string {
	switch {
	case x.Err != nil:
		return "error"
	case x.Code != "":
		return fmt.Sprintf("%d %s", x.Status, x.Code)
	}
	return strconv.Itoa(x.Status)
}

// late returns the results that had no response within Deadline + slack.
func (r *report) late(slack time.Duration) []result {
	var out []result
	for _, x := range r.Results {
		if x.Err != nil || x.Status == 0 || x.Latency > r.Deadline+slack {
			out = append(out, x)
		}
	}
	return out
}

// maxLatency is the longest latency of all results.
func (r *report) maxLatency() time.Duration {
	var m time.Duration
	for _, x := range r.Results {
		m = max(m, x.Latency)
	}
	return m
}

// percentile returns the p-th percentile latency (0 < p <= 100).
func (r *report) percentile(p float64) time.Duration {
	if len(r.Results) == 0 {
		return 0
	}
	ls := make([]time.Duration, len(r.Results))
	for i, x := range r.Results {
		ls[i] = x.Latency
	}
	sort.Slice(ls, func(i, j int) bool { return ls[i] < ls[j] })
	i := int(float64(len(ls))*p/100+0.5) - 1
	return ls[min(max(i, 0), len(ls)-1)]
}

func (r *report) summary() string {
	return fmt.Sprintf("%s: %d requests %v, p50 %v, p99 %v, max %v", r.Name, len(r.Results), r.byStatus(),
		r.percentile(50).Round(time.Microsecond), r.percentile(99).Round(time.Microsecond), r.maxLatency().Round(time.Microsecond))
}

// describe lists up to 5 results, for failure messages.
func describe(rs []result) string {
	var b strings.Builder
	for i, x := range rs {
		if i == 5 {
			fmt.Fprintf(&b, " … and %d more", len(rs)-5)
			break
		}
		fmt.Fprintf(&b, "\n  started %s: %s after %v (err %v)", x.Start.Format("15:04:05.000"), x.label(), x.Latency, x.Err)
	}
	return b.String()
}
