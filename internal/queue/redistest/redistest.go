// Package redistest runs a real redis-server for tests: on a free port of
// 127.0.0.1, with its data in t.TempDir(), with the persistence settings
// Shoal runs Redis with (Args), restartable, and killed when the test
// ends.
//
//	srv := redistest.Start(t)
//	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
//	…
//	srv.Restart(t) // SIGTERM, wait, start again on the same port and dir
//
// Without redis-server on the machine the test is skipped, or fails when
// the environment says CI=true.
package redistest

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/testenv"
)

// Args are the redis-server arguments Shoal runs Redis with: AOF on,
// fsynced every second, no RDB snapshots, loopback only, and task hashes
// (a message of up to 1KiB and a few small fields) kept as listpacks,
// which halves their memory and the cost of creating and deleting them.
func Args(port int, dir string) []string {
	return []string{
		"--port", strconv.Itoa(port),
		"--bind", "127.0.0.1",
		"--dir", dir,
		"--appendonly", "yes",
		"--appendfsync", "everysec",
		"--save", "",
		"--hash-max-listpack-value", "1024",
	}
}

// Server is one redis-server process.
type Server struct {
	Addr string // 127.0.0.1:port
	Port int
	Dir  string // its working directory: AOF files and redis.log
	// Extra arguments after Args, such as "--appendfsync", "always".
	Extra []string

	bin string
	cmd *exec.Cmd
}

// Binary returns the path of redis-server, or "" after skipping (or, under
// CI=true, failing) the test when there is none.
func Binary(t testing.TB) string {
	t.Helper()
	bin := os.Getenv("REDIS_SERVER")
	if bin == "" {
		bin = "redis-server"
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		testenv.Missing(t, fmt.Sprintf("no redis-server (%v); apt-get install redis-server", err))
		return ""
	}
	return path
}

// Start runs redis-server with Args plus extra and waits until it answers
// PING. It is killed when the test ends.
func Start(t testing.TB, extra ...string) *Server {
	t.Helper()
	s := &Server{bin: Binary(t), Dir: t.TempDir(), Extra: extra}
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		s.Port = testenv.FreePort(t)
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port))
		if err = s.start(); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	t.Cleanup(s.Kill)
	return s
}

// start runs the process and waits for PING; on failure it returns the
// tail of redis.log.
func (s *Server) start() error {
	logf := filepath.Join(s.Dir, "redis.log")
	args := append(Args(s.Port, s.Dir), "--logfile", logf)
	s.cmd = exec.Command(s.bin, append(args, s.Extra...)...)
	s.cmd.Dir = s.Dir
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("cannot start redis-server: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- s.cmd.Wait() }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if ping(s.Addr) {
			// Keep reaping the process in the background.
			go func(ch chan error) { <-ch }(exited)
			return nil
		}
		select {
		case err := <-exited:
			s.cmd = nil
			return fmt.Errorf("redis-server on port %d exited (%v):\n%s", s.Port, err, tail(logf))
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.Kill()
			return fmt.Errorf("redis-server on port %d did not answer PING within 20s:\n%s", s.Port, tail(logf))
		}
	}
}

// ping reports whether a server at addr answers PING with PONG (not
// LOADING: a server replaying its AOF is not ready).
func ping(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "+PONG")
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}

// Stop shuts the server down with SIGTERM, which fsyncs the AOF, and waits
// until the port is closed.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.signal(t, syscall.SIGTERM)
}

// Kill stops the server with SIGKILL: what the AOF had not fsynced is lost,
// as in a crash. It does nothing when the server is not running.
func (s *Server) Kill() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Kill()
	waitClosed(s.Addr, 10*time.Second)
	s.cmd = nil
}

func (s *Server) signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	if err := s.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("redistest: cannot signal redis-server: %v", err)
	}
	if !waitClosed(s.Addr, 20*time.Second) {
		t.Fatalf("redistest: redis-server still listening 20s after %v", sig)
	}
	s.cmd = nil
}

// waitClosed polls until nothing accepts connections at addr.
func waitClosed(addr string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err != nil {
			return true
		}
		c.Close()
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// Restart stops the server with SIGTERM and starts it again on the same
// port and directory; it returns once the AOF is loaded and PING answers.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop(t)
	s.StartAgain(t)
}

// StartAgain starts a stopped or killed server on its port and directory.
func (s *Server) StartAgain(t testing.TB) {
	t.Helper()
	var err error
	for attempt := 0; attempt < 50; attempt++ { // the port may linger a moment
		if err = s.start(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("redistest: restart: %v", err)
}
