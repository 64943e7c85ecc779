package e2e

import (
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/queue/redistest"
)

// Item 9: every child runs in its own process group and dies with the
// supervisor. Ctrl-C (SIGINT) stops the stack in reverse order and leaves
// no process behind; so does kill -9 of the supervisor (the children's
// parent-death signal).
func TestNoOrphans(t *testing.T) {
	redistest.Binary(t)
	for _, tc := range []struct {
		name string
		sig  syscall.Signal
	}{{"SIGINT", syscall.SIGINT}, {"SIGKILL", syscall.SIGKILL}} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStack(t, standardPrograms)
			s.start()
			st := s.waitRunning(30 * time.Second)
			resp, err := http.Get(s.url("/echo"))
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("GET /echo: %v %v", resp, err)
			}
			resp.Body.Close()
			if n := len(marked(s.dir)); n != len(st)+1 {
				t.Fatalf("%d processes of the stack before %s, want %d: %v", n, tc.name, len(st)+1, marked(s.dir))
			}
			for _, x := range st {
				pgid, err := syscall.Getpgid(x.PID)
				if err != nil || pgid != x.PID {
					t.Errorf("%s (pid %d) is in process group %d, not its own", x.Name, x.PID, pgid)
				}
			}
			begin := time.Now()
			s.stop(tc.sig, 30*time.Second)
			s.checkNoLeftovers()
			for _, x := range st {
				if alive(x.PID) {
					t.Errorf("%s (pid %d) survived the supervisor's %s", x.Name, x.PID, tc.name)
				}
			}
			t.Logf("%s: supervisor and %d children gone in %v", tc.name, len(st), time.Since(begin).Round(time.Millisecond))
			if tc.sig == syscall.SIGINT {
				out := s.tail(40)
				fe, br := strings.Index(out, `"program stopped" name=frontend:0`), strings.Index(out, `"program stopped" name=broker:0`)
				if fe < 0 || br < 0 || fe > br {
					t.Errorf("the broker stopped before the frontend:\n%s", out)
				}
			}
		})
	}
}
