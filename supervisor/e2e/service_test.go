package e2e

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/testenv"
)

// Item 10: `shoal service install | start | status | stop | uninstall`
// through kardianos/service, as root, on this host's service manager
// (systemd where it runs, a SysV init script elsewhere, as here). The
// stack answers while the service runs, and uninstall leaves nothing
// behind: no init script or unit, no rc links, no pid file, no process.
func TestSystemService(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Missing(t, "not root: installing a system service needs root (CI runs it as root)")
	}
	name := "shoal-test-" + strconv.Itoa(os.Getpid())
	s := newStack(t, `programs:
  - name: broker
    command: "{shoal} broker -c {config}"
    ready: {http: "http://127.0.0.1:{{Admin}}/healthz"}
  - name: echo
    command: "{shoal} worker echo -c {config}"
    depends_on: [broker]
    ready: {broker_service: echo}
  - name: frontend
    command: "{shoal} frontend -c {config}"
    depends_on: [echo]
    ready: {http: "http://127.0.0.1:{{Listen}}/readyz"}
`)
	svc := func(action string) (string, int) {
		t.Helper()
		cmd := exec.Command(shoalBin, "service", action, "-c", s.file, "--name", name)
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), code
	}
	// Whatever happens, leave the host as it was.
	t.Cleanup(func() {
		svc("stop")
		svc("uninstall")
		s.checkNoLeftovers()
	})
	systemd := false
	if _, err := os.Stat("/run/systemd/system"); err == nil {
		systemd = true
	}
	installed := []string{"/etc/init.d/" + name}
	if systemd {
		installed = []string{"/etc/systemd/system/" + name + ".service"}
	}

	out, code := svc("install")
	if code != 0 {
		t.Fatalf("install: exit %d\n%s", code, out)
	}
	t.Logf("install: %s", strings.TrimSpace(out))
	for _, f := range installed {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatalf("install wrote no %s: %v", f, err)
		}
		if !strings.Contains(string(b), "supervisor") || !strings.Contains(string(b), s.file) {
			t.Errorf("%s does not run the supervisor:\n%s", f, b)
		}
	}
	if out, code := svc("status"); code != 3 || !strings.Contains(out, "stopped") {
		t.Errorf("status before start: exit %d: %s", code, out)
	}
	if out, code := svc("start"); code != 0 {
		t.Fatalf("start: exit %d\n%s", code, out)
	}
	s.waitRunning(30 * time.Second)
	resp, err := http.Get(s.url("/echo?from=service"))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /echo from the service's stack: %v %v", resp, err)
	}
	resp.Body.Close()
	if out, code := svc("status"); code != 0 || !strings.Contains(out, name+": running") {
		t.Errorf("status: exit %d: %s", code, out)
	}
	// The service's own output goes to the log dir, not /var/log.
	logDir := filepath.Join(s.dir, "run", "log")
	if !systemd {
		if _, err := os.Stat(filepath.Join(logDir, name+".err")); err != nil {
			t.Errorf("the service's stderr is not in %s: %v", logDir, err)
		}
	}

	if out, code := svc("stop"); code != 0 {
		t.Fatalf("stop: exit %d\n%s", code, out)
	}
	s.checkNoLeftovers()
	if _, err := s.c.Status(context.Background()); err == nil {
		t.Error("the supervisor still answers after stop")
	}
	if out, code := svc("uninstall"); code != 0 {
		t.Fatalf("uninstall: exit %d\n%s", code, out)
	}
	left := append([]string{"/var/run/" + name + ".pid", "/var/log/" + name + ".log", "/var/log/" + name + ".err"}, installed...)
	links, _ := filepath.Glob("/etc/rc?.d/*" + name)
	left = append(left, links...)
	for _, f := range left {
		if _, err := os.Lstat(f); err == nil {
			t.Errorf("%s remains after uninstall", f)
		}
	}
	if out, code := svc("status"); code != 3 || !strings.Contains(out, "not installed") {
		t.Errorf("status after uninstall: exit %d: %s", code, out)
	}
}
