package supervisor

import (
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/queue/redistest"
	"github.com/shoal-dev/shoal/internal/testenv"
)

// Item 2: depends_on with readiness. The chain is listed backwards in the
// file, so the order can only come from depends_on; each program starts
// only once the one it depends on passed its check (tcp for redis-server,
// zmq for the broker, broker_service for the worker, http for the
// frontend), and stopping runs in reverse order.
func TestDependsOnReadinessAndReverseStop(t *testing.T) {
	redistest.Binary(t)
	needShoal(t)
	redis, clients, workers, admin, listen := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	h := start(t, fmt.Sprintf(`brokers:
  - {name: b0, clients: "tcp://127.0.0.1:%[2]d", workers: "tcp://127.0.0.1:%[3]d", admin: "127.0.0.1:%[4]d"}
broker: {heartbeat: 100ms}
frontend:
  listen: "127.0.0.1:%[5]d"
  admin: ""
  routes: [{method: GET, path: /echo, service: echo}]
supervisor:
  socket: @SOCKET@
programs:
  - name: last
    command: sleep 1000
    startsecs: 0s
    depends_on: [frontend]
  - name: frontend
    command: "{shoal} frontend -c {config}"
    depends_on: [echo]
    ready: {http: "http://127.0.0.1:%[5]d/readyz"}
  - name: echo
    command: "{shoal} worker echo -c {config}"
    depends_on: [broker]
    ready: {broker_service: echo}
  - name: broker
    command: "{shoal} broker -c {config}"
    depends_on: [redis]
    ready: {zmq: "tcp://127.0.0.1:%[3]d"}
  - name: redis
    command: [/bin/sh, -c, 'sleep 0.3; exec redis-server --port %[1]d --bind 127.0.0.1 --save "" --appendonly no']
    dir: "{run_dir}/redis"
    ready: {tcp: "127.0.0.1:%[1]d"}
`, redis, clients, workers, admin, listen))
	st := h.waitRunning(30 * time.Second)
	chain := []string{"redis:0", "broker:0", "echo:0", "frontend:0", "last:0"}
	for i := 1; i < len(chain); i++ {
		dep, s := st[chain[i-1]], st[chain[i]]
		if dep.Ready.IsZero() || s.Started.Before(dep.Ready) {
			t.Errorf("%s started at %s, before %s was ready at %s", s.Name, s.Started.Format("15:04:05.000"), dep.Name, dep.Ready.Format("15:04:05.000"))
		}
	}
	if r := st["redis:0"]; r.Ready.Sub(r.Started) < 300*time.Millisecond {
		t.Errorf("redis ready %v after its start; its command sleeps 300ms first", r.Ready.Sub(r.Started))
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/echo?x=1", listen))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /echo through the stack: %s %s", resp.Status, body)
	}

	if _, err := h.c.Stop(h.ctx(), []string{"all"}, 0); err != nil {
		t.Fatal(err)
	}
	after := h.all()
	for i := 1; i < len(chain); i++ {
		dep, s := after[chain[i-1]], after[chain[i]]
		if s.Exited.IsZero() || dep.Exited.Before(s.Exited) {
			t.Errorf("%s exited at %s, before %s (which depends on it) at %s", dep.Name,
				dep.Exited.Format("15:04:05.000"), s.Name, s.Exited.Format("15:04:05.000"))
		}
	}
	for _, s := range after {
		if s.State != Stopped {
			t.Errorf("%s is %s after stop all", s.Name, s.State)
		}
	}
}

// Item 2: a dependency that never becomes ready holds its dependents
// back, and they say so.
func TestDependentsWaitForTheirDependency(t *testing.T) {
	h := start(t, `programs:
  - {name: app, command: sleep 1000, depends_on: [db], startsecs: 0s}
  - {name: db, command: /bin/false, startretries: 0}
`)
	h.waitState("db:0", Fatal, 5*time.Second)
	app := h.status("app:0")
	if app.State != Stopped || app.PID != 0 || app.Info != "waiting for db" {
		t.Errorf("app: %+v; want STOPPED, waiting for db", app)
	}
	// Once db can start, app follows.
	h.write(`brokers:
  - {name: b0, clients: "tcp://127.0.0.1:0", workers: "tcp://127.0.0.1:0"}
supervisor: {socket: ` + h.sup.Socket() + `, notify_brokers: false}
programs:
  - {name: app, command: sleep 1000, depends_on: [db], startsecs: 0s}
  - {name: db, command: sleep 1000, startsecs: 50ms}
`)
	if _, err := h.c.Reload(h.ctx()); err != nil {
		t.Fatal(err)
	}
	st := h.waitRunning(5 * time.Second)
	if st["app:0"].Started.Before(st["db:0"].Ready) {
		t.Errorf("app started before db was ready: %+v %+v", st["app:0"], st["db:0"])
	}
}
