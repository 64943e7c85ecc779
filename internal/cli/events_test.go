package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/broker"
	"github.com/shoal-dev/shoal/config"
	"github.com/shoal-dev/shoal/frontend"
	"github.com/shoal-dev/shoal/internal/queue/redistest"
	"github.com/shoal-dev/shoal/internal/testenv"
	"github.com/shoal-dev/shoal/queue"
	"github.com/shoal-dev/shoal/workers"
	"github.com/shoal-dev/shoal/workers/example"
)

// sse reads one event stream with a real HTTP client, on a goroutine of
// its own that hands over events (comments skipped) and finally the error
// that ended the stream (io.EOF for a clean end).
type sse struct {
	events chan sseMsg
}

type sseMsg struct {
	name, data string
	err        error
}

func openSSE(t *testing.T, url string) *sse {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	s := &sse{events: make(chan sseMsg, 1<<14)}
	go func() {
		r := bufio.NewReader(resp.Body)
		var m sseMsg
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				s.events <- sseMsg{err: err}
				return
			}
			line = strings.TrimRight(line, "\n")
			switch {
			case line == "" && m.name != "":
				s.events <- m
				m = sseMsg{}
			case strings.HasPrefix(line, "event: "):
				m.name = line[len("event: "):]
			case strings.HasPrefix(line, "data: "):
				m.data = line[len("data: "):]
			}
		}
	}()
	return s
}

// nextErr returns the next event, or the error that ended the stream.
func (s *sse) nextErr(timeout time.Duration) (name, data string, err error) {
	select {
	case m := <-s.events:
		return m.name, m.data, m.err
	case <-time.After(timeout):
		return "", "", fmt.Errorf("no event within %v", timeout)
	}
}

func (s *sse) next(t *testing.T, timeout time.Duration) (name, data string) {
	t.Helper()
	name, data, err := s.nextErr(timeout)
	if err != nil {
		t.Fatalf("reading the stream: %v", err)
	}
	return name, data
}

// Item 5: a client that got 202 and a task id watches
// /events?topic=task.<id> and sees the task's outcome, published by the
// queue consumer's hooks (taskEventHooks). Everything is real: Redis, the
// broker and its forwarder, the notes worker, the consumer, the frontend
// and an HTTP client; only the processes are one.
func TestTaskOutcomeEvents(t *testing.T) {
	rs := redistest.Start(t)
	hb := 100 * time.Millisecond
	b, err := broker.New(broker.Options{Clients: "tcp://127.0.0.1:0", Workers: "tcp://127.0.0.1:0", Heartbeat: hb,
		EventsIn: "tcp://127.0.0.1:0", EventsOut: "tcp://127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go b.Run(ctx)

	cfg, err := config.Parse("t.yaml", []byte(fmt.Sprintf(`brokers:
  - {name: b0, clients: tcp://%s, workers: tcp://%s, events_in: tcp://%s, events_out: tcp://%s}
broker: {heartbeat: 100ms}
redis: {addr: %q}
queue: {poll: 50ms, max_retries: 0}
frontend:
  routes:
    - {method: POST, path: /notes, service: notes}
`, b.ClientsAddr(), b.WorkersAddr(), b.EventsInAddr(), b.EventsOutAddr(), rs.Addr)), nil)
	if err != nil {
		t.Fatal(err)
	}

	// The notes worker: POST /notes enqueues and answers 202.
	qc := queue.NewClient(queueRedis(cfg), queueClientOptions(cfg))
	old := example.NotesQueue
	example.NotesQueue = func() (*queue.Client, error) { return qc, nil }
	defer func() { example.NotesQueue = old }()
	mux := workers.NewServeMux()
	example.Notes(mux)
	w, err := workers.NewServer(workers.Options{Brokers: cfg.WorkerEndpoints(), Heartbeat: hb}, mux)
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithCancel(context.Background())
	wdone := make(chan struct{})
	go func() { w.Run(wctx); close(wdone) }()
	defer func() { wcancel(); <-wdone }()

	// The frontend, wired as runFrontend wires it.
	client, err := broker.NewClient(broker.ClientOptions{Endpoints: cfg.ClientEndpoints(), Heartbeat: hb})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	events, stopEvents, err := frontendEvents(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer stopEvents()
	fe, err := frontend.New(frontend.Options{Events: events, Routes: []frontend.Route{{Method: "POST", Path: "/notes", Service: "notes"}}}, client)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go fe.Serve(ln)
	defer func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		fe.Shutdown(sctx)
	}()
	url := "http://" + ln.Addr().String()
	testenv.Eventually(t, 5*time.Second, "notes worker registered", func() bool {
		st, _ := b.Stats(context.Background())
		return len(st.Services) == 1 && st.Services[0].Workers == 1
	})

	// 202 and a task id.
	resp, err := http.Post(url+"/notes", "application/json", strings.NewReader(`{"text":"hello"}`))
	if err != nil {
		t.Fatal(err)
	}
	var accepted struct {
		TaskID string `json:"task_id"`
	}
	err = json.NewDecoder(resp.Body).Decode(&accepted)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 202 || accepted.TaskID == "" {
		t.Fatalf("POST /notes: %d %+v %v", resp.StatusCode, accepted, err)
	}
	// And a task that will die: no retries, its handler fails.
	failing, err := qc.Enqueue(context.Background(), queue.NewRawTask("always.fails", nil), queue.MaxRetries(0))
	if err != nil {
		t.Fatal(err)
	}

	done := openSSE(t, url+"/events?topic=task."+accepted.TaskID)
	dead := openSSE(t, url+"/events?topic=task."+failing.ID)
	testenv.Eventually(t, 5*time.Second, "both streams subscribed at the broker", func() bool {
		st, _ := b.Stats(context.Background())
		return st.Events != nil && slices.Equal(st.Events.Prefixes, []string{"task." + failing.ID, "task." + accepted.TaskID}) ||
			st.Events != nil && slices.Equal(st.Events.Prefixes, []string{"task." + accepted.TaskID, "task." + failing.ID})
	})

	// The consumer, with the hooks runConsumer installs.
	onDone, onDead, stopPub, err := taskEventHooks(cfg)
	if err != nil || onDone == nil || onDead == nil {
		t.Fatalf("taskEventHooks: %v", err)
	}
	defer stopPub()
	qmux := queue.NewServeMux()
	closeStore, err := example.NotesConsumer(qmux, example.ConsumerEnv{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer closeStore()
	qmux.HandleFunc("always.fails", func(context.Context, *queue.Task) error { return errors.New("disk on fire") })
	cons, err := queue.NewConsumer(queueRedis(cfg), queue.ConsumerOptions{Poll: 50 * time.Millisecond,
		OnDone: onDone, OnDead: onDead}, qmux)
	if err != nil {
		t.Fatal(err)
	}
	cctx, ccancel := context.WithCancel(context.Background())
	cdone := make(chan struct{})
	go func() { cons.Run(cctx); close(cdone) }()
	defer func() { ccancel(); <-cdone }()

	name, data := done.next(t, 10*time.Second)
	var te TaskEvent
	if err := json.Unmarshal([]byte(data), &te); err != nil {
		t.Fatalf("data %q: %v", data, err)
	}
	if name != "task."+accepted.TaskID+".done" || !strings.Contains(data, `"state":"done"`) || !strings.Contains(data, accepted.TaskID) ||
		!strings.Contains(data, `"type":"notes.write"`) {
		t.Errorf("done event %s %s", name, data)
	}
	name, data = dead.next(t, 10*time.Second)
	if name != "task."+failing.ID+".dead" || !strings.Contains(data, `"state":"dead"`) || !strings.Contains(data, "disk on fire") {
		t.Errorf("dead event %s %s", name, data)
	}
	var m bytes.Buffer
	fe.WriteMetrics(&m)
	if !strings.Contains(m.String(), "shoal_frontend_events_sent_total 2") {
		t.Errorf("metrics:\n%s", m.String())
	}
}
