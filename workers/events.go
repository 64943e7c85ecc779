package workers

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/shoal-dev/shoal/broker"
	"github.com/shoal-dev/shoal/internal/reqctx"
	"github.com/shoal-dev/shoal/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// Events: a worker announces that something happened with Publish, and
// reacts to what others announce with Subscribe.
//
//	srv.Subscribe("employee", func(ctx context.Context, ev *workers.Event) error {
//		var e Employee
//		if err := ev.Decode(&e); err != nil {
//			return err
//		}
//		… // ev.Topic is "employee.created", "employee.left", …
//		return nil
//	})
//
//	mux.HandleFunc("hr", func(ctx context.Context, req *workers.Request) (workers.Response, error) {
//		…
//		err := workers.Publish(ctx, "employee.created", Employee{ID: id, Name: name})
//		…
//	})
//
// Topics are dot-separated names; a subscription to "employee" gets
// "employee.created" and "employee.left.x", not "employees" (matching is by
// whole segments, see wire.TopicMatch). Delivery is at most once and may
// drop under overload: what must not be lost belongs in the task queue.

// Event is what a subscription's handler gets. Body is the msgpack encoding
// of the published value; Decode reads it. It is shared with the other
// subscriptions that got the same event: read it, do not modify it.
type Event struct {
	ID    string     // unique per publisher
	Topic string     // e.g. "employee.created"
	Body  []byte     // msgpack
	Time  time.Time  // when it was published
	RID   string     // request id of the request that caused it, if any
	Trace []wire.Hop // hops of that request, the publisher's last
}

// Decode unmarshals the event's msgpack body into v.
func (e *Event) Decode(v any) error { return msgpack.Unmarshal(e.Body, v) }

// EventHandlerFunc handles one event. An error is logged and counted; the
// event is not delivered again. ctx carries the event's trace (Publish and
// Call inside the handler continue it) and ends when the worker stops.
type EventHandlerFunc func(ctx context.Context, ev *Event) error

// Errors of the event API.
var (
	// ErrNoPublisher is returned by Publish on a server without EventsIn,
	// and by the package-level Publish outside a handler.
	ErrNoPublisher = errors.New("workers: Publish needs a handler context of a server with EventsIn")
	// ErrNoSubscriber is returned by Subscribe on a server without
	// EventsOut, or once it is draining.
	ErrNoSubscriber = errors.New("workers: Subscribe needs a running server with EventsOut")
)

// DefaultEventBuffer is how many events wait per subscription by default.
const DefaultEventBuffer = 1024

// eventState is the Server's event machinery, nil parts when not
// configured.
type eventState struct {
	pub *broker.Publisher

	mu      sync.Mutex         // guards sub, subs and closed
	sub     *broker.Subscriber // started by the first Subscribe
	subs    []*subscription
	closed  bool
	wg      sync.WaitGroup
	ctx     context.Context // of event handlers; cancelled at stop
	cancel  context.CancelFunc
	stopped atomic.Bool

	published, publishFailed *metrics.Counter
}

type subscription struct {
	prefix string
	h      EventHandlerFunc
	ch     chan *wire.Event
	cancel func()

	received, dropped, failed *metrics.Counter
}

// firstOr returns the first of names, or def when there is none.
func firstOr(names []string, def string) string {
	if len(names) > 0 {
		return names[0]
	}
	return def
}

// requestBrokers are the endpoints the request links dial: none for a
// worker that only subscribes to events.
func (s *Server) requestBrokers() []string {
	if len(s.mux.h) == 0 {
		return nil
	}
	return s.o.Brokers
}

// startEvents connects the publisher and subscriber links that Options
// ask for. Called by NewServer.
func (s *Server) startEvents() error {
	o := s.o
	s.ev.ctx, s.ev.cancel = context.WithCancel(context.Background())
	if o.EventBuffer <= 0 {
		s.o.EventBuffer = DefaultEventBuffer
	}
	var err error
	if len(o.EventsIn) > 0 {
		s.ev.published = o.Metrics.NewCounter(`shoal_worker_events_published_total`)
		s.ev.publishFailed = o.Metrics.NewCounter(`shoal_worker_events_publish_failed_total`)
		s.ev.pub, err = broker.NewPublisher(broker.PublisherOptions{Endpoints: o.EventsIn, Heartbeat: o.Heartbeat,
			Liveness: o.Liveness, Transport: o.Transport, Logger: o.Logger})
		if err != nil {
			return err
		}
	}
	return nil
}

// subscriber returns the subscriber links, started at the first
// Subscribe: a worker that never subscribes holds no events_out link.
// Called with ev.mu held.
func (s *Server) subscriber() (*broker.Subscriber, error) {
	if s.ev.sub == nil {
		sub, err := broker.NewSubscriber(broker.SubscriberOptions{Endpoints: s.o.EventsOut, Heartbeat: s.o.Heartbeat,
			Liveness: s.o.Liveness, Transport: s.o.Transport, Logger: s.o.Logger})
		if err != nil {
			return nil, err
		}
		s.ev.sub = sub
	}
	return s.ev.sub, nil
}

// Publish announces value under topic through the brokers, with the trace
// of the request ctx belongs to: it needs the context of a running handler
// (request or event) of a server with EventsIn. value is encoded with
// msgpack. A nil error means the event left for a broker, not that anyone
// got it (at-most-once delivery).
func Publish(ctx context.Context, topic string, value any) error {
	ci := callFrom(ctx)
	if ci == nil {
		return ErrNoPublisher
	}
	return ci.s.Publish(ctx, topic, value)
}

// Publish announces value under topic; inside a handler's ctx the event
// carries that request's id and trace. It fails with wire.ErrTopic for an
// invalid topic, broker.ErrUnavailable when no broker is reachable, and
// ErrNoPublisher without EventsIn.
func (s *Server) Publish(ctx context.Context, topic string, value any) error {
	if s.ev.pub == nil {
		return ErrNoPublisher
	}
	body, err := msgpack.Marshal(value)
	if err != nil {
		return fmt.Errorf("workers: cannot encode event %s: %w", topic, err)
	}
	ev := wire.Event{Topic: topic, Body: body}
	ev.RID, ev.Trace, _ = TraceFrom(ctx)
	if err := s.ev.pub.Publish(&ev); err != nil {
		s.ev.publishFailed.Inc()
		return err
	}
	s.ev.published.Inc()
	return nil
}

// Subscribe calls h with every event whose topic matches prefix by whole
// segments ("" for every event). Each subscription has its own goroutine,
// so h sees its events one at a time, in the order they arrived; up to
// Options.EventBuffer events wait for it, and past that new ones are
// dropped and counted (shoal_worker_events_dropped_total). A panic in h is
// recovered and counted as an error. Subscribe may be called before or
// after Run; it needs Options.EventsOut.
func (s *Server) Subscribe(prefix string, h EventHandlerFunc) error {
	if len(s.o.EventsOut) == 0 {
		return ErrNoSubscriber
	}
	if !wire.ValidTopicPrefix(prefix) {
		return fmt.Errorf("workers: subscribe to %q: %w", prefix, wire.ErrTopic)
	}
	lbl := fmt.Sprintf(`{prefix=%q}`, prefix)
	sb := &subscription{prefix: prefix, h: h, ch: make(chan *wire.Event, s.o.EventBuffer),
		received: s.o.Metrics.GetOrCreateCounter(`shoal_worker_events_received_total` + lbl),
		dropped:  s.o.Metrics.GetOrCreateCounter(`shoal_worker_events_dropped_total` + lbl),
		failed:   s.o.Metrics.GetOrCreateCounter(`shoal_worker_event_errors_total` + lbl),
	}
	s.ev.mu.Lock()
	defer s.ev.mu.Unlock()
	if s.ev.closed {
		return ErrNoSubscriber
	}
	sub, err := s.subscriber()
	if err != nil {
		return err
	}
	cancel, err := sub.Subscribe(prefix, func(ev *wire.Event) {
		select {
		case sb.ch <- ev:
			sb.received.Inc()
		default:
			sb.dropped.Inc()
		}
	})
	if err != nil {
		return err
	}
	sb.cancel = cancel
	s.ev.subs = append(s.ev.subs, sb)
	s.ev.wg.Add(1)
	go s.eventLoop(sb)
	return nil
}

func (s *Server) eventLoop(sb *subscription) {
	defer s.ev.wg.Done()
	for ev := range sb.ch {
		if s.ev.stopped.Load() {
			continue // stopping: what still waits is dropped
		}
		s.handleEvent(sb, ev)
	}
}

func (s *Server) handleEvent(sb *subscription, wev *wire.Event) {
	start := time.Now()
	ev := &Event{ID: wev.ID, Topic: wev.Topic, Body: wev.Body, Time: time.UnixMicro(wev.Time), RID: wev.RID, Trace: wev.Trace}
	req := &wire.Request{RID: wev.RID, Service: s.o.Name, Trace: wev.Trace}
	ctx := reqctx.With(s.ev.ctx, &callInfo{s: s, req: req, start: start})
	err := func() (err error) {
		defer func() {
			if p := recover(); p != nil {
				s.panics.Inc()
				s.log.Error("event handler panicked", "topic", ev.Topic, "panic", p, "stack", string(debug.Stack()))
				err = &panicError{p}
			}
		}()
		return sb.h(ctx, ev)
	}()
	if err != nil {
		sb.failed.Inc()
		s.log.Warn("event handler failed", "prefix", sb.prefix, "topic", ev.Topic, "id", ev.ID, "err", err)
	}
}

// stopEvents ends every subscription (what still waits is dropped), waits
// for the handlers running, then flushes and closes the publisher.
func (s *Server) stopEvents() {
	s.ev.mu.Lock()
	s.ev.closed = true
	subs := s.ev.subs
	sub := s.ev.sub
	s.ev.mu.Unlock()
	if sub != nil {
		sub.Close()
	}
	s.ev.stopped.Store(true)
	s.ev.cancel()
	for _, sb := range subs {
		sb.cancel()
		close(sb.ch)
	}
	s.ev.wg.Wait()
	if s.ev.pub != nil {
		s.ev.pub.Close()
	}
}
