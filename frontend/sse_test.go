package frontend_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/broker"
	"github.com/shoal-dev/shoal/frontend"
	"github.com/shoal-dev/shoal/wire"
	"github.com/vmihailenco/msgpack/v5"
)

const evHB = 100 * time.Millisecond

// eventStack is a real broker with its forwarder, a publisher, and a
// frontend whose /events reads the broker through a real Subscriber.
type eventStack struct {
	ts  *testServer
	b   *broker.Broker
	pub *broker.Publisher
	sub *broker.Subscriber
}

func startEventStack(t *testing.T, mod func(*frontend.Options)) *eventStack {
	t.Helper()
	b, err := broker.New(broker.Options{Clients: "tcp://127.0.0.1:0", Workers: "tcp://127.0.0.1:0", Heartbeat: evHB,
		EventsIn: "tcp://127.0.0.1:0", EventsOut: "tcp://127.0.0.1:0", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	es := &eventStack{b: b}
	es.pub, err = broker.NewPublisher(broker.PublisherOptions{Endpoints: []string{"tcp://" + b.EventsInAddr().String()}, Heartbeat: evHB})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(es.pub.Close)
	es.sub, err = broker.NewSubscriber(broker.SubscriberOptions{Endpoints: []string{"tcp://" + b.EventsOutAddr().String()}, Heartbeat: evHB})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(es.sub.Close) // after the frontend's cleanup (LIFO)
	o := frontend.Options{Events: frontend.EventOptions{Source: es.sub}, WriteTimeout: 3 * time.Second}
	if mod != nil {
		mod(&o)
	}
	es.ts = start(t, o, okDoer(), true)
	checkFor(t, 5*time.Second, func() error {
		if !es.pub.Ready() || !es.sub.Ready() {
			return errors.New("event links not up")
		}
		return nil
	})
	return es
}

// prefixes returns the subscriptions the broker holds.
func (es *eventStack) prefixes(t *testing.T) []string {
	t.Helper()
	st, err := es.b.Stats(context.Background())
	if err != nil || st.Events == nil {
		t.Fatalf("broker stats: %v", err)
	}
	return st.Events.Prefixes
}

// waitPrefixes polls until the broker holds exactly these prefixes, which
// means the streams asking for them are live end to end.
func (es *eventStack) waitPrefixes(t *testing.T, want ...string) {
	t.Helper()
	slices.Sort(want)
	checkFor(t, 5*time.Second, func() error {
		if got := es.prefixes(t); !slices.Equal(got, want) {
			return fmt.Errorf("broker subscriptions %q, want %q", got, want)
		}
		return nil
	})
}

func (es *eventStack) publish(t testing.TB, topic string, v any) string {
	t.Helper()
	body, err := msgpack.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	ev := wire.Event{Topic: topic, Body: body}
	if err := es.pub.Publish(&ev); err != nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
	return ev.ID
}

// sseEvent is one event as a client parses it.
type sseEvent struct {
	id, event, data string
	comments        []string
	at              time.Time
}

// streamClient reads an event stream over a raw TCP connection, so that a
// test controls when (and whether) it reads.
type streamClient struct {
	conn net.Conn
	resp *http.Response
	r    *bufio.Reader
}

// openStream sends GET path and reads the response head. rcvbuf > 0 sets
// the socket's receive buffer (a slow client fills up sooner).
func openStream(t testing.TB, addr, path string, rcvbuf int) (*streamClient, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	if rcvbuf > 0 {
		// Before connect, or the window is already advertised.
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			return rc.Control(func(fd uintptr) {
				syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf)
			})
		}
	}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	req, _ := http.NewRequest("GET", "http://"+addr+path, nil)
	if err := req.Write(conn); err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReaderSize(conn, 512)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		conn.Close()
		return nil, err
	}
	c := &streamClient{conn: conn, resp: resp, r: bufio.NewReader(resp.Body)}
	t.Cleanup(func() { conn.Close() })
	return c, nil
}

func mustOpen(t *testing.T, addr, path string) *streamClient {
	t.Helper()
	c, err := openStream(t, addr, path, 0)
	if err != nil {
		t.Fatal(err)
	}
	if c.resp.StatusCode != 200 {
		b, _ := io.ReadAll(c.resp.Body)
		t.Fatalf("GET %s: %d %s", path, c.resp.StatusCode, b)
	}
	return c
}

// next reads the next event or comment block, within timeout.
func (c *streamClient) next(timeout time.Duration) (sseEvent, error) {
	c.conn.SetReadDeadline(time.Now().Add(timeout))
	var ev sseEvent
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return ev, err
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			if ev.id != "" || ev.event != "" || ev.data != "" || len(ev.comments) > 0 {
				ev.at = time.Now()
				return ev, nil
			}
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "":
			ev.comments = append(ev.comments, value)
		case "id":
			ev.id = value
		case "event":
			ev.event = value
		case "data":
			ev.data = value
		case "retry":
		default:
			return ev, fmt.Errorf("unexpected line %q", line)
		}
	}
}

// nextEvent skips comments.
func (c *streamClient) nextEvent(timeout time.Duration) (sseEvent, error) {
	deadline := time.Now().Add(timeout)
	for {
		ev, err := c.next(time.Until(deadline))
		if err != nil || ev.event != "" {
			return ev, err
		}
	}
}

func metricValue(t *testing.T, ts *testServer, name string) float64 {
	t.Helper()
	var buf bytes.Buffer
	ts.WriteMetrics(&buf)
	for _, line := range strings.Split(buf.String(), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// Item 3: each event carries the publisher's id, the topic as the event
// name, and the JSON rendering of its msgpack body.
func TestEventStreamFormat(t *testing.T) {
	es := startEventStack(t, nil)
	c := mustOpen(t, es.ts.addr, "/events?topic=employee&topic=task.7&topic=employee.created")
	if ct := c.resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("Content-Type %q", ct)
	}
	if c.resp.Header.Get("Cache-Control") != "no-cache" || c.resp.Header.Get(frontend.HeaderRequestID) == "" || !c.resp.Close {
		t.Errorf("headers %v, close %v", c.resp.Header, c.resp.Close)
	}
	first, err := c.next(5 * time.Second)
	if err != nil || len(first.comments) != 1 {
		t.Fatalf("opening comment: %+v %v", first, err)
	}
	// employee.created is covered by employee: one subscription each.
	es.waitPrefixes(t, "employee", "task.7")

	body := map[string]any{"id": 7, "name": "Ada \"Lovelace\"\n", "tags": []string{"x"}, "bin": []byte{1, 2, 3},
		"score": 1.5, "ok": true, "none": nil, "neg": -3}
	id := es.publish(t, "employee.created", body)
	es.publish(t, "task.70", "not mine")
	es.publish(t, "task.7.done", map[int]string{1: "one"})
	ev, err := c.nextEvent(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if ev.id != id || ev.event != "employee.created" {
		t.Errorf("event %+v, want id %s", ev, id)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(ev.data), &got); err != nil {
		t.Fatalf("data %q: %v", ev.data, err)
	}
	want := map[string]any{"id": 7.0, "name": "Ada \"Lovelace\"\n", "tags": []any{"x"}, "bin": "AQID",
		"score": 1.5, "ok": true, "none": nil, "neg": -3.0}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("data %v, want %v", got, want)
	}
	ev, err = c.nextEvent(5 * time.Second)
	if err != nil || ev.event != "task.7.done" || ev.data != `{"1":"one"}` {
		t.Errorf("second event %+v %v (task.70 must not match task.7)", ev, err)
	}
	if n := metricValue(t, es.ts, "shoal_frontend_events_sent_total"); n != 2 {
		t.Errorf("events sent %v, want 2", n)
	}
}

// Item 3: idle streams get comment heartbeats.
func TestEventStreamHeartbeat(t *testing.T) {
	es := startEventStack(t, func(o *frontend.Options) { o.Events.Heartbeat = 50 * time.Millisecond })
	c := mustOpen(t, es.ts.addr, "/events?topic=quiet")
	pings := 0
	for pings < 3 {
		ev, err := c.next(2 * time.Second)
		if err != nil {
			t.Fatalf("after %d pings: %v", pings, err)
		}
		if slices.Contains(ev.comments, "ping") {
			pings++
		}
	}
}

func TestEventStreamRefusals(t *testing.T) {
	es := startEventStack(t, func(o *frontend.Options) { o.Events.MaxClients = 2; o.Events.MaxTopics = 3 })
	for path, want := range map[string]int{
		"/events":            400,
		"/events?topic=":     400,
		"/events?topic=a..b": 400,
		"/events?topic=" + url.QueryEscape("a b"): 400,
		"/events?topic=error":                     400,
		"/events?topic=a&topic=b&topic=c&topic=d": 400,
	} {
		r := es.ts.do(t, "GET", path, nil)
		if r.status != want {
			t.Errorf("GET %s: %d %s, want %d", path, r.status, r.body, want)
		}
		if e := decodeError(t, r); e.Error != "bad_request" || e.Message == "" {
			t.Errorf("GET %s: %+v", path, e)
		}
	}
	if r := es.ts.do(t, "POST", "/events?topic=a", nil); r.status != 405 {
		t.Errorf("POST /events: %d", r.status)
	}
	mustOpen(t, es.ts.addr, "/events?topic=a")
	mustOpen(t, es.ts.addr, "/events?topic=b")
	r := es.ts.do(t, "GET", "/events?topic=c", nil)
	if r.status != 503 || r.header.Get("Retry-After") == "" || decodeError(t, r).Error != "too_many_streams" {
		t.Errorf("third stream: %d %v %s", r.status, r.header, r.body)
	}

	// No source: no /events; a route may not claim the path when there is.
	plain := start(t, frontend.Options{}, okDoer(), false)
	if r := plain.do(t, "GET", "/events?topic=a", nil); r.status != 404 {
		t.Errorf("without a source: %d", r.status)
	}
	_, err := frontend.New(frontend.Options{Events: frontend.EventOptions{Source: es.sub},
		Routes: []frontend.Route{{Method: "GET", Path: "/events", Service: "x"}}}, okDoer())
	var re *frontend.RouteError
	if !errors.As(err, &re) {
		t.Errorf("route on the events path: %v", err)
	}
	if _, err := frontend.New(frontend.Options{Events: frontend.EventOptions{Source: es.sub, Buffer: -1}}, okDoer()); err == nil {
		t.Error("negative buffer accepted")
	}
}

// Streams share one broker subscription per prefix, counted by reference.
func TestEventStreamsShareSubscriptions(t *testing.T) {
	// A client that went away is noticed at the next write: the ping.
	es := startEventStack(t, func(o *frontend.Options) { o.Events.Heartbeat = evHB })
	a := mustOpen(t, es.ts.addr, "/events?topic=news")
	b := mustOpen(t, es.ts.addr, "/events?topic=news&topic=sport")
	es.waitPrefixes(t, "news", "sport")
	es.publish(t, "news.eu", 1)
	for _, c := range []*streamClient{a, b} {
		if ev, err := c.nextEvent(5 * time.Second); err != nil || ev.event != "news.eu" {
			t.Fatalf("news.eu: %+v %v", ev, err)
		}
	}
	b.conn.Close()
	es.waitPrefixes(t, "news") // b's sport went with it; news stays for a
	checkFor(t, 5*time.Second, func() error {
		if n := es.ts.EventClients(); n != 1 {
			return fmt.Errorf("%d clients", n)
		}
		return nil
	})
	a.conn.Close()
	es.waitPrefixes(t)
}

// Item 4: a client that cannot keep up is dropped with a final event
// saying why, and counted; the client that reads gets every event, on
// time, and the publisher never waits.
func TestSlowEventClientDropped(t *testing.T) {
	es := startEventStack(t, func(o *frontend.Options) { o.Events.Buffer = 64; o.WriteTimeout = 10 * time.Second })
	slow, err := openStream(t, es.ts.addr, "/events?topic=load", 4096)
	if err != nil || slow.resp.StatusCode != 200 {
		t.Fatal(err)
	}
	fast := mustOpen(t, es.ts.addr, "/events?topic=load")
	es.waitPrefixes(t, "load")

	const total = 1000
	var got atomic.Int64
	var lmu sync.Mutex
	var lat []time.Duration
	readDone := make(chan error, 1)
	go func() {
		for {
			ev, err := fast.nextEvent(10 * time.Second)
			if err != nil {
				readDone <- err
				return
			}
			var v struct {
				T int64  `json:"t"`
				P string `json:"p"`
			}
			if err := json.Unmarshal([]byte(ev.data), &v); err != nil {
				readDone <- err
				return
			}
			lmu.Lock()
			lat = append(lat, time.Since(time.Unix(0, v.T)))
			lmu.Unlock()
			if got.Add(1) == total {
				readDone <- nil
				return
			}
		}
	}()
	pad := strings.Repeat("x", 2000)
	var pubMax time.Duration
	for i := range total {
		t0 := time.Now()
		es.publish(t, "load.tick", map[string]any{"t": time.Now().UnixNano(), "p": pad})
		pubMax = max(pubMax, time.Since(t0))
		// Bursts of 20 (well within the buffer of 64), then the reader
		// catches up: only the client that does not read falls behind.
		if i%20 == 19 {
			checkFor(t, 10*time.Second, func() error {
				if got.Load() < int64(i+1) {
					return fmt.Errorf("fast client has %d of %d", got.Load(), i+1)
				}
				return nil
			})
		}
	}
	if err := <-readDone; err != nil {
		t.Fatalf("fast client after %d events: %v", got.Load(), err)
	}
	if n := metricValue(t, es.ts, `shoal_frontend_event_clients_dropped_total{reason="slow_client"}`); n != 1 {
		t.Errorf("slow drops metric %v, want 1", n)
	}
	lmu.Lock()
	slices.Sort(lat)
	p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
	lmu.Unlock()
	t.Logf("fast client: %d events, latency p50 %v p99 %v; longest Publish %v", total, p50, p99, pubMax)
	if p99 > 2*time.Second {
		t.Errorf("fast client p99 %v: the slow client held it up", p99)
	}
	if pubMax > 100*time.Millisecond {
		t.Errorf("a Publish took %v", pubMax)
	}

	// The slow client now reads what waited in the kernel, then the
	// verdict, then the end of the stream.
	var last sseEvent
	n := 0
	for {
		ev, err := slow.nextEvent(10 * time.Second)
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("slow client after %d events: %v", n, err)
			}
			break
		}
		n++
		last = ev
	}
	if last.event != "dropped" || last.data != `{"reason":"slow_client","buffer":64}` {
		t.Errorf("slow client's last event %+v after %d", last, n)
	}
	t.Logf("slow client read %d events before it was dropped", n-1)
	checkFor(t, 5*time.Second, func() error {
		if n := es.ts.EventClients(); n != 1 {
			return fmt.Errorf("%d clients registered, want the fast one only", n)
		}
		return nil
	})
}

// Item 3: at shutdown every stream ends cleanly with a final event, and
// Shutdown does not wait for the streams.
func TestEventStreamsEndAtShutdown(t *testing.T) {
	es := startEventStack(t, nil)
	var cs []*streamClient
	for i := range 3 {
		cs = append(cs, mustOpen(t, es.ts.addr, fmt.Sprintf("/events?topic=s%d", i)))
	}
	es.waitPrefixes(t, "s0", "s1", "s2")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := es.ts.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Shutdown took %v", d)
	}
	for i, c := range cs {
		ev, err := c.nextEvent(5 * time.Second)
		if err != nil || ev.event != "shutdown" || ev.data != `{"reason":"server_shutdown"}` {
			t.Errorf("stream %d: final %+v %v", i, ev, err)
		}
		// The chunked body ends properly: EOF, not a broken connection.
		if _, err := c.next(5 * time.Second); !errors.Is(err, io.EOF) {
			t.Errorf("stream %d after the final event: %v, want a clean EOF", i, err)
		}
	}
	es.waitPrefixes(t)
	if r, err := openStream(t, es.ts.addr, "/events?topic=late", 0); err == nil && r.resp.StatusCode == 200 {
		t.Error("a stream opened after shutdown")
	}
}

// Item 6 at small N: 500 concurrent streams on one frontend all get every
// event; delivery latency is reported.
func TestEventStreamsManyClients(t *testing.T) {
	const clients, events = 500, 20
	es := startEventStack(t, nil)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var lat []time.Duration
	var failed atomic.Int64
	streams := make([]*streamClient, clients)
	for i := range streams {
		c, err := openStream(t, es.ts.addr, "/events?topic=tick", 0)
		if err != nil || c.resp.StatusCode != 200 {
			t.Fatalf("stream %d: %v", i, err)
		}
		if _, err := c.next(5 * time.Second); err != nil { // the opening comment
			t.Fatal(err)
		}
		streams[i] = c
	}
	es.waitPrefixes(t, "tick")
	for _, c := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range events {
				ev, err := c.nextEvent(20 * time.Second)
				if err != nil {
					failed.Add(1)
					return
				}
				var v struct{ T int64 }
				json.Unmarshal([]byte(ev.data), &v)
				mu.Lock()
				lat = append(lat, ev.at.Sub(time.Unix(0, v.T)))
				mu.Unlock()
			}
		}()
	}
	start := time.Now()
	tick := time.NewTicker(20 * time.Millisecond)
	for range events {
		<-tick.C
		es.publish(t, "tick.n", map[string]int64{"t": time.Now().UnixNano()})
	}
	tick.Stop()
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of %d clients did not get all %d events", n, clients, events)
	}
	elapsed := time.Since(start)
	slices.Sort(lat)
	t.Logf("%d clients × %d events in %v: latency p50 %v p99 %v max %v", clients, events, elapsed.Round(time.Millisecond),
		lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1])
	if len(lat) != clients*events {
		t.Errorf("%d deliveries, want %d", len(lat), clients*events)
	}
	if n := metricValue(t, es.ts, "shoal_frontend_event_clients"); n != clients {
		t.Errorf("clients gauge %v", n)
	}
}
