package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/testenv"
)

func names(st []Status) []string {
	out := make([]string, len(st))
	for i, s := range st {
		out[i] = s.Name
	}
	return out
}

func resultNames(rs []Result) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.Name
	}
	return out
}

// Item 5: the control API on a 0600 unix socket; NAME, NAME:INDEX,
// GROUP, GROUP:* and all; status, start, stop, restart, signal.
func TestControlAPI(t *testing.T) {
	h := start(t, `programs:
  - {name: a, group: g, numprocs: 2, command: sleep 1000, startsecs: 0s}
  - {name: b, group: g, command: [/bin/sh, -c, 'trap "exit 9" USR1; echo trapped; while :; do sleep 0.02; done'], startsecs: 0s, autorestart: never}
  - {name: c, command: sleep 1000, startsecs: 0s}
`)
	h.waitRunning(5 * time.Second)
	fi, err := os.Stat(h.sup.Socket())
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("control socket: %v %v", fi.Mode(), err)
	}

	ctx := h.ctx()
	for _, tt := range []struct {
		names []string
		want  []string
	}{
		{nil, []string{"a:0", "a:1", "b:0", "c:0"}},
		{[]string{"all"}, []string{"a:0", "a:1", "b:0", "c:0"}},
		{[]string{"g:*"}, []string{"a:0", "a:1", "b:0"}},
		{[]string{"g"}, []string{"a:0", "a:1", "b:0"}}, // no program is named g: the group
		{[]string{"a"}, []string{"a:0", "a:1"}},
		{[]string{"c", "a:1"}, []string{"a:1", "c:0"}}, // config order, no duplicates
		{[]string{"a:1", "a"}, []string{"a:0", "a:1"}},
	} {
		st, err := h.c.Status(ctx, tt.names...)
		if err != nil || !slices.Equal(names(st), tt.want) {
			t.Errorf("status %v = %v, %v; want %v", tt.names, names(st), err, tt.want)
		}
	}
	_, err = h.c.Status(ctx, "nope")
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != 404 || !strings.Contains(ae.Msg, `no program, instance or group is named "nope" (known: all, a, b, c, c:*, g:*)`) {
		t.Errorf("status nope: %v", err)
	}
	if _, err := h.c.Stop(ctx, []string{"a:7"}, 0); err == nil {
		t.Error("stop a:7: no error")
	}

	c0 := h.status("c:0")
	if c0.UptimeMS <= 0 || c0.Restarts != 0 || c0.PID == 0 || c0.Group != "c" || c0.Program != "c" {
		t.Errorf("status c:0 = %+v", c0)
	}

	res, err := h.c.Stop(ctx, []string{"g:*"}, 0)
	if err != nil || !slices.Equal(resultNames(res), []string{"a:0", "a:1", "b:0"}) {
		t.Fatalf("stop g:* = %+v, %v", res, err)
	}
	for _, r := range res {
		if r.State != Stopped || r.PID != 0 || r.Error != "" {
			t.Errorf("after stop: %+v", r)
		}
	}
	if s := h.status("c:0"); s.State != Running || s.PID != c0.PID {
		t.Errorf("stop g:* touched c: %+v", s)
	}
	res, err = h.c.Start(ctx, []string{"a:1"}, 0)
	if err != nil || len(res) != 1 || res[0].State != Running || res[0].PID == 0 {
		t.Errorf("start a:1 = %+v, %v", res, err)
	}
	if s := h.status("a:0"); s.State != Stopped {
		t.Errorf("start a:1 started a:0: %+v", s)
	}
	res, err = h.c.Restart(ctx, []string{"c"}, false, 0)
	if err != nil || len(res) != 1 || res[0].State != Running || res[0].PID == c0.PID {
		t.Errorf("restart c = %+v, %v (old pid %d)", res, err, c0.PID)
	}
	if s := h.status("c:0"); s.Restarts != 1 || s.LastExit != "signal TERM" {
		t.Errorf("after restart: %+v", s)
	}

	// signal goes to the process; b exits 9 on USR1 and is not restarted.
	if _, err := h.c.Start(ctx, []string{"b"}, 0); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "b's trap", func() bool {
		b, _ := os.ReadFile(File(filepath.Join(h.sup.RunDir(), "log"), "b", 0, Stdout))
		return strings.Count(string(b), "trapped\n") == 2
	})
	res, err = h.c.Signal(ctx, "USR1", []string{"b"})
	if err != nil || len(res) != 1 || res[0].Error != "" {
		t.Fatalf("signal USR1 b = %+v, %v", res, err)
	}
	if s := h.waitState("b:0", Exited, 5*time.Second); s.LastExit != "exit 9" {
		t.Errorf("b after USR1: %+v", s)
	}
	res, _ = h.c.Signal(ctx, "HUP", []string{"b"})
	if len(res) != 1 || res[0].Error != "not running" {
		t.Errorf("signal to an exited instance: %+v", res)
	}
	if _, err := h.c.Signal(ctx, "NOPE", []string{"b"}); err == nil {
		t.Error("signal NOPE: no error")
	}

	// Raw API: a bad body and a missing name are 400s with a message.
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", h.sup.Socket())
	}}}
	for body, want := range map[string]string{"{": "bad request body", `{"names": []}`: "name what to start"} {
		resp, err := hc.Post("http://x/v1/start", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		var er struct{ Error string }
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || json.Unmarshal(b, &er) != nil || !strings.Contains(er.Error, want) {
			t.Errorf("POST /v1/start %q: %d %s", body, resp.StatusCode, b)
		}
	}
}

// Item 5: a second supervisor for the same socket refuses to start; a
// stale socket file (left by a crash) is replaced.
func TestSocketInUseAndStale(t *testing.T) {
	h := start(t, `programs: []
`)
	other, err := New(Options{Config: h.sup.cfg, Executable: "/nonexistent/shoal", Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	err = other.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "another supervisor is running") {
		t.Errorf("second supervisor: %v", err)
	}
	h.stop()

	// A socket file nobody listens on.
	ln, err := net.Listen("unix", h.sup.Socket())
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	again, err := New(Options{Config: h.sup.cfg, Executable: "/nonexistent/shoal", Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- again.Run(ctx) }()
	testenv.Eventually(t, 5*time.Second, "the new supervisor to answer", func() bool {
		_, err := NewClient(again.Socket()).Status(context.Background())
		return err == nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(again.Socket()); !os.IsNotExist(err) {
		t.Errorf("the socket remains after Run: %v", err)
	}
}

func TestClientNotRunning(t *testing.T) {
	c := NewClient("/nonexistent/shoal.sock")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := c.Status(ctx); !errors.Is(err, ErrNotRunning) {
		t.Errorf("status without a supervisor: %v", err)
	}
}

// Item 5: only root and the supervisor's own user may use the control
// socket: another user (nobody) cannot connect.
func TestControlSocketRefusesOtherUsers(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Missing(t, "needs root to run a client as another user (CI runs as root)")
	}
	h := start(t, "programs: []\n")
	os.Chmod(filepath.Dir(h.sup.Socket()), 0o755) // the socket's own mode must be what refuses
	// This test binary, where nobody can run it, connecting as nobody.
	dir, err := os.MkdirTemp("", "sv-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	self, _ := os.Executable()
	bin := filepath.Join(dir, "client")
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = []string{"SHOAL_TEST_DIAL=" + h.sup.Socket()}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "permission denied") {
		t.Errorf("a client running as nobody: %v: %s", err, out)
	}
	// And root may.
	if _, err := h.c.Status(h.ctx()); err != nil {
		t.Errorf("root: %v", err)
	}
}
