package supervisor

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/config"
	"github.com/shoal-dev/shoal/internal/testenv"
)

// These tests run a Supervisor in the test process with real children
// (/bin/sleep, /bin/sh, redis-server and the shoal binary, built once in
// TestMain) and talk to it through its control socket, as shoal ctl does.

// shoalBin is the shoal binary for {shoal}: $SHOAL_BIN, or built on first
// use by needShoal; tests that do not exec it do not wait for the build.
var (
	shoalBin   string
	shoalBuild sync.Once
	shoalErr   error
	shoalDir   string
)

func TestMain(m *testing.M) {
	if sock := os.Getenv("SHOAL_TEST_DIAL"); sock != "" {
		// TestControlSocketRefusesOtherUsers runs this binary as another
		// user, to connect to the control socket.
		c, err := net.Dial("unix", sock)
		if err != nil {
			fmt.Println(err)
			os.Exit(0)
		}
		c.Close()
		fmt.Println("connected")
		os.Exit(0)
	}
	code := m.Run()
	if shoalDir != "" {
		os.RemoveAll(shoalDir)
	}
	os.Exit(code)
}

// needShoal returns the shoal binary, building ./cmd/shoal once.
func needShoal(t testing.TB) string {
	t.Helper()
	shoalBuild.Do(func() {
		if b := os.Getenv("SHOAL_BIN"); b != "" {
			shoalBin, shoalErr = filepath.Abs(b)
			return
		}
		if shoalDir, shoalErr = os.MkdirTemp("", "shoal-supervisor-test-"); shoalErr != nil {
			return
		}
		shoalBin = filepath.Join(shoalDir, "shoal")
		cmd := exec.Command("go", "build", "-o", shoalBin, "./cmd/shoal")
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			shoalErr = fmt.Errorf("go build ./cmd/shoal: %v\n%s", err, out)
		}
	})
	if shoalErr != nil {
		t.Fatal(shoalErr)
	}
	return shoalBin
}

// ---- the supervisor under test ----

type harness struct {
	t      *testing.T
	dir    string // the config file's directory
	file   string
	sup    *Supervisor
	c      *Client
	tee    *testenv.SyncBuffer
	logs   *testenv.SyncBuffer
	cancel context.CancelFunc
	done   chan error
}

// setup writes a config with the given sections (YAML, after a broker
// entry) and creates the supervisor, without running it.
func setup(t *testing.T, yaml string) *harness {
	t.Helper()
	dir := t.TempDir()
	// A short socket path: sun_path holds 108 bytes.
	sockDir, err := os.MkdirTemp("", "sv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	h := &harness{t: t, dir: dir, file: filepath.Join(dir, "shoal.yaml"), tee: &testenv.SyncBuffer{}, logs: &testenv.SyncBuffer{}}
	src := fmt.Sprintf("brokers:\n  - {name: b0, clients: \"tcp://127.0.0.1:0\", workers: \"tcp://127.0.0.1:0\"}\n"+
		"supervisor:\n  socket: %s\n  notify_brokers: false\n  fatal_retry: 1m\n", filepath.Join(sockDir, "s.sock"))
	if strings.Contains(yaml, "supervisor:") || strings.Contains(yaml, "brokers:") {
		src = strings.Replace(yaml, "@SOCKET@", filepath.Join(sockDir, "s.sock"), 1)
	} else {
		src += yaml
	}
	h.write(src)
	c, err := config.Load(h.file)
	if err != nil {
		t.Fatalf("config: %v\n%s", err, src)
	}
	log := slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	exe := "/nonexistent/shoal" // {shoal}: tests that exec it call needShoal first
	if shoalBin != "" {
		exe = shoalBin
	}
	h.sup, err = New(Options{Config: c, Executable: exe, Logger: log, Tee: h.tee})
	if err != nil {
		t.Fatal(err)
	}
	h.c = NewClient(h.sup.Socket())
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("supervisor log:\n%s", h.logs.String())
		}
	})
	return h
}

// run starts the supervisor; the test's cleanup stops it and checks that
// every child is gone.
func (h *harness) run() *harness {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan error, 1)
	go func() { h.done <- h.sup.Run(ctx) }()
	h.t.Cleanup(func() { h.stop() })
	testenv.Eventually(h.t, 5*time.Second, "the control socket to answer", func() bool {
		_, err := h.c.Status(context.Background())
		return err == nil
	})
	return h
}

// start is setup then run.
func start(t *testing.T, yaml string) *harness { return setup(t, yaml).run() }

// stop ends Run (idempotent) and waits for it.
func (h *harness) stop() {
	h.t.Helper()
	if h.cancel == nil {
		return
	}
	h.cancel()
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("Run: %v", err)
		}
		h.done <- err
	case <-time.After(30 * time.Second):
		h.sup.Kill()
		h.t.Errorf("Run did not return 30s after its context ended")
		<-h.done
	}
}

func (h *harness) write(src string) {
	h.t.Helper()
	if err := os.WriteFile(h.file, []byte(src), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	h.t.Cleanup(cancel)
	return ctx
}

func (h *harness) status(name string) Status {
	h.t.Helper()
	st, err := h.c.Status(context.Background(), name)
	if err != nil {
		h.t.Fatalf("status %s: %v", name, err)
	}
	if len(st) != 1 {
		h.t.Fatalf("status %s: %d instances", name, len(st))
	}
	return st[0]
}

func (h *harness) all() map[string]Status {
	h.t.Helper()
	st, err := h.c.Status(context.Background())
	if err != nil {
		h.t.Fatalf("status: %v", err)
	}
	m := make(map[string]Status, len(st))
	for _, s := range st {
		m[s.Name] = s
	}
	return m
}

// waitState polls until instance name is in state, and returns its status.
func (h *harness) waitState(name string, state State, timeout time.Duration) Status {
	h.t.Helper()
	var last Status
	testenv.Eventually(h.t, timeout, fmt.Sprintf("%s to be %s", name, state), func() bool {
		st, err := h.c.Status(context.Background(), name)
		if err != nil || len(st) != 1 {
			return false
		}
		last = st[0]
		return last.State == state
	}, func() string { return fmt.Sprintf("last: %+v", last) })
	return last
}

// waitRunning waits until every instance runs.
func (h *harness) waitRunning(timeout time.Duration) map[string]Status {
	h.t.Helper()
	var last []Status
	testenv.Eventually(h.t, timeout, "every instance to be RUNNING", func() bool {
		st, err := h.c.Status(context.Background())
		if err != nil {
			return false
		}
		last = st
		for _, s := range st {
			if s.State != Running {
				return false
			}
		}
		return true
	}, func() string { return fmt.Sprintf("last: %+v", last) })
	m := make(map[string]Status)
	for _, s := range last {
		m[s.Name] = s
	}
	return m
}

// alive reports whether process pid exists (and is not a zombie).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// pid (comm) S …: the state follows the last ')'.
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z'
}

func kill(t *testing.T, pid int, sig syscall.Signal) {
	t.Helper()
	if err := syscall.Kill(pid, sig); err != nil {
		t.Fatalf("kill %d %v: %v", pid, sig, err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func listenTCP(port int) (net.Listener, error) {
	return net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
}

// quiet is a logger for supervisors whose log no test reads.
var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))
