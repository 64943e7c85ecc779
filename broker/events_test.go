package broker_test

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/broker"
	"github.com/shoal-dev/shoal/internal/testenv"
	"github.com/shoal-dev/shoal/internal/zsock"
	"github.com/shoal-dev/shoal/wire"
)

// withEvents turns on the forwarder on free ports.
func withEvents(mod func(*broker.Options)) func(*broker.Options) {
	return func(o *broker.Options) {
		o.EventsIn, o.EventsOut = "tcp://127.0.0.1:0", "tcp://127.0.0.1:0"
		if mod != nil {
			mod(o)
		}
	}
}

func (tb *testBroker) eventsIn() string  { return "tcp://" + tb.EventsInAddr().String() }
func (tb *testBroker) eventsOut() string { return "tcp://" + tb.EventsOutAddr().String() }

func (tb *testBroker) events(t *testing.T) *broker.EventStats {
	t.Helper()
	st := tb.stats(t)
	if st.Events == nil {
		t.Fatal("broker stats have no events section")
	}
	return st.Events
}

// waitPrefixes polls until the broker holds exactly these subscriptions.
func (tb *testBroker) waitPrefixes(t *testing.T, n int, prefixes ...string) {
	t.Helper()
	sort.Strings(prefixes)
	testenv.Eventually(t, 5*time.Second, fmt.Sprintf("%d subscriptions to %q at the broker", n, prefixes), func() bool {
		es := tb.events(t)
		return es.Subscriptions == n && slices.Equal(es.Prefixes, prefixes)
	})
}

func newPublisher(t *testing.T, eps ...string) *broker.Publisher {
	t.Helper()
	p, err := broker.NewPublisher(broker.PublisherOptions{Endpoints: eps, Heartbeat: hb, Liveness: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	testenv.Eventually(t, 5*time.Second, "publisher link up", p.Ready)
	return p
}

func newSubscriber(t *testing.T, eps ...string) *broker.Subscriber {
	t.Helper()
	s, err := broker.NewSubscriber(broker.SubscriberOptions{Endpoints: eps, Heartbeat: hb, Liveness: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	testenv.Eventually(t, 5*time.Second, "subscriber link up", s.Ready)
	return s
}

// recorder collects the topics of the events a handler got.
type recorder struct {
	mu     sync.Mutex
	topics []string
	ids    map[string]int
}

// handler records each event once: a Subscriber calls every matching
// subscription, and a recorder may be behind several.
func (r *recorder) handler(ev *wire.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ids == nil {
		r.ids = make(map[string]int)
	}
	if r.ids[ev.ID]++; r.ids[ev.ID] == 1 {
		r.topics = append(r.topics, ev.Topic)
	}
}

func (r *recorder) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.topics)
}

func (r *recorder) has(topic string) bool { return slices.Contains(r.got(), topic) }

func publish(t *testing.T, p *broker.Publisher, topic string, body []byte) {
	t.Helper()
	if err := p.Publish(&wire.Event{Topic: topic, Body: body}); err != nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
}

// Item 1: a subscriber gets the topics its prefixes match, by whole
// segments, once each (however many of its prefixes match), in order.
func TestEventsPrefixMatching(t *testing.T) {
	tb := startBroker(t, withEvents(nil))
	p := newPublisher(t, tb.eventsIn())

	subs := map[string][]string{
		"task-and-42": {"task", "task.42"}, // overlapping: each event once
		"task.4":      {"task.4"},
		"everything":  {""},
		"employee":    {"employee"},
	}
	recs := make(map[string]*recorder)
	conns := make(map[string]*broker.Subscriber)
	var all []string
	for name, prefixes := range subs {
		r := &recorder{}
		recs[name] = r
		s := newSubscriber(t, tb.eventsOut())
		conns[name] = s
		for _, pfx := range prefixes {
			if _, err := s.Subscribe(pfx, r.handler); err != nil {
				t.Fatal(err)
			}
		}
		// The end marker goes to a handler of its own.
		s.Subscribe("end", func(ev *wire.Event) {
			if ev.Topic == "end" && !slices.Contains(prefixes, "") {
				r.handler(ev)
			}
		})
		all = append(all, prefixes...)
	}
	all = append(all, "end")
	n := len(all) + len(subs) - 1 // every connection holds "end"
	tb.waitPrefixes(t, n, all...)

	for _, topic := range []string{"task.42.done", "task.4", "task.40", "task.4.x", "employee.created", "employees", "other", "end"} {
		publish(t, p, topic, nil)
	}
	want := map[string][]string{
		"task-and-42": {"task.42.done", "task.4", "task.40", "task.4.x", "end"},
		"task.4":      {"task.4", "task.4.x", "end"},
		"everything":  {"task.42.done", "task.4", "task.40", "task.4.x", "employee.created", "employees", "other", "end"},
		"employee":    {"employee.created", "end"},
	}
	for name, r := range recs {
		testenv.Eventually(t, 5*time.Second, name+" got the end marker", func() bool { return r.has("end") })
		// One publisher, one broker: events arrive in order, so
		// everything before "end" is in.
		got := r.got()
		if !slices.Equal(got, want[name]) {
			t.Errorf("%s got %q, want %q", name, got, want[name])
		}
		// The broker sent each event once to each connection.
		if n := conns[name].Stats().Received; n != uint64(len(want[name])) {
			t.Errorf("%s received %d envelopes, want %d", name, n, len(want[name]))
		}
	}
	es := tb.events(t)
	if task := es.Topic("task"); task.In != 4 || task.Out != 4+2+4 || task.Unrouted != 0 {
		t.Errorf("task counters %+v", task)
	}
	if other := es.Topic("other"); other.In != 1 || other.Out != 1 {
		t.Errorf("other counters %+v", other)
	}

	// Cancelling the last handler of a prefix unsubscribes at the broker.
	s2 := newSubscriber(t, tb.eventsOut())
	cancel, _ := s2.Subscribe("solo", func(*wire.Event) {})
	cancel2, _ := s2.Subscribe("solo", func(*wire.Event) {})
	tb.waitPrefixes(t, n+1, append(slices.Clone(all), "solo")...)
	cancel()
	cancel()
	if es := tb.events(t); !slices.Contains(es.Prefixes, "solo") {
		t.Error("solo unsubscribed while a handler still wants it")
	}
	cancel2()
	tb.waitPrefixes(t, n, all...)
}

func TestPublisherErrors(t *testing.T) {
	tb := startBroker(t, withEvents(nil))
	p := newPublisher(t, tb.eventsIn())
	for _, topic := range []string{"", "a..b", "a b", strings.Repeat("x", 300)} {
		if err := p.Publish(&wire.Event{Topic: topic}); !errors.Is(err, wire.ErrTopic) {
			t.Errorf("Publish(%q) = %v, want ErrTopic", topic, err)
		}
	}
	s := newSubscriber(t, tb.eventsOut())
	if _, err := s.Subscribe("a.", func(*wire.Event) {}); !errors.Is(err, wire.ErrTopic) {
		t.Errorf("Subscribe(a.) = %v", err)
	}
	tb.stop()
	testenv.Eventually(t, 5*time.Second, "publisher notices the broker is gone", func() bool { return !p.Ready() })
	if err := p.Publish(&wire.Event{Topic: "a"}); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("Publish without broker = %v, want ErrUnavailable", err)
	}
	if _, err := broker.New(broker.Options{Clients: "tcp://127.0.0.1:0", Workers: "tcp://127.0.0.1:0", EventsIn: "tcp://127.0.0.1:0"}); err == nil {
		t.Error("New accepted events_in without events_out")
	}
}

// Item 1: subscriptions survive a broker restart. The restarted broker
// knows nobody; the subscriber notices the lost connection, reconnects and
// sends its subscriptions again, and events flow to it once more.
func TestEventsSurviveBrokerRestart(t *testing.T) {
	tb := startBroker(t, withEvents(nil))
	in, out, clients, wks := tb.eventsIn(), tb.eventsOut(), tb.clients, tb.workers
	p := newPublisher(t, in)
	s := newSubscriber(t, out)
	var r recorder
	s.Subscribe("news", r.handler)
	s.Subscribe("weather.eu", r.handler)
	tb.waitPrefixes(t, 2, "news", "weather.eu")
	publish(t, p, "news.before", nil)
	testenv.Eventually(t, 5*time.Second, "event before the restart", func() bool { return r.has("news.before") })

	for round := range 2 {
		tb.stop()
		testenv.Eventually(t, 5*time.Second, "links notice the broker is gone", func() bool { return !s.Ready() && !p.Ready() })
		tb = startBroker(t, func(o *broker.Options) {
			o.Clients, o.Workers, o.EventsIn, o.EventsOut = clients, wks, in, out
		})
		// Nobody subscribed at the new broker: the subscriber did it again.
		tb.waitPrefixes(t, 2, "news", "weather.eu")
		testenv.Eventually(t, 5*time.Second, "publisher reconnected", p.Ready)
		topic := fmt.Sprintf("news.after%d", round)
		publish(t, p, topic, nil)
		publish(t, p, "weather.eu.paris", nil)
		publish(t, p, "weather.us", nil)
		testenv.Eventually(t, 5*time.Second, topic+" after the restart", func() bool { return r.has(topic) })
		testenv.Eventually(t, 5*time.Second, "paris forecast after the restart", func() bool {
			n := 0
			for _, tp := range r.got() {
				if tp == "weather.eu.paris" {
					n++
				}
			}
			return n == round+1
		})
	}
	if slices.Contains(r.got(), "weather.us") {
		t.Error("got weather.us without subscribing to it")
	}
	if n := s.Stats().Resyncs; n < 3 {
		t.Errorf("subscriptions sent afresh %d times, want at least 3 (start + 2 restarts)", n)
	}
}

// rawSubscriber is a DEALER on events_out driven by hand: it subscribes
// and then, unless told, never reads and never grants credit.
func rawSubscriber(t *testing.T, ep string, prefixes ...string) zsock.Socket {
	t.Helper()
	s, err := zsock.Dial(zsock.Dealer, ep, zsock.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	body := make([][]byte, len(prefixes))
	for i, p := range prefixes {
		body[i] = []byte(p)
	}
	if err := s.Send(wire.Frames(wire.CmdSubscribe, body...)); err != nil {
		t.Fatal(err)
	}
	return s
}

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// Item 1: a subscriber that stops reading does not grow the broker's
// memory without bound, and the subscribers that read do not notice it:
// the broker stops writing to it once its credit window is used up,
// queues a bounded number of events for it and then drops the oldest,
// counting them. It stays connected (it still heartbeats, in real life).
func TestEventsStalledSubscriberBoundedAndHarmless(t *testing.T) {
	const queue, queueBytes = 512, 256 << 10
	tb := startBroker(t, withEvents(func(o *broker.Options) {
		o.Events = broker.EventOptions{Queue: queue, QueueBytes: queueBytes, WriteTimeout: 5 * time.Second}
		o.Heartbeat = 10 * time.Second // the raw subscriber does not heartbeat
	}))
	p := newPublisher(t, tb.eventsIn())
	fast := newSubscriber(t, tb.eventsOut())
	var got atomic.Int64
	var lmu sync.Mutex
	var lat []time.Duration
	fast.Subscribe("feed", func(ev *wire.Event) {
		d := time.Since(time.UnixMicro(ev.Time))
		lmu.Lock()
		lat = append(lat, d)
		lmu.Unlock()
		got.Add(1)
	})
	rawSubscriber(t, tb.eventsOut(), "feed")
	tb.waitPrefixes(t, 2, "feed")
	testenv.Eventually(t, 5*time.Second, "2 subscribers", func() bool { return tb.events(t).Subscribers == 2 })

	body := make([]byte, 200)
	base := heapInUse()
	// Chunks well below the queue limit: a burst larger than the queue
	// would (rightly) drop events for the reader too.
	const total, chunk = 40_000, 200
	start := time.Now()
	for sent := 0; sent < total; {
		for range chunk {
			publish(t, p, "feed.tick", body)
		}
		sent += chunk
		// Pace the publisher by the reader.
		testenv.Eventually(t, 10*time.Second, fmt.Sprintf("fast subscriber has %d", sent), func() bool { return got.Load() == int64(sent) })
	}
	elapsed := time.Since(start)
	grown := int64(heapInUse()) - int64(base)

	es := tb.events(t)
	feed := es.Topic("feed")
	t.Logf("%d events in %v (%.0f/s) to the reader; broker heap grew %d KiB; feed counters %+v; queued %d (%d B), in flight %d B",
		total, elapsed.Round(time.Millisecond), float64(total)/elapsed.Seconds(), grown>>10, feed, es.Queued, es.QueuedBytes, es.InFlightBytes)
	if feed.In != total {
		t.Errorf("forwarder took in %d events, want %d", feed.In, total)
	}
	if es.Queued > queue || es.QueuedBytes > queueBytes {
		t.Errorf("stalled subscriber's queue holds %d events / %d bytes, limits %d / %d", es.Queued, es.QueuedBytes, queue, queueBytes)
	}
	// At most a window each: the stalled one's, and what the reader has
	// not credited yet.
	if es.InFlightBytes > 2*broker.DefaultEventWindow {
		t.Errorf("%d bytes in flight, window %d per subscriber", es.InFlightBytes, broker.DefaultEventWindow)
	}
	// Every event reached the reader or was queued, in flight or dropped
	// for the stalled one.
	if feed.Out+feed.Dropped+uint64(es.Queued) != 2*total {
		t.Errorf("out %d + dropped %d + queued %d != %d deliveries", feed.Out, feed.Dropped, es.Queued, 2*total)
	}
	if feed.Dropped < total-queue-broker.DefaultEventWindow/200 {
		t.Errorf("dropped %d; the stalled subscriber should have lost nearly all of %d", feed.Dropped, total)
	}
	if es.Subscribers != 2 || es.Lost != 0 {
		t.Errorf("subscribers %d, lost %d: the stalled one should still be connected", es.Subscribers, es.Lost)
	}
	// 40k events of 200 B went through; the broker may keep the stalled
	// one's queue (256 KiB) and the window (64 KiB) plus socket buffers.
	if grown > 16<<20 {
		t.Errorf("heap grew %d MiB while a subscriber stalled", grown>>20)
	}
	lmu.Lock()
	slices.Sort(lat)
	p99 := lat[len(lat)*99/100]
	lmu.Unlock()
	t.Logf("reader's delivery latency p50 %v p99 %v", lat[len(lat)/2], p99)
	// A write blocked on the stalled subscriber would hold the reader up
	// for the 5 s write timeout.
	if p99 > time.Second {
		t.Errorf("reader's p99 latency %v: the stalled subscriber slowed it", p99)
	}
}

// A subscriber that grants credit but does not read is cut off by the
// transport (write queue or write timeout) and forgotten; the others keep
// getting everything.
func TestEventsLyingSubscriberDropped(t *testing.T) {
	tb := startBroker(t, withEvents(func(o *broker.Options) {
		o.Events = broker.EventOptions{WriteTimeout: 300 * time.Millisecond}
		o.Heartbeat = time.Second
	}))
	p := newPublisher(t, tb.eventsIn())
	fast := newSubscriber(t, tb.eventsOut())
	var got atomic.Int64
	fast.Subscribe("feed", func(*wire.Event) { got.Add(1) })
	liar := rawSubscriber(t, tb.eventsOut(), "feed")
	tb.waitPrefixes(t, 2, "feed")
	credit := wire.Frames(wire.CmdCredit, wire.AppendCredit(nil, 1<<40))

	body := make([]byte, 4<<10)
	sent := 0
	deadline := time.Now().Add(20 * time.Second)
	for tb.events(t).Lost == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the lying subscriber was never dropped; stats %+v", tb.events(t))
		}
		_ = liar.Send(credit)
		for range 200 {
			publish(t, p, "feed.big", body)
		}
		sent += 200
		testenv.Eventually(t, 10*time.Second, "fast subscriber keeps up", func() bool { return got.Load() == int64(sent) })
	}
	es := tb.events(t)
	t.Logf("liar dropped after %d events of 4 KiB; stats %+v", sent, es.Topic("feed"))
	if es.Subscribers != 1 {
		t.Errorf("%d subscribers left, want 1", es.Subscribers)
	}
}

// Item 1: malformed input on both event endpoints is counted and dropped;
// the forwarder keeps forwarding.
func TestEventsMalformedCounted(t *testing.T) {
	tb := startBroker(t, withEvents(nil))
	v := []byte(wire.Version)
	good := (&wire.Event{ID: "x-1", Topic: "ok"}).AppendMsgpack(nil)
	junkIn := [][][]byte{
		{[]byte("nonsense")},
		{v},
		{v, {0x7f}},
		{v, {byte(wire.CmdEvent)}, {0xc1}},
		{v, {byte(wire.CmdEvent)}, []byte("not msgpack at all")},
		{v, {byte(wire.CmdEvent)}, (&wire.Event{ID: "1", Topic: "bad..topic"}).AppendMsgpack(nil)},
		{v, {byte(wire.CmdEvent)}, good[:len(good)-2]},
		{v, {byte(wire.CmdEvent)}, {0xdf, 0xff, 0xff, 0xff, 0xff}},
		{v, {byte(wire.CmdRequest)}, (&wire.Request{ID: 1, Service: "echo"}).AppendMsgpack(nil)},
		{v, {byte(wire.CmdSubscribe)}, []byte("x")},
	}
	junkOut := [][][]byte{
		{[]byte("nonsense")},
		{v, {byte(wire.CmdSubscribe)}, []byte("bad prefix"), []byte("a..b")},
		{v, {byte(wire.CmdCredit)}, []byte("garbage")},
		{v, {byte(wire.CmdEvent)}, good},
		{v, {byte(wire.CmdReady)}, {0x80}},
	}
	for ep, junk := range map[string][][][]byte{tb.eventsIn(): junkIn, tb.eventsOut(): junkOut} {
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
	want := []string{"event_frames", "event_envelope", "event_publisher_command", "event_prefix", "event_credit", "event_subscriber_command"}
	testenv.Eventually(t, 5*time.Second, fmt.Sprintf("malformed counters %v", want), func() bool {
		m := tb.stats(t).Malformed
		for _, k := range want {
			if m[k] == 0 {
				return false
			}
		}
		return true
	})
	t.Logf("malformed: %v", tb.stats(t).Malformed)

	// A HEARTBEAT from a subscriber the broker does not know gets
	// DISCONNECT: "send your subscriptions again".
	raw, err := zsock.Dial(zsock.Dealer, tb.eventsOut(), zsock.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.Send(wire.Frames(wire.CmdHeartbeat))
	if m, err := raw.Recv(); err != nil || len(m) != 2 || m[1][0] != byte(wire.CmdDisconnect) {
		t.Fatalf("answer to an unknown subscriber's heartbeat: %q %v", m, err)
	}
	raw.Send(wire.Frames(wire.CmdSubscribe))
	raw.Send(wire.Frames(wire.CmdHeartbeat))
	if m, err := raw.Recv(); err != nil || len(m) != 2 || m[1][0] != byte(wire.CmdHeartbeat) {
		t.Fatalf("answer to a known subscriber's heartbeat: %q %v", m, err)
	}

	// Still forwarding.
	p := newPublisher(t, tb.eventsIn())
	s := newSubscriber(t, tb.eventsOut())
	var r recorder
	s.Subscribe("ok", r.handler)
	tb.waitPrefixes(t, 1, "ok")
	publish(t, p, "ok.fine", []byte{0xc0})
	testenv.Eventually(t, 5*time.Second, "event after the junk", func() bool { return r.has("ok.fine") })
}

// /stats and /metrics carry the event counters per topic label.
func TestEventsMetrics(t *testing.T) {
	tb := startBroker(t, withEvents(nil))
	p := newPublisher(t, tb.eventsIn())
	s := newSubscriber(t, tb.eventsOut())
	var r recorder
	s.Subscribe("task", r.handler)
	tb.waitPrefixes(t, 1, "task")
	publish(t, p, "task.1.done", nil)
	publish(t, p, "nobody.cares", nil)
	testenv.Eventually(t, 5*time.Second, "event", func() bool { return r.has("task.1.done") })
	testenv.Eventually(t, 5*time.Second, "unrouted event", func() bool { return tb.events(t).Topic("nobody").Unrouted == 1 })
	resp, err := http.Get("http://" + tb.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`shoal_broker_events_in_total{broker="b0",prefix="task"} 1`,
		`shoal_broker_events_out_total{broker="b0",prefix="task"} 1`,
		`shoal_broker_events_unrouted_total{broker="b0",prefix="nobody"} 1`,
		`shoal_broker_events_dropped_total{broker="b0",prefix="task"} 0`,
		`shoal_broker_event_subscribers{broker="b0"} 1`,
		`shoal_broker_event_subscriptions{broker="b0"} 1`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
