package supervisor

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/testenv"
)

type notice struct {
	process string
	at      time.Time
}

// fakeBroker is a broker admin endpoint that records POST /died.
func fakeBroker(t *testing.T) (*httptest.Server, chan notice) {
	ch := make(chan notice, 16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/died" {
			http.NotFound(w, r)
			return
		}
		ch <- notice{r.URL.Query().Get("process"), time.Now()}
		io.WriteString(w, "1\n")
	}))
	t.Cleanup(srv.Close)
	return srv, ch
}

// Item 8: when a child dies, the supervisor tells every broker at once
// (POST /died?process=host/pid), so that the broker re-dispatches that
// worker's requests without waiting for missed heartbeats. The e2e test
// measures what this does to re-dispatch times.
func TestTellsTheBrokersAtOnce(t *testing.T) {
	b1, n1 := fakeBroker(t)
	b2, n2 := fakeBroker(t)
	head := fmt.Sprintf(`brokers:
  - {name: b1, clients: "tcp://127.0.0.1:0", workers: "tcp://127.0.0.1:0", admin: "%s"}
  - {name: b2, clients: "tcp://127.0.0.1:0", workers: "tcp://127.0.0.1:0", admin: "%s"}
supervisor:
  socket: @SOCKET@
  notify_brokers: %%v
programs:
  - {name: w, command: sleep 1000, startsecs: 50ms}
`, b1.Listener.Addr(), b2.Listener.Addr())
	h := start(t, fmt.Sprintf(head, true))
	host, _ := os.Hostname()
	for i := range 3 {
		s := h.waitState("w:0", Running, 5*time.Second)
		killed := time.Now()
		kill(t, s.PID, syscall.SIGKILL)
		want := fmt.Sprintf("%s/%d", host, s.PID)
		for _, ch := range []chan notice{n1, n2} {
			select {
			case n := <-ch:
				if n.process != want {
					t.Errorf("notice for %q, want %q", n.process, want)
				}
				t.Logf("kill %d: kill -9 → the broker's notice in %v", i, n.at.Sub(killed))
				if n.at.Sub(killed) > time.Second {
					t.Errorf("the notice took %v", n.at.Sub(killed))
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("kill %d: no notice", i)
			}
		}
	}

	// notify_brokers: false turns it off (and changes no process).
	s := h.waitState("w:0", Running, 5*time.Second)
	h.write(strings.Replace(fmt.Sprintf(head, false), "@SOCKET@", h.sup.Socket(), 1))
	if res, err := h.c.Reload(h.ctx()); err != nil || len(res.Unchanged) != 1 {
		t.Fatalf("reload: %+v, %v", res, err)
	}
	kill(t, s.PID, syscall.SIGKILL)
	testenv.Eventually(t, 5*time.Second, "the replacement", func() bool {
		n := h.status("w:0")
		return n.PID != s.PID && n.State == Running
	})
	select {
	case n := <-n1:
		t.Errorf("notice with notify_brokers false: %+v", n)
	case <-time.After(200 * time.Millisecond):
	}
}
