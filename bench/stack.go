package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// stackSpec describes one pipeline target: a broker, workers and a
// frontend, each with an optional GOMAXPROCS.
type stackSpec struct {
	name          string // target name: "pipeline", "pipeline-p1"
	workers       int
	brokerProcs   int // 0 = GOMAXPROCS unset
	frontendProcs int
	workerProcs   int
}

// stack is a running pipeline.
type stack struct {
	spec    stackSpec
	dir     string
	cfgPath string
	listen  string // frontend host:port
	url     string // http://listen/echo
	procs   []*proc
}

// proc is one process of a stack.
type proc struct {
	name string // broker, frontend, worker-0, …
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when the process has exited
	err  error         // Wait's result, once done is closed
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits up to grace, then kills.
func (p *proc) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// configYAML is the config every process of a stack reads.
const configYAML = `# Written by shoal's bench: one broker, echo behind GET and POST /echo.
log:
  level: warn
brokers:
  - name: bench
    clients: tcp://127.0.0.1:%d
    workers: tcp://127.0.0.1:%d
    admin: 127.0.0.1:%d
frontend:
  listen: 127.0.0.1:%d
  admin: 127.0.0.1:%d
  shutdown_timeout: 2s
  routes:
    - {method: GET, path: /echo, service: echo}
    - {method: POST, path: /echo, service: echo}
workers:
  drain_timeout: 2s
`

// freePorts returns n distinct free TCP ports on 127.0.0.1. They are free
// when it returns; another process could take one before we bind it, which
// readiness would then report.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("cannot find a free port: %w", err)
		}
		defer ln.Close()
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// childEnv is this process's environment without the variables that would
// change what the children do behind the config's back.
func childEnv(maxprocs int) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "SHOAL_") || strings.HasPrefix(kv, "GOMAXPROCS=") ||
			strings.HasPrefix(kv, "GODEBUG=") || strings.HasPrefix(kv, "GOGC=") {
			continue
		}
		env = append(env, kv)
	}
	if maxprocs > 0 {
		env = append(env, "GOMAXPROCS="+strconv.Itoa(maxprocs))
	}
	return env
}

// startStack writes the stack's config under dir and starts broker,
// workers and frontend, in that order. On error, whatever started is
// stopped again.
func startStack(ctx context.Context, bin, dir string, spec stackSpec) (s *stack, err error) {
	ports, err := freePorts(5)
	if err != nil {
		return nil, err
	}
	s = &stack{spec: spec, dir: filepath.Join(dir, spec.name)}
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return nil, err
	}
	s.cfgPath = filepath.Join(s.dir, "shoal.yaml")
	s.listen = fmt.Sprintf("127.0.0.1:%d", ports[3])
	s.url = "http://" + s.listen + "/echo"
	cfg := fmt.Sprintf(configYAML, ports[0], ports[1], ports[2], ports[3], ports[4])
	if err := os.WriteFile(s.cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	if out, err := exec.CommandContext(ctx, bin, "check", "-c", s.cfgPath).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("%s: shoal check: %v\n%s", spec.name, err, out)
	}
	defer func() {
		if err != nil {
			s.stop()
			s = nil
		}
	}()
	if err := s.start(bin, "broker", spec.brokerProcs, "broker"); err != nil {
		return s, err
	}
	for i := range spec.workers {
		if err := s.start(bin, "worker-"+strconv.Itoa(i), spec.workerProcs, "worker", "echo", "-name", "echo-"+strconv.Itoa(i)); err != nil {
			return s, err
		}
	}
	if err := s.start(bin, "frontend", spec.frontendProcs, "frontend"); err != nil {
		return s, err
	}
	return s, s.waitReady(ctx, 20*time.Second)
}

// start runs `bin args… -c config` with its output in a log file.
func (s *stack) start(bin, name string, maxprocs int, args ...string) error {
	logPath := filepath.Join(s.dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer f.Close() // the child holds its own descriptor
	cmd := exec.Command(bin, append(args, "-c", s.cfgPath)...)
	cmd.Env = childEnv(maxprocs)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:   true,            // the terminal's Ctrl-C reaches bench only; bench stops them in order
		Pdeathsig: syscall.SIGTERM, // and if bench dies, they go too
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: cannot start %s: %w", s.spec.name, name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	s.procs = append(s.procs, p)
	return nil
}

// waitReady polls until /readyz answers 200 and POST /echo succeeds (a
// worker has registered), or a process exits, or the timeout passes.
func (s *stack) waitReady(ctx context.Context, timeout time.Duration) error {
	c := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	last := "no answer yet"
	for {
		if err := s.check(); err != nil {
			return err
		}
		if ok, why := probe(c, "GET", "http://"+s.listen+"/readyz", nil); !ok {
			last = "/readyz: " + why
		} else if ok, why := probe(c, "POST", s.url, []byte("ping")); !ok {
			last = "POST /echo: " + why
		} else {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not ready after %v (%s)%s", s.spec.name, timeout, last, s.logTails())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func probe(c *http.Client, method, url string, body []byte) (bool, string) {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return false, err.Error()
	}
	resp, err := c.Do(req)
	if err != nil {
		return false, err.Error()
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Sprintf("%s %s", resp.Status, bytes.TrimSpace(b))
	}
	return true, ""
}

// check reports a process that has exited.
func (s *stack) check() error {
	for _, p := range s.procs {
		if p.exited() {
			return fmt.Errorf("%s: %s (pid %d) exited: %v%s", s.spec.name, p.name, p.pid(), p.err, s.logTails())
		}
	}
	return nil
}

// logTails returns the end of every process's log, for error messages.
func (s *stack) logTails() string {
	var b strings.Builder
	for _, p := range s.procs {
		data, err := os.ReadFile(p.log)
		if err != nil || len(bytes.TrimSpace(data)) == 0 {
			continue
		}
		if len(data) > 2000 {
			data = data[len(data)-2000:]
		}
		fmt.Fprintf(&b, "\n--- %s log (%s):\n%s", p.name, p.log, bytes.TrimRight(data, "\n"))
	}
	return b.String()
}

// stop sends SIGTERM to every process at once (frontend first, so that it
// stops taking requests) and waits for all of them.
func (s *stack) stop() {
	if s == nil {
		return
	}
	done := make(chan struct{})
	for i := len(s.procs) - 1; i >= 0; i-- {
		go func(p *proc) {
			p.stop(10 * time.Second)
			done <- struct{}{}
		}(s.procs[i])
	}
	for range s.procs {
		<-done
	}
}
