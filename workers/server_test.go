package workers_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/broker"
	"github.com/shoal-dev/shoal/internal/testenv"
	"github.com/shoal-dev/shoal/wire"
	"github.com/shoal-dev/shoal/workers"
)

const hb = 100 * time.Millisecond

type stack struct {
	b       *broker.Broker
	clients string
	workers string
	client  *broker.Client
}

func newStack(t *testing.T) *stack {
	t.Helper()
	b, err := broker.New(broker.Options{Clients: "tcp://127.0.0.1:0", Workers: "tcp://127.0.0.1:0", Heartbeat: hb})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	s := &stack{b: b, clients: "tcp://" + b.ClientsAddr().String(), workers: "tcp://" + b.WorkersAddr().String()}
	s.client, err = broker.NewClient(broker.ClientOptions{Endpoints: []string{s.clients}, Heartbeat: hb})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.client.Close)
	testenv.Eventually(t, 5*time.Second, "client link", s.client.Ready)
	return s
}

// serve runs a worker for mux and returns a function that stops it
// (draining) and waits for Run to return.
func (s *stack) serve(t *testing.T, mux *workers.ServeMux, conc int, calls bool) (stop func()) {
	t.Helper()
	o := workers.Options{Brokers: []string{s.workers}, Concurrency: conc, Heartbeat: hb, DrainTimeout: 5 * time.Second}
	if calls {
		o.CallBrokers = []string{s.clients}
	}
	srv, err := workers.NewServer(o, mux)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Run(ctx); close(done) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	want := mux.Services()
	testenv.Eventually(t, 5*time.Second, "worker registered", func() bool {
		st, _ := s.b.Stats(context.Background())
		n := 0
		for _, svc := range st.Services {
			for _, w := range want {
				if svc.Service == w && svc.Workers > 0 {
					n++
				}
			}
		}
		return n == len(want)
	})
	return stop
}

func (s *stack) do(t *testing.T, svc string, body string, timeout time.Duration) *wire.Reply {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	rep, err := s.client.Do(ctx, &wire.Request{Service: svc, Body: []byte(body), RID: "rid-1"})
	if err != nil {
		t.Errorf("Do(%s): %v", svc, err)
		return &wire.Reply{Code: "client_error"}
	}
	return rep
}

func TestHandlerOutcomes(t *testing.T) {
	s := newStack(t)
	mux := workers.NewServeMux()
	mux.HandleFunc("ok", func(ctx context.Context, r *workers.Request) (workers.Response, error) {
		return workers.Response{Status: 201, Headers: []wire.KV{{Key: "X-A", Value: "b"}}, Body: r.Body}, nil
	})
	mux.HandleFunc("notfound", func(ctx context.Context, r *workers.Request) (workers.Response, error) {
		return workers.Response{}, workers.Errorf(404, "no such thing")
	})
	mux.HandleFunc("fails", func(ctx context.Context, r *workers.Request) (workers.Response, error) {
		return workers.Response{}, errors.New("database unreachable")
	})
	mux.HandleFunc("panics", func(ctx context.Context, r *workers.Request) (workers.Response, error) {
		var m map[string]int
		m["x"] = 1 // nil map write
		return workers.Response{}, nil
	})
	s.serve(t, mux, 4, false)

	for _, c := range []struct {
		svc    string
		status int
		code   wire.Code
	}{
		{"ok", 201, ""},
		{"notfound", 404, wire.CodeHandler},
		{"fails", 500, wire.CodeHandler},
		{"panics", 500, wire.CodePanic},
		{"ok", 201, ""}, // still serving after the panic
	} {
		rep := s.do(t, c.svc, "body", 5*time.Second)
		if rep.Status != c.status || rep.Code != c.code {
			t.Errorf("%s: status %d code %q, want %d %q (%s)", c.svc, rep.Status, rep.Code, c.status, c.code, rep.Error)
		}
	}
}

func TestConcurrencyIsBounded(t *testing.T) {
	s := newStack(t)
	var now, peak atomic.Int64
	mux := workers.NewServeMux()
	mux.HandleFunc("slow", func(ctx context.Context, r *workers.Request) (workers.Response, error) {
		n := now.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
		now.Add(-1)
		return workers.Response{}, nil
	})
	s.serve(t, mux, 3, false)
	var wg sync.WaitGroup
	for range 15 {
		wg.Add(1)
		go func() { defer wg.Done(); s.do(t, "slow", "", 5*time.Second) }()
	}
	wg.Wait()
	if p := peak.Load(); p != 3 {
		t.Errorf("peak concurrency %d, want exactly 3", p)
	}
}

func TestHandlerContextCarriesDeadline(t *testing.T) {
	s := newStack(t)
	got := make(chan time.Time, 1)
	mux := workers.NewServeMux()
	mux.HandleFunc("dl", func(ctx context.Context, r *workers.Request) (workers.Response, error) {
		d, _ := ctx.Deadline()
		got <- d
		return workers.Response{}, nil
	})
	s.serve(t, mux, 1, false)
	dl := time.Now().Add(3 * time.Second).Truncate(time.Millisecond)
	rep, err := s.client.Do(context.Background(), &wire.Request{Service: "dl", Deadline: dl.UnixMilli()})
	if err != nil || rep.Code != "" {
		t.Fatal(err, rep)
	}
	if d := <-got; !d.Equal(dl) {
		t.Errorf("handler deadline %v, want %v", d, dl)
	}
}

// Drain: in-flight requests finish after the server is told to stop, and
// the broker sends the draining worker nothing new.
func TestDrainFinishesInFlight(t *testing.T) {
	s := newStack(t)
	started := make(chan struct{}, 8)
	mux := workers.NewServeMux()
	mux.HandleFunc("slow", func(ctx context.Context, r *workers.Request) (workers.Response, error) {
		started <- struct{}{}
		time.Sleep(300 * time.Millisecond)
		return workers.Response{Body: r.Body}, nil
	})
	stop := s.serve(t, mux, 4, false)
	results := make(chan *wire.Reply, 2)
	for range 2 {
		go func() { results <- s.do(t, "slow", "x", 5*time.Second) }()
	}
	<-started
	<-started
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	for range 2 {
		if rep := <-results; rep.Code != "" || string(rep.Body) != "x" {
			t.Errorf("in-flight request during drain: %+v", rep)
		}
	}
	<-stopped
	// Gone from the broker: new requests are refused, not lost.
	testenv.Eventually(t, 2*time.Second, "worker gone from broker", func() bool {
		return s.do(t, "slow", "y", time.Second).Code == wire.CodeNoWorker
	})
}

// A handler's call to another service inherits its deadline, request id
// and trace.
func TestCallCarriesDeadlineAndTrace(t *testing.T) {
	s := newStack(t)
	type seen struct {
		deadline time.Time
		rid      string
		trace    []wire.Hop
	}
	inner := make(chan seen, 1)
	mux := workers.NewServeMux()
	mux.HandleFunc("inner", func(ctx context.Context, r *workers.Request) (workers.Response, error) {
		d, _ := ctx.Deadline()
		inner <- seen{d, r.RID, r.Trace}
		return workers.Response{Body: []byte("inner:" + string(r.Body))}, nil
	})
	mux.HandleFunc("outer", func(ctx context.Context, r *workers.Request) (workers.Response, error) {
		rep, err := workers.Call(ctx, "inner", "m", r.Body)
		if err != nil {
			return workers.Response{}, err
		}
		return workers.Response{Body: rep.Body}, nil
	})
	mux.HandleFunc("callsnothing", func(ctx context.Context, r *workers.Request) (workers.Response, error) {
		_, err := workers.Call(ctx, "nosuch", "m", nil)
		var ce *workers.CallError
		if !errors.As(err, &ce) || ce.Reply.Code != wire.CodeNoService {
			return workers.Response{}, workers.Errorf(500, "want no_service CallError, got %v", err)
		}
		return workers.Response{}, nil
	})
	s.serve(t, mux, 4, true)

	dl := time.Now().Add(2 * time.Second).Truncate(time.Millisecond)
	rep, err := s.client.Do(context.Background(), &wire.Request{Service: "outer", RID: "trace-me", Deadline: dl.UnixMilli(), Body: []byte("hi"),
		Trace: []wire.Hop{{Service: "frontend", Process: "f/1"}}})
	if err != nil || rep.Code != "" || string(rep.Body) != "inner:hi" {
		t.Fatalf("outer: %v %+v", err, rep)
	}
	in := <-inner
	if !in.deadline.Equal(dl) {
		t.Errorf("inner deadline %v, want the outer one %v", in.deadline, dl)
	}
	if in.rid != "trace-me" {
		t.Errorf("inner rid %q", in.rid)
	}
	if len(in.trace) != 2 || in.trace[0].Service != "frontend" || in.trace[1].Service != "outer" {
		t.Errorf("inner trace %+v, want frontend then outer", in.trace)
	}
	if len(rep.Trace) != 2 || rep.Trace[1].Service != "outer" {
		t.Errorf("reply trace %+v", rep.Trace)
	}
	if rep := s.do(t, "callsnothing", "", 5*time.Second); rep.Code != "" {
		t.Errorf("callsnothing: %+v", rep)
	}
	if _, err := workers.Call(context.Background(), "inner", "m", nil); !errors.Is(err, workers.ErrNoCaller) {
		t.Errorf("Call outside a handler: %v", err)
	}
}
