package config

import (
	"reflect"
	"testing"
	"time"
)

func TestEventsSection(t *testing.T) {
	c := mustParse(t, minimal, nil)
	if !reflect.DeepEqual(c.Events, defaultEvents()) || c.EventsInEndpoints() != nil {
		t.Errorf("events defaults %+v, endpoints %q", c.Events, c.EventsInEndpoints())
	}
	c = mustParse(t, `brokers:
  - {name: b0, clients: tcp://127.0.0.1:5555, workers: tcp://127.0.0.1:5556, events_in: tcp://127.0.0.1:5557, events_out: tcp://127.0.0.1:5558}
  - {name: b1, clients: tcp://127.0.0.1:6555, workers: tcp://127.0.0.1:6556}
events:
  queue: 100
  window: 32KiB
  heartbeat: 5s
  path: /live
  task_events: false
`, nil)
	if got := c.EventsInEndpoints(); !reflect.DeepEqual(got, []string{"tcp://127.0.0.1:5557"}) {
		t.Errorf("EventsInEndpoints = %q", got)
	}
	if got := c.EventsOutEndpoints(); !reflect.DeepEqual(got, []string{"tcp://127.0.0.1:5558"}) {
		t.Errorf("EventsOutEndpoints = %q", got)
	}
	e := c.Events
	if e.Queue != 100 || e.Window != 32<<10 || e.Heartbeat.D() != 5*time.Second || e.Path != "/live" || e.TaskEvents || e.ClientBuffer != 256 {
		t.Errorf("events = %+v", e)
	}
}

func TestEventsProblems(t *testing.T) {
	got := problems(t, `brokers:
  - name: b0
    clients: tcp://127.0.0.1:5555
    workers: tcp://127.0.0.1:5556
    events_in: tcp://127.0.0.1:5555
  - name: b1
    clients: tcp://127.0.0.1:6555
    workers: tcp://127.0.0.1:6556
    events_in: udp://x
    events_out: tcp://127.0.0.1:6557
frontend:
  routes:
    - {method: GET, path: /events/, service: s}
events:
  queue: 0
  window: 0
  heartbeat: 0s
  client_buffer: -1
  max_clients: -1
`, nil)
	want := []string{
		`t.yaml:2:5: brokers[0].events_out: is required with events_in, such as tcp://127.0.0.1:5558`,
		`t.yaml:5:16: brokers[0].events_in: "tcp://127.0.0.1:5555" is also brokers[0].clients`,
		`t.yaml:9:16: brokers[1].events_in: must be an endpoint like tcp://127.0.0.1:5555, got "udp://x"`,
		`t.yaml:13:27: frontend.routes[0].path: /events/ is events.path, the event stream`,
		`t.yaml:15:10: events.queue: must be positive, got 0`,
		`t.yaml:16:11: events.window: must be positive, got 0`,
		`t.yaml:17:14: events.heartbeat: must be positive, got "0s"`,
		`t.yaml:18:18: events.client_buffer: must be positive, got -1`,
		`t.yaml:19:16: events.max_clients: must be at least 0, got -1`,
	}
	if d := diff(want, got); d != "" {
		t.Error(d)
	}
}
