package broker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/broker"
	"github.com/shoal-dev/shoal/internal/testenv"
	"github.com/shoal-dev/shoal/internal/zsock"
	"github.com/shoal-dev/shoal/wire"
	"github.com/shoal-dev/shoal/workers"
)

const hb = 100 * time.Millisecond

type testBroker struct {
	*broker.Broker
	clients, workers, admin string
	stop                    func()
}

func startBroker(t *testing.T, mod func(*broker.Options)) *testBroker {
	t.Helper()
	o := broker.Options{Clients: "tcp://127.0.0.1:0", Workers: "tcp://127.0.0.1:0", Admin: "127.0.0.1:0",
		Heartbeat: hb, Liveness: 3, QueueLimit: 64, DefaultTimeout: 5 * time.Second}
	if mod != nil {
		mod(&o)
	}
	b, err := broker.New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.Run(ctx); close(done) }()
	tb := &testBroker{Broker: b, clients: "tcp://" + b.ClientsAddr().String(), workers: "tcp://" + b.WorkersAddr().String(),
		admin: b.AdminAddr().String()}
	var once sync.Once
	tb.stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(tb.stop)
	return tb
}

func (tb *testBroker) stats(t *testing.T) broker.Stats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := tb.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func (tb *testBroker) service(t *testing.T, name string) broker.ServiceStats {
	for _, s := range tb.stats(t).Services {
		if s.Service == name {
			return s
		}
	}
	return broker.ServiceStats{}
}

func newClient(t *testing.T, eps ...string) *broker.Client {
	t.Helper()
	c, err := broker.NewClient(broker.ClientOptions{Endpoints: eps, Heartbeat: hb, Liveness: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	testenv.Eventually(t, 5*time.Second, "client link up", c.Ready)
	return c
}

// startWorker runs an SDK worker serving service with handler h.
func startWorker(t *testing.T, eps []string, service string, conc int, h workers.HandlerFunc) *workers.Server {
	t.Helper()
	mux := workers.NewServeMux()
	mux.Handle(service, h)
	s, err := workers.NewServer(workers.Options{Brokers: eps, Concurrency: conc, Heartbeat: hb, Liveness: 3,
		DrainTimeout: 2 * time.Second}, mux)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

func waitWorkers(t *testing.T, tb *testBroker, service string, n int) {
	t.Helper()
	testenv.Eventually(t, 5*time.Second, fmt.Sprintf("%d workers for %s", n, service), func() bool {
		return tb.service(t, service).Workers == n
	})
}

func echo(ctx context.Context, r *workers.Request) (workers.Response, error) {
	return workers.Response{Body: r.Body}, nil
}

func do(t *testing.T, c *broker.Client, svc string, body string, timeout time.Duration, maxAttempts int) *wire.Reply {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	rep, err := c.Do(ctx, &wire.Request{Service: svc, Body: []byte(body), MaxAttempts: maxAttempts})
	if err != nil {
		// Errorf, not Fatalf: do runs on test goroutines too.
		t.Errorf("Do(%s): %v", svc, err)
		return &wire.Reply{Code: "client_error", Error: err.Error()}
	}
	return rep
}

func TestRoundTrip(t *testing.T) {
	tb := startBroker(t, func(o *broker.Options) { o.QueueLimit = 1024 })
	startWorker(t, []string{tb.workers}, "echo", 8, echo)
	waitWorkers(t, tb, "echo", 1)
	c := newClient(t, tb.clients)
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := fmt.Sprintf("msg-%d", i)
			rep := do(t, c, "echo", body, 5*time.Second, 1)
			if rep.Code != "" || string(rep.Body) != body || rep.Status != 200 {
				t.Errorf("reply %+v, want body %q", rep, body)
			}
			if len(rep.Trace) != 1 || rep.Trace[0].Service != "echo" {
				t.Errorf("trace %+v, want one echo hop", rep.Trace)
			}
		}()
	}
	wg.Wait()
	if s := tb.service(t, "echo"); s.Replied != 200 || s.Dispatched != 200 {
		t.Errorf("stats %+v, want 200 dispatched and replied", s)
	}
}

func TestUnknownServiceAnsweredAtOnce(t *testing.T) {
	tb := startBroker(t, nil)
	c := newClient(t, tb.clients)
	start := time.Now()
	rep := do(t, c, "nope", "", 5*time.Second, 1)
	if rep.Code != wire.CodeNoService {
		t.Fatalf("code %q, want no_service", rep.Code)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("no_service took %v", d)
	}
}

// block returns a handler that holds every request until release is closed.
func block(release <-chan struct{}, calls *atomic.Int64) workers.HandlerFunc {
	return func(ctx context.Context, r *workers.Request) (workers.Response, error) {
		calls.Add(1)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return workers.Response{Body: r.Body}, nil
	}
}

func TestQueueLimitAnswersOverloaded(t *testing.T) {
	tb := startBroker(t, func(o *broker.Options) { o.QueueLimit = 2 })
	release := make(chan struct{})
	var calls atomic.Int64
	startWorker(t, []string{tb.workers}, "slow", 1, block(release, &calls))
	waitWorkers(t, tb, "slow", 1)
	c := newClient(t, tb.clients)

	// One in flight, two queued: the fourth is refused at once.
	results := make(chan *wire.Reply, 3)
	for range 3 {
		go func() { results <- do(t, c, "slow", "x", 10*time.Second, 1) }()
	}
	testenv.Eventually(t, 5*time.Second, "1 in flight and 2 queued", func() bool {
		s := tb.service(t, "slow")
		return s.InFlight == 1 && s.Queued == 2
	})
	start := time.Now()
	rep := do(t, c, "slow", "x", 10*time.Second, 1)
	if rep.Code != wire.CodeOverloaded {
		t.Fatalf("code %q, want overloaded", rep.Code)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("overloaded took %v", d)
	}
	close(release)
	for range 3 {
		if r := <-results; r.Code != "" {
			t.Errorf("queued request got %q", r.Code)
		}
	}
}

func TestDeadlinePassesWhileQueued(t *testing.T) {
	tb := startBroker(t, nil)
	release := make(chan struct{})
	defer close(release)
	var calls atomic.Int64
	startWorker(t, []string{tb.workers}, "slow", 1, block(release, &calls))
	waitWorkers(t, tb, "slow", 1)
	c := newClient(t, tb.clients)
	go do(t, c, "slow", "occupy", 10*time.Second, 1) // takes the only credit
	testenv.Eventually(t, 5*time.Second, "first request in flight", func() bool { return calls.Load() == 1 })

	// The second waits in the queue and its deadline passes there: the
	// broker answers "deadline" and never dispatches it.
	req := &wire.Request{Service: "slow", Deadline: time.Now().Add(300 * time.Millisecond).UnixMilli()}
	start := time.Now()
	rep, err := c.Do(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Code != wire.CodeDeadline {
		t.Fatalf("code %q, want deadline", rep.Code)
	}
	if d := time.Since(start); d > 300*time.Millisecond+500*time.Millisecond {
		t.Errorf("deadline reply came %v after send", d)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1: an expired request was dispatched", n)
	}
	if s := tb.service(t, "slow"); s.Expired != 1 {
		t.Errorf("expired = %d, want 1", s.Expired)
	}
	// Already past its deadline on arrival: answered at once.
	rep, _ = c.Do(context.Background(), &wire.Request{Service: "slow", Deadline: time.Now().Add(-time.Second).UnixMilli()})
	if rep.Code != wire.CodeDeadline {
		t.Errorf("expired-on-arrival code %q, want deadline", rep.Code)
	}
}

// rawWorker is a hand-driven worker speaking the protocol directly, to make
// a worker misbehave in ways the SDK never would.
type rawWorker struct {
	t *testing.T
	s zsock.Socket
}

func dialRaw(t *testing.T, ep string, services []string, credit int) *rawWorker {
	t.Helper()
	s, err := zsock.Dial(zsock.Dealer, ep, zsock.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	rd := wire.Ready{Services: services, Credit: credit, Heartbeat: int(hb / time.Millisecond), Name: "raw", Process: "raw/1"}
	if err := s.Send(wire.Frames(wire.CmdReady, rd.AppendMsgpack(nil))); err != nil {
		t.Fatal(err)
	}
	return &rawWorker{t: t, s: s}
}

// next returns the next request envelope, skipping heartbeats.
func (w *rawWorker) next() (wire.Request, []byte) {
	w.t.Helper()
	for {
		f, err := w.s.Recv()
		if err != nil {
			w.t.Fatalf("raw worker recv: %v", err)
		}
		m, err := wire.Parse(f)
		if err != nil || m.Cmd != wire.CmdRequest {
			continue
		}
		var r wire.Request
		if err := r.UnmarshalMsgpack(m.Body[0]); err != nil {
			w.t.Fatal(err)
		}
		return r, m.Body[0]
	}
}

func (w *rawWorker) reply(id uint64, body string) {
	rep := wire.Reply{ID: id, Status: 200, Body: []byte(body)}
	if err := w.s.Send(wire.Frames(wire.CmdReply, rep.AppendMsgpack(nil))); err != nil {
		w.t.Fatal(err)
	}
}

func TestDeadWorkerRequestsRedispatched(t *testing.T) {
	for _, how := range []string{"connection closed", "heartbeats missed"} {
		t.Run(how, func(t *testing.T) {
			tb := startBroker(t, nil)
			c := newClient(t, tb.clients)
			raw := dialRaw(t, tb.workers, []string{"svc"}, 4)
			waitWorkers(t, tb, "svc", 1)

			idem := make(chan *wire.Reply, 1)
			once := make(chan *wire.Reply, 1)
			go func() { idem <- do(t, c, "svc", "idempotent", 10*time.Second, 3) }()
			raw.next()
			go func() { once <- do(t, c, "svc", "once", 10*time.Second, 1) }()
			raw.next()

			// A healthy worker joins, then the raw one dies holding both.
			var attempts sync.Map
			startWorker(t, []string{tb.workers}, "svc", 4, func(ctx context.Context, r *workers.Request) (workers.Response, error) {
				attempts.Store(string(r.Body), r.Attempt)
				return workers.Response{Body: r.Body}, nil
			})
			waitWorkers(t, tb, "svc", 2)
			died := time.Now()
			if how == "connection closed" {
				raw.s.Close()
			} // else: it stays connected but says nothing from now on

			rep := <-idem
			if rep.Code != "" || string(rep.Body) != "idempotent" {
				t.Fatalf("idempotent request: %+v, want re-dispatched reply", rep)
			}
			if a, _ := attempts.Load("idempotent"); a != 2 {
				t.Errorf("re-dispatched attempt = %v, want 2", a)
			}
			rep = <-once
			if rep.Code != wire.CodeWorkerDied {
				t.Fatalf("non-idempotent request: code %q, want worker_died", rep.Code)
			}
			limit := 3*hb + 2*hb // liveness intervals plus a tick of slack
			if how == "connection closed" {
				limit = hb
			}
			if d := time.Since(died); d > limit {
				t.Errorf("re-dispatch took %v after the worker died, want <= %v", d, limit)
			}
			if s := tb.service(t, "svc"); s.Requeued != 1 {
				t.Errorf("requeued = %d, want 1", s.Requeued)
			}
		})
	}
}

func TestLateAndDuplicateRepliesIgnored(t *testing.T) {
	tb := startBroker(t, nil)
	c := newClient(t, tb.clients)
	raw := dialRaw(t, tb.workers, []string{"svc"}, 4)
	waitWorkers(t, tb, "svc", 1)
	got := make(chan *wire.Reply, 1)
	go func() { got <- do(t, c, "svc", "x", 5*time.Second, 1) }()
	r, _ := raw.next()
	raw.reply(r.ID, "first")
	raw.reply(r.ID, "second")   // duplicate
	raw.reply(r.ID+999, "none") // never sent
	if rep := <-got; string(rep.Body) != "first" {
		t.Fatalf("client got %q, want the first reply", rep.Body)
	}
	testenv.Eventually(t, 2*time.Second, "2 late replies counted", func() bool { return tb.stats(t).LateReplies == 2 })
	if n := c.LateReplies(); n != 0 {
		t.Errorf("client saw %d late replies; the broker should have dropped them", n)
	}
}

func TestMalformedMessagesCountedNotFatal(t *testing.T) {
	tb := startBroker(t, nil)
	startWorker(t, []string{tb.workers}, "echo", 4, echo)
	waitWorkers(t, tb, "echo", 1)
	c := newClient(t, tb.clients)

	junk := [][][]byte{
		{[]byte("nonsense")},
		{[]byte(wire.Version)},
		{[]byte(wire.Version), {0x7f}},
		{[]byte(wire.Version), {byte(wire.CmdRequest)}, {0xc1, 0xff}},
		{[]byte(wire.Version), {byte(wire.CmdReady)}, {0x80}},
		{[]byte(wire.Version), {byte(wire.CmdReply)}, []byte("not msgpack")},
		{[]byte(wire.Version), {byte(wire.CmdRequest)}, (&wire.Request{ID: 1, Service: "echo"}).AppendMsgpack(nil)[:5]},
	}
	for _, ep := range []string{tb.clients, tb.workers} {
		s, err := zsock.Dial(zsock.Dealer, ep, zsock.Options{})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range junk {
			if err := s.Send(m); err != nil {
				t.Fatal(err)
			}
		}
		s.Close()
	}
	testenv.Eventually(t, 2*time.Second, "malformed messages counted", func() bool {
		var n uint64
		for _, v := range tb.stats(t).Malformed {
			n += v
		}
		return n >= 8
	})
	if rep := do(t, c, "echo", "still here", 5*time.Second, 1); string(rep.Body) != "still here" {
		t.Fatalf("broker stopped serving: %+v", rep)
	}
}

// zmq4's DEALER copies a message to every peer it is connected to; Shoal
// uses one link per broker, so with two brokers each request runs once.
func TestTwoBrokersEachRequestOnce(t *testing.T) {
	b1, b2 := startBroker(t, nil), startBroker(t, nil)
	var calls atomic.Int64
	startWorker(t, []string{b1.workers, b2.workers}, "count", 8, func(ctx context.Context, r *workers.Request) (workers.Response, error) {
		calls.Add(1)
		return workers.Response{Body: r.Body}, nil
	})
	waitWorkers(t, b1, "count", 1)
	waitWorkers(t, b2, "count", 1)
	c := newClient(t, b1.clients, b2.clients)
	testenv.Eventually(t, 5*time.Second, "both client links", func() bool { return c.Ready() })
	const n = 100
	for i := range n {
		if rep := do(t, c, "count", fmt.Sprint(i), 5*time.Second, 1); rep.Code != "" {
			t.Fatalf("request %d: %+v", i, rep)
		}
	}
	if got := calls.Load(); got != n {
		t.Fatalf("handler ran %d times for %d requests", got, n)
	}
	s1, s2 := b1.service(t, "count"), b2.service(t, "count")
	if s1.Dispatched+s2.Dispatched != n || s1.Dispatched == 0 || s2.Dispatched == 0 {
		t.Errorf("dispatched %d + %d, want %d spread over both brokers", s1.Dispatched, s2.Dispatched, n)
	}
}

// A broker with no worker for the service (it just started, or its workers
// have not reconnected yet) does not turn a request away while another
// broker can serve it: the client asks the next one. Nothing ran at the
// first, so this holds for POSTs too (MaxAttempts 1).
func TestClientAsksAnotherBrokerWhenOneHasNoWorker(t *testing.T) {
	b1, b2 := startBroker(t, nil), startBroker(t, nil)
	var calls atomic.Int64
	startWorker(t, []string{b1.workers}, "only-on-b1", 8, func(ctx context.Context, r *workers.Request) (workers.Response, error) {
		calls.Add(1)
		return workers.Response{Body: r.Body}, nil
	})
	waitWorkers(t, b1, "only-on-b1", 1)
	c := newClient(t, b1.clients, b2.clients)
	testenv.Eventually(t, 5*time.Second, "both client links", func() bool { return c.Ready() })
	const n = 50
	for i := range n {
		if rep := do(t, c, "only-on-b1", fmt.Sprint(i), 5*time.Second, 1); rep.Code != "" {
			t.Fatalf("request %d: %+v", i, rep)
		}
	}
	if got := calls.Load(); got != n {
		t.Fatalf("handler ran %d times for %d requests", got, n)
	}
	// A service no broker has answers no_service, after asking each once.
	if rep := do(t, c, "nowhere", "x", 5*time.Second, 1); rep.Code != wire.CodeNoService {
		t.Errorf("unknown service: %+v", rep)
	}
	st1, st2 := b1.stats(t), b2.stats(t)
	if st2.NoService < n/4 || st1.NoService+st2.NoService > n+2 {
		t.Errorf("no_service answers: b1 %d, b2 %d; want b2 asked first about half the time, and every service asked once per broker at most", st1.NoService, st2.NoService)
	}
}

func TestAdminEndpoint(t *testing.T) {
	tb := startBroker(t, nil)
	startWorker(t, []string{tb.workers}, "echo", 4, echo)
	waitWorkers(t, tb, "echo", 1)
	c := newClient(t, tb.clients)
	do(t, c, "echo", "x", 5*time.Second, 1)

	resp, err := http.Get("http://" + tb.admin + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	var st broker.Stats
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil || len(st.Services) != 1 || st.Services[0].Replied != 1 || len(st.Workers) != 1 {
		t.Fatalf("stats %+v, %v", st, err)
	}
	resp, err = http.Get("http://" + tb.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<16)
	n, _ := resp.Body.Read(buf)
	resp.Body.Close()
	if want := `shoal_broker_replied_total{broker="b0",service="echo"} 1`; !strings.Contains(string(buf[:n]), want) {
		t.Errorf("metrics lack %q:\n%s", want, buf[:n])
	}
}

// The supervisor's notice makes re-dispatch immediate, without waiting for
// missed heartbeats.
func TestProcessDiedNotice(t *testing.T) {
	tb := startBroker(t, func(o *broker.Options) { o.Heartbeat = time.Second })
	c := newClient(t, tb.clients)
	raw := dialRaw(t, tb.workers, []string{"svc"}, 1)
	waitWorkers(t, tb, "svc", 1)
	got := make(chan *wire.Reply, 1)
	go func() { got <- do(t, c, "svc", "x", 10*time.Second, 3) }()
	raw.next()
	startWorker(t, []string{tb.workers}, "svc", 1, echo)
	waitWorkers(t, tb, "svc", 2)
	start := time.Now()
	resp, err := http.Post("http://"+tb.admin+"/died?process=raw/1", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if rep := <-got; rep.Code != "" {
		t.Fatalf("reply %+v", rep)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("re-dispatch after notice took %v", d)
	}
}

func TestBrokerRestartReconnects(t *testing.T) {
	tb := startBroker(t, nil)
	clients, wks := tb.clients, tb.workers
	startWorker(t, []string{wks}, "echo", 4, echo)
	waitWorkers(t, tb, "echo", 1)
	c := newClient(t, clients)
	do(t, c, "echo", "before", 5*time.Second, 1)

	tb.stop()
	testenv.Eventually(t, 5*time.Second, "client notices broker loss", func() bool { return !c.Ready() })
	// Same ports again, as a restarted broker process would.
	tb2 := startBroker(t, func(o *broker.Options) {
		o.Clients, o.Workers = clients, wks
	})
	back := time.Now()
	testenv.Eventually(t, 5*time.Second, "worker re-registered", func() bool { return tb2.service(t, "echo").Workers == 1 })
	testenv.Eventually(t, 5*time.Second, "client reconnected", c.Ready)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		rep, err := c.Do(ctx, &wire.Request{Service: "echo", Body: []byte("after")})
		cancel()
		if err == nil && rep.Code == "" {
			break
		}
		if time.Since(back) > 2*time.Second {
			t.Fatalf("service not answering 2s after the broker came back: %v %+v", err, rep)
		}
		if err != nil && !errors.Is(err, broker.ErrUnavailable) && !errors.Is(err, context.DeadlineExceeded) {
			t.Fatal(err)
		}
	}
}

// Workers with equal free credit take turns: with fast replies every worker
// is fully free at each dispatch, and a fixed order would starve all but
// the first.
func TestIdleWorkersTakeTurns(t *testing.T) {
	tb := startBroker(t, nil)
	var a, b atomic.Int64
	count := func(n *atomic.Int64) workers.HandlerFunc {
		return func(ctx context.Context, r *workers.Request) (workers.Response, error) {
			n.Add(1)
			return workers.Response{}, nil
		}
	}
	startWorker(t, []string{tb.workers}, "svc", 8, count(&a))
	startWorker(t, []string{tb.workers}, "svc", 8, count(&b))
	waitWorkers(t, tb, "svc", 2)
	c := newClient(t, tb.clients)
	for range 100 {
		do(t, c, "svc", "", 5*time.Second, 1)
	}
	if a.Load() < 40 || b.Load() < 40 {
		t.Errorf("sequential requests split %d / %d, want about even", a.Load(), b.Load())
	}
}
