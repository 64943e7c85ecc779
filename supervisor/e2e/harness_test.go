// Package e2e runs `shoal supervisor` as a real process with the real
// stack under it (broker, frontend, workers, redis-server) and checks what
// only shows across processes: rolling restarts under load, the broker
// notice on a worker's death, no orphans, the system service, make run,
// and shoal ctl's command line. Benchmarks measure the restart gap and the
// supervisor's memory.
//
// TestMain builds ./cmd/shoal once (or uses $SHOAL_BIN). Every test writes
// its own shoal.yaml with free ports into a temporary directory, which
// also holds the run dir; the directory's path marks every process a test
// starts, so leftovers can be found.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/testenv"
	"github.com/shoal-dev/shoal/supervisor"
)

var (
	shoalBin string
	repoRoot string
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	root, err := filepath.Abs("../..")
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
		dir, err := os.MkdirTemp("", "shoal-sv-e2e-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		shoalBin = filepath.Join(dir, "shoal")
		cmd := exec.Command("go", "build", "-o", shoalBin, "./cmd/shoal")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: go build ./cmd/shoal: %v\n%s", err, out)
			return 1
		}
	} else if shoalBin, err = filepath.Abs(shoalBin); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// ---- a stack under a supervisor process ----

// ports of a stack's config.
type ports struct {
	Clients, Workers, Admin, Listen, Redis int
}

// stack is a config in a temporary directory and the supervisor process
// running it.
type stack struct {
	t      testing.TB
	dir    string // holds shoal.yaml and run/; marks every process of the stack
	file   string
	socket string
	p      ports
	cmd    *exec.Cmd
	out    *os.File
	exited chan struct{}
	c      *supervisor.Client
}

// brokerHead is the config before the programs: one broker, a frontend
// routing /echo, the supervisor section. Heartbeats are short so that
// worker drains (one heartbeat) are quick.
const brokerHead = `brokers:
  - {name: b0, clients: "tcp://127.0.0.1:{{Clients}}", workers: "tcp://127.0.0.1:{{Workers}}", admin: "127.0.0.1:{{Admin}}"}
broker: {heartbeat: 100ms, liveness: 10}
frontend:
  listen: "127.0.0.1:{{Listen}}"
  admin: ""
  routes:
    - {method: GET, path: /echo, service: echo, timeout: 10s}
    - {method: POST, path: /echo, service: echo}
log: {level: debug}
supervisor:
  socket: {{Socket}}
`

// standardPrograms is the stack of make run, on free ports.
const standardPrograms = `programs:
  - name: redis
    command: redis-server --port {{Redis}} --bind 127.0.0.1 --appendonly yes --appendfsync everysec --dir {run_dir}/redis --save ""
    dir: "{run_dir}/redis"
    ready: {tcp: "127.0.0.1:{{Redis}}"}
  - name: broker
    command: "{shoal} broker -c {config}"
    ready: {http: "http://127.0.0.1:{{Admin}}/healthz"}
  - name: echo
    group: workers
    command: "{shoal} worker echo -c {config}"
    numprocs: 2
    depends_on: [broker]
    ready: {broker_service: echo}
  - name: frontend
    command: "{shoal} frontend -c {config}"
    depends_on: [echo]
    ready: {http: "http://127.0.0.1:{{Listen}}/readyz"}
`

// newStack writes the config (brokerHead, then programs) with free ports.
func newStack(t testing.TB, programs string) *stack {
	t.Helper()
	dir := t.TempDir()
	sockDir, err := os.MkdirTemp("", "sve")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	s := &stack{t: t, dir: dir, file: filepath.Join(dir, "shoal.yaml"), socket: filepath.Join(sockDir, "s.sock"),
		p: ports{testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)}}
	s.c = supervisor.NewClient(s.socket)
	s.writeConfig(brokerHead + programs)
	return s
}

func (s *stack) expand(src string) string {
	r := strings.NewReplacer("{{Clients}}", strconv.Itoa(s.p.Clients), "{{Workers}}", strconv.Itoa(s.p.Workers),
		"{{Admin}}", strconv.Itoa(s.p.Admin), "{{Listen}}", strconv.Itoa(s.p.Listen), "{{Redis}}", strconv.Itoa(s.p.Redis),
		"{{Socket}}", s.socket)
	return r.Replace(src)
}

func (s *stack) writeConfig(src string) {
	s.t.Helper()
	if err := os.WriteFile(s.file, []byte(s.expand(src)), 0o644); err != nil {
		s.t.Fatal(err)
	}
}

// start runs `shoal supervisor -c shoal.yaml` and waits for its socket.
// The test's cleanup stops it and checks that nothing of the stack is
// left.
func (s *stack) start(extraEnv ...string) {
	s.t.Helper()
	out, err := os.Create(filepath.Join(s.dir, "supervisor.out"))
	if err != nil {
		s.t.Fatal(err)
	}
	s.out = out
	s.cmd = exec.Command(shoalBin, "supervisor", "-c", s.file)
	s.cmd.Stdout, s.cmd.Stderr = out, out
	s.cmd.Env = append(os.Environ(), extraEnv...)
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.exited = make(chan struct{})
	go func() { s.cmd.Wait(); close(s.exited) }()
	s.t.Cleanup(func() {
		s.stop(syscall.SIGTERM, 60*time.Second)
		if s.t.Failed() {
			s.t.Logf("supervisor output:\n%s", s.tail(100))
		}
		s.checkNoLeftovers()
	})
	testenv.Eventually(s.t, 10*time.Second, "the supervisor's control socket", func() bool {
		select {
		case <-s.exited:
			s.t.Fatalf("the supervisor exited: %v\n%s", s.cmd.ProcessState, s.tail(50))
		default:
		}
		_, err := s.c.Status(context.Background())
		return err == nil
	})
}

// stop signals the supervisor and waits for it to exit.
func (s *stack) stop(sig syscall.Signal, timeout time.Duration) {
	s.t.Helper()
	if s.cmd == nil {
		return
	}
	select {
	case <-s.exited:
		return
	default:
	}
	s.cmd.Process.Signal(sig)
	select {
	case <-s.exited:
	case <-time.After(timeout):
		s.t.Errorf("the supervisor did not exit %v after %v", timeout, sig)
		s.cmd.Process.Kill()
		<-s.exited
	}
}

// tail returns the last n lines of the supervisor's output.
func (s *stack) tail(n int) string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "supervisor.out"))
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitRunning waits until every instance is RUNNING.
func (s *stack) waitRunning(timeout time.Duration) map[string]supervisor.Status {
	s.t.Helper()
	var last []supervisor.Status
	testenv.Eventually(s.t, timeout, "every program to be RUNNING", func() bool {
		st, err := s.c.Status(context.Background())
		if err != nil {
			return false
		}
		last = st
		for _, x := range st {
			if x.State != supervisor.Running {
				return false
			}
		}
		return len(st) > 0
	}, func() string { return fmt.Sprintf("%+v", last) })
	m := make(map[string]supervisor.Status)
	for _, x := range last {
		m[x.Name] = x
	}
	return m
}

func (s *stack) url(path string) string {
	return "http://127.0.0.1:" + strconv.Itoa(s.p.Listen) + path
}

// ctl runs `shoal ctl ARGS -c shoal.yaml`.
func (s *stack) ctl(args ...string) (string, int) {
	s.t.Helper()
	cmd := exec.Command(shoalBin, append(append([]string{"ctl"}, args...), "-c", s.file)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		s.t.Fatal(err)
	}
	return out.String(), code
}

// brokerStats reads the broker's /stats.
func (s *stack) brokerStats() (brokerStats, error) {
	var st brokerStats
	resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(s.p.Admin) + "/stats")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

type brokerStats struct {
	Workers []struct {
		Process  string `json:"process"`
		InFlight int    `json:"in_flight"`
	} `json:"workers"`
	Services []struct {
		Service  string `json:"service"`
		Requeued uint64 `json:"requeued"`
	} `json:"services"`
	WorkersDied uint64 `json:"workers_died"`
}

// ---- leftovers ----

// marked returns the processes whose command line or working directory
// names dir: the stack's processes.
func marked(dir string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if !alive(pid) {
			continue
		}
		cmdline, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		cwd, _ := os.Readlink("/proc/" + e.Name() + "/cwd")
		if bytes.Contains(cmdline, []byte(dir)) || strings.HasPrefix(cwd, dir) {
			out = append(out, fmt.Sprintf("%d %s", pid, bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})))
		}
	}
	return out
}

func (s *stack) checkNoLeftovers() {
	s.t.Helper()
	var left []string
	testenv.Eventually(s.t, 10*time.Second, "no process of the stack to remain", func() bool {
		left = marked(s.dir)
		return len(left) == 0
	}, func() string { return strings.Join(left, "\n") })
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z'
}

// ---- load ----

// loadResult counts a load's outcomes.
type loadResult struct {
	ok, failed int
	errs       map[string]int
}

// startLoad runs clients goroutines doing GET url back to back until stop
// is closed.
func startLoad(url string, clients int) (stop func() loadResult) {
	var mu sync.Mutex
	res := loadResult{errs: map[string]int{}}
	done := make(chan struct{})
	var wg sync.WaitGroup
	tr := &http.Transport{MaxIdleConnsPerHost: clients, MaxConnsPerHost: clients}
	hc := &http.Client{Transport: tr, Timeout: 15 * time.Second}
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				resp, err := hc.Get(url)
				why := ""
				if err != nil {
					why = err.Error()
				} else {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						why = fmt.Sprintf("%d %s", resp.StatusCode, bytes.TrimSpace(b))
					}
				}
				mu.Lock()
				if why == "" {
					res.ok++
				} else {
					res.failed++
					res.errs[why]++
				}
				mu.Unlock()
			}
		}()
	}
	return func() loadResult {
		close(done)
		wg.Wait()
		tr.CloseIdleConnections()
		return res
	}
}

// lines reads r line by line into a channel.
func lines(r io.Reader) chan string {
	ch := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			ch <- sc.Text()
		}
		close(ch)
	}()
	return ch
}
