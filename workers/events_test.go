package workers_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/shoal-dev/shoal/broker"
	"github.com/shoal-dev/shoal/internal/testenv"
	"github.com/shoal-dev/shoal/wire"
	"github.com/shoal-dev/shoal/workers"
)

// evStack is a broker with its event forwarder and a client.
type evStack struct {
	*stack
	in, out string
}

func newEventStack(t *testing.T) *evStack {
	t.Helper()
	b, err := broker.New(broker.Options{Clients: "tcp://127.0.0.1:0", Workers: "tcp://127.0.0.1:0", Heartbeat: hb,
		EventsIn: "tcp://127.0.0.1:0", EventsOut: "tcp://127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	s := &evStack{stack: &stack{b: b, clients: "tcp://" + b.ClientsAddr().String(), workers: "tcp://" + b.WorkersAddr().String()},
		in: "tcp://" + b.EventsInAddr().String(), out: "tcp://" + b.EventsOutAddr().String()}
	s.client, err = broker.NewClient(broker.ClientOptions{Endpoints: []string{s.clients}, Heartbeat: hb})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.client.Close)
	testenv.Eventually(t, 5*time.Second, "client link", s.client.Ready)
	return s
}

// run starts srv and returns a function that drains and stops it.
func run(t *testing.T, srv *workers.Server) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Run(ctx); close(done) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

// waitSubscribed polls until the broker holds n subscriptions.
func (s *evStack) waitSubscribed(t *testing.T, n int) {
	t.Helper()
	testenv.Eventually(t, 5*time.Second, fmt.Sprintf("%d subscriptions at the broker", n), func() bool {
		st, err := s.b.Stats(context.Background())
		return err == nil && st.Events != nil && st.Events.Subscriptions == n
	})
}

type employee struct {
	ID   int    `msgpack:"id"`
	Name string `msgpack:"name"`
}

type seenEvent struct {
	topic string
	emp   employee
	rid   string
	trace []wire.Hop
}

// Item 2: a handler publishes with workers.Publish; a worker with no
// services subscribes by prefix and gets the msgpack value with the trace
// of the request that caused it, and its own Publish continues that trace.
func TestPublishAndSubscribe(t *testing.T) {
	s := newEventStack(t)

	// The publisher: a service that announces what it did.
	mux := workers.NewServeMux()
	mux.HandleFunc("hr", func(ctx context.Context, r *workers.Request) (workers.Response, error) {
		if err := workers.Publish(ctx, "employee.created", employee{ID: 7, Name: string(r.Body)}); err != nil {
			return workers.Response{}, err
		}
		return workers.Response{Status: 201}, nil
	})
	hr, err := workers.NewServer(workers.Options{Brokers: []string{s.workers}, EventsIn: []string{s.in}, Heartbeat: hb}, mux)
	if err != nil {
		t.Fatal(err)
	}
	run(t, hr)

	// The reactor: no services, only subscriptions.
	welcome := make(chan seenEvent, 4)
	reactor, err := workers.NewServer(workers.Options{Brokers: []string{s.workers}, EventsIn: []string{s.in},
		EventsOut: []string{s.out}, Heartbeat: hb, Name: "welcomer"}, workers.NewServeMux())
	if err != nil {
		t.Fatal(err)
	}
	err = reactor.Subscribe("employee", func(ctx context.Context, ev *workers.Event) error {
		var e employee
		if err := ev.Decode(&e); err != nil {
			return err
		}
		welcome <- seenEvent{ev.Topic, e, ev.RID, ev.Trace}
		return workers.Publish(ctx, "mail.welcome", e)
	})
	if err != nil {
		t.Fatal(err)
	}
	run(t, reactor)

	// And a third that watches the mail.
	mails := make(chan seenEvent, 4)
	watcher, err := workers.NewServer(workers.Options{Brokers: []string{s.workers}, EventsOut: []string{s.out}, Heartbeat: hb}, workers.NewServeMux())
	if err != nil {
		t.Fatal(err)
	}
	watcher.Subscribe("mail", func(ctx context.Context, ev *workers.Event) error {
		var e employee
		err := ev.Decode(&e)
		mails <- seenEvent{ev.Topic, e, ev.RID, ev.Trace}
		return err
	})
	run(t, watcher)
	s.waitSubscribed(t, 2)
	testenv.Eventually(t, 5*time.Second, "hr registered", func() bool {
		st, _ := s.b.Stats(context.Background())
		return len(st.Services) == 1 && st.Services[0].Workers == 1
	})

	rep, err := s.client.Do(context.Background(), &wire.Request{Service: "hr", Body: []byte("Ada"), RID: "rid-ada",
		Trace: []wire.Hop{{Service: "frontend", Process: "f/1"}}})
	if err != nil || rep.Status != 201 {
		t.Fatalf("hr: %v %+v", err, rep)
	}
	var ev seenEvent
	select {
	case ev = <-welcome:
	case <-time.After(5 * time.Second):
		t.Fatal("no employee event")
	}
	if ev.topic != "employee.created" || ev.emp != (employee{7, "Ada"}) || ev.rid != "rid-ada" {
		t.Errorf("event %+v", ev)
	}
	if len(ev.trace) != 2 || ev.trace[0].Service != "frontend" || ev.trace[1].Service != "hr" {
		t.Errorf("event trace %+v, want frontend then hr", ev.trace)
	}
	var mail seenEvent
	select {
	case mail = <-mails:
	case <-time.After(5 * time.Second):
		t.Fatal("no mail event")
	}
	if mail.topic != "mail.welcome" || mail.emp.Name != "Ada" || mail.rid != "rid-ada" {
		t.Errorf("mail event %+v", mail)
	}
	if len(mail.trace) != 3 || mail.trace[2].Service != "welcomer" {
		t.Errorf("mail trace %+v, want frontend, hr, welcomer", mail.trace)
	}
}

func TestPublishErrors(t *testing.T) {
	s := newEventStack(t)
	if err := workers.Publish(context.Background(), "a", 1); !errors.Is(err, workers.ErrNoPublisher) {
		t.Errorf("Publish outside a handler: %v", err)
	}
	mux := workers.NewServeMux()
	mux.HandleFunc("x", func(ctx context.Context, r *workers.Request) (workers.Response, error) {
		return workers.Response{}, nil
	})
	plain, err := workers.NewServer(workers.Options{Brokers: []string{s.workers}}, mux)
	if err != nil {
		t.Fatal(err)
	}
	if err := plain.Publish(context.Background(), "a", 1); !errors.Is(err, workers.ErrNoPublisher) {
		t.Errorf("Publish without EventsIn: %v", err)
	}
	if err := plain.Subscribe("a", nil); !errors.Is(err, workers.ErrNoSubscriber) {
		t.Errorf("Subscribe without EventsOut: %v", err)
	}
	if _, err := workers.NewServer(workers.Options{Brokers: []string{s.workers}}, workers.NewServeMux()); err == nil {
		t.Error("a server with neither services nor subscriptions was accepted")
	}
	pub, err := workers.NewServer(workers.Options{Brokers: []string{s.workers}, EventsIn: []string{s.in}, EventsOut: []string{s.out}}, mux)
	if err != nil {
		t.Fatal(err)
	}
	run(t, pub)
	if err := pub.Publish(context.Background(), "bad..topic", 1); !errors.Is(err, wire.ErrTopic) {
		t.Errorf("invalid topic: %v", err)
	}
	if err := pub.Subscribe("bad.", nil); !errors.Is(err, wire.ErrTopic) {
		t.Errorf("invalid prefix: %v", err)
	}
	if err := pub.Publish(context.Background(), "ok", func() {}); err == nil {
		t.Error("a value msgpack cannot encode was accepted")
	}
}

// A slow handler does not hold up the links: past EventBuffer events, new
// ones are dropped and counted; a panicking handler is recovered; drain
// stops the subscriptions.
func TestSlowEventHandlerDrops(t *testing.T) {
	s := newEventStack(t)
	set := metrics.NewSet()
	srv, err := workers.NewServer(workers.Options{Brokers: []string{s.workers}, EventsIn: []string{s.in}, EventsOut: []string{s.out},
		Heartbeat: hb, EventBuffer: 4, Metrics: set}, workers.NewServeMux())
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	var slow, fast atomic.Int64
	srv.Subscribe("load", func(ctx context.Context, ev *workers.Event) error {
		if slow.Add(1) == 1 {
			select {
			case <-release:
			case <-ctx.Done(): // the worker is stopping
			}
		}
		return nil
	})
	srv.Subscribe("load", func(ctx context.Context, ev *workers.Event) error {
		if fast.Add(1) == 3 {
			panic("boom")
		}
		return nil
	})
	stop := run(t, srv)
	s.waitSubscribed(t, 1)
	const n = 50
	for i := range n {
		if err := srv.Publish(context.Background(), fmt.Sprintf("load.%d", i), i); err != nil {
			t.Fatal(err)
		}
		// One at a time, so that only the slow handler falls behind.
		testenv.Eventually(t, 5*time.Second, fmt.Sprintf("fast handler got %d", i+1), func() bool { return fast.Load() == int64(i+1) })
	}
	var buf bytes.Buffer
	metric := func(name string) string {
		buf.Reset()
		set.WritePrometheus(&buf)
		for _, line := range bytes.Split(buf.Bytes(), []byte("\n")) {
			if bytes.HasPrefix(line, []byte(name+" ")) {
				return string(line[len(name)+1:])
			}
		}
		return ""
	}
	// The slow handler holds 1 and 4 wait: the other 45 were dropped.
	testenv.Eventually(t, 5*time.Second, "drops counted", func() bool {
		return metric(`shoal_worker_events_dropped_total{prefix="load"}`) == fmt.Sprint(n-1-4)
	})
	if got := metric(`shoal_worker_event_errors_total{prefix="load"}`); got != "1" {
		t.Errorf("handler errors %s, want 1 (the panic)", got)
	}
	if got := metric(`shoal_worker_events_published_total`); got != fmt.Sprint(n) {
		t.Errorf("published %s, want %d", got, n)
	}
	close(release)
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("drain did not finish")
	}
	if got := slow.Load(); got > 5 {
		t.Errorf("slow handler ran %d times, at most 1 + buffer 4", got)
	}
	if err := srv.Subscribe("late", func(context.Context, *workers.Event) error { return nil }); !errors.Is(err, workers.ErrNoSubscriber) {
		t.Errorf("Subscribe after drain: %v", err)
	}
}
