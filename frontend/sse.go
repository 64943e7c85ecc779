package frontend

import (
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/shoal-dev/shoal/wire"
	"github.com/valyala/fasthttp"
)

// Live push: GET /events?topic=a&topic=b streams broker events to HTTP
// clients as Server-Sent Events.
//
// One EventSource (the process's *broker.Subscriber) feeds every client:
// the frontend subscribes once per topic prefix that some client wants,
// counting references, so ten thousand browsers watching "news" are one
// subscription at each broker. Each event is rendered once (id, the topic
// as the event name, the JSON rendering of its msgpack body) and the same
// bytes are queued for every client that wants it.
//
// Each client has a bounded queue (EventOptions.Buffer). A client whose
// queue is full cannot keep up: it is dropped with a final
//
//	event: dropped
//	data: {"reason":"slow_client","buffer":256}
//
// and counted (shoal_frontend_event_clients_dropped_total); it never slows
// the other clients nor the broker link, which only ever does non-blocking
// queue sends. An idle stream gets a comment (": ping") every Heartbeat,
// which keeps proxies from closing it and finds clients that went away. At
// shutdown every stream gets "event: shutdown" and ends cleanly, so
// fasthttp's Shutdown does not wait on them.
//
// The stream is written by fasthttp's connection goroutine itself (the
// body stream implements fasthttp.BodyWriterTo): no goroutine, pipe or
// copy buffer per client beyond the connection's own, and each write is
// one chunk under a write deadline that moves with it, since fasthttp's
// WriteTimeout would otherwise bound the whole stream.
//
// /events is registered on the same router as the routes, so gateway
// middleware (authentication when it comes) applies to it as to any route.

// EventSource is what /events reads: *broker.Subscriber implements it.
type EventSource interface {
	// Subscribe calls fn with every event whose topic matches prefix by
	// whole segments; fn must not block. The returned function cancels.
	Subscribe(prefix string, fn func(ev *wire.Event)) (cancel func(), err error)
}

// EventOptions configure GET /events. Without a Source the path is not
// served.
type EventOptions struct {
	Source EventSource
	// Path of the stream. Default "/events".
	Path string
	// Heartbeat is the interval of the ": ping" comment on an idle stream.
	// Default 15s.
	Heartbeat time.Duration
	// Buffer is how many events may wait for one client; a client further
	// behind is dropped. Default 256.
	Buffer int
	// MaxTopics is how many topic parameters one stream may name.
	// Default 16.
	MaxTopics int
	// MaxClients bounds the streams open at once (503 beyond); 0 means
	// only MaxConns bounds them.
	MaxClients int
	// Retry is the reconnection delay advised to clients ("retry:").
	// Default 2s.
	Retry time.Duration
	// SendBuffer is the socket send buffer (SO_SNDBUF) of a stream's
	// connection. Linux grows it to megabytes when left alone, so a
	// client that stops reading would hold that much kernel memory before
	// its Buffer even starts to fill. Default 32 KiB (the kernel doubles
	// it).
	SendBuffer int
}

// Defaults of EventOptions.
const (
	DefaultEventsPath     = "/events"
	DefaultEventHeartbeat = 15 * time.Second
	DefaultEventBuffer    = 256
	DefaultEventMaxTopics = 16
	DefaultEventRetry     = 2 * time.Second
	DefaultEventSendBuf   = 32 << 10
)

// Reasons a stream ends that the final event names.
const (
	dropSlow     = "slow_client"
	dropShutdown = "server_shutdown"
)

// reservedEvents cannot be watched: as SSE event names they would mean
// something else to a browser's EventSource, or to us.
var reservedEvents = []string{"message", "error", "open", "dropped", "shutdown"}

// Event metric names.
const (
	metricEventClients   = "shoal_frontend_event_clients"
	metricEventStreams   = "shoal_frontend_event_streams_total"
	metricEventsReceived = "shoal_frontend_events_received_total"
	metricEventsSent     = "shoal_frontend_events_sent_total"
	metricEventsBad      = "shoal_frontend_events_malformed_total"
	metricEventDropped   = "shoal_frontend_event_clients_dropped_total"
	metricEventRefused   = "shoal_frontend_event_streams_refused_total"
)

// eventDefaults validates o.Events and fills its zero fields; it is part
// of Options.withDefaults.
func (o *Options) eventDefaults(errs []error) []error {
	e := &o.Events
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("frontend: events: "+format, args...))
	}
	if e.Path == "" {
		e.Path = DefaultEventsPath
	}
	if _, err := paramNames(e.Path); err != nil || strings.ContainsAny(e.Path, "{}") {
		bad("path %q must be a plain path", e.Path)
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{{"heartbeat", &e.Heartbeat, DefaultEventHeartbeat}, {"retry", &e.Retry, DefaultEventRetry}} {
		switch {
		case *d.v < 0:
			bad("%s %v is negative", d.name, *d.v)
		case *d.v == 0:
			*d.v = d.def
		}
	}
	for _, n := range []struct {
		name string
		v    *int
		def  int
	}{{"buffer", &e.Buffer, DefaultEventBuffer}, {"max topics", &e.MaxTopics, DefaultEventMaxTopics}, {"max clients", &e.MaxClients, 0},
		{"send buffer", &e.SendBuffer, DefaultEventSendBuf}} {
		switch {
		case *n.v < 0:
			bad("%s %d is negative", n.name, *n.v)
		case *n.v == 0:
			*n.v = n.def
		}
	}
	if e.Source == nil {
		return errs
	}
	for _, p := range reserved {
		if e.Path == p {
			bad("path %s is served by the frontend itself", p)
		}
	}
	for i, r := range o.Routes {
		if strings.TrimRight(r.Path, "/") == strings.TrimRight(e.Path, "/") && (r.Method == "GET" || r.Method == "*") {
			errs = append(errs, &RouteError{Index: i, Method: r.Method, Path: r.Path,
				Err: fmt.Errorf("path %s is the event stream's", e.Path)})
		}
	}
	return errs
}

// eventHub holds the streams and the subscriptions they share.
//
// Lock order: hub.mu, then hubTopic.mu. Neither is held across I/O; the
// event path (deliver) takes only a topic's read lock.
type eventHub struct {
	s   *Server
	o   EventOptions
	src EventSource

	mu      sync.Mutex // guards topics, clients and closed
	topics  map[string]*hubTopic
	clients map[*sseClient]struct{}
	closed  bool

	stats                                   *routeStats
	streams, received, sent, bad, slowDrops *metrics.Counter
	refusedFull, refusedBad, refusedClosed  *metrics.Counter
	nclients                                atomic.Int64
}

// hubTopic is one prefix some clients watch, subscribed once at the source.
type hubTopic struct {
	prefix string
	cancel func()
	mu     sync.RWMutex // guards list
	list   []*sseClient
}

// sseClient is one stream.
type sseClient struct {
	ch     chan *frame   // rendered events waiting (pointers: 8 bytes a slot)
	done   chan struct{} // closed when the stream must end
	reason string        // why, set before done closes
	once   sync.Once

	topics []*hubTopic // under hub.mu
	idx    []int       // its position in each topic's list, under that topic's lock
}

// stop ends the stream with reason; the first reason wins.
func (c *sseClient) stop(reason string) bool {
	stopped := false
	c.once.Do(func() {
		c.reason = reason
		close(c.done)
		stopped = true
	})
	return stopped
}

func (s *Server) setupEvents() error {
	o := s.o.Events
	if o.Source == nil {
		return nil
	}
	h := &eventHub{s: s, o: o, src: o.Source, topics: make(map[string]*hubTopic), clients: make(map[*sseClient]struct{})}
	h.stats = newRouteStats(s.set, "GET "+o.Path)
	h.streams = s.set.NewCounter(metricEventStreams)
	h.received = s.set.NewCounter(metricEventsReceived)
	h.sent = s.set.NewCounter(metricEventsSent)
	h.bad = s.set.NewCounter(metricEventsBad)
	h.slowDrops = s.set.NewCounter(metricEventDropped + `{reason="` + dropSlow + `"}`)
	h.refusedFull = s.set.NewCounter(metricEventRefused + `{reason="too_many_clients"}`)
	h.refusedBad = s.set.NewCounter(metricEventRefused + `{reason="bad_request"}`)
	h.refusedClosed = s.set.NewCounter(metricEventRefused + `{reason="shutdown"}`)
	s.set.NewGauge(metricEventClients, func() float64 { return float64(h.nclients.Load()) })
	if err := register(s.router, fasthttp.MethodGet, o.Path, h.serve); err != nil {
		return fmt.Errorf("frontend: events path %s: %w", o.Path, err)
	}
	s.events = h
	return nil
}

// shutdownEvents ends every stream with a final event; new streams are
// refused.
func (s *Server) shutdownEvents() {
	h := s.events
	if h == nil {
		return
	}
	h.mu.Lock()
	h.closed = true
	clients := make([]*sseClient, 0, len(h.clients))
	for c := range h.clients {
		clients = append(clients, c)
	}
	h.mu.Unlock()
	for _, c := range clients {
		c.stop(dropShutdown)
	}
}

// EventClients is the number of open event streams.
func (s *Server) EventClients() int {
	if s.events == nil {
		return 0
	}
	return int(s.events.nclients.Load())
}

// serve handles GET /events?topic=…: it checks the topics, registers the
// client and hands fasthttp the stream to write once the handler returns.
func (h *eventHub) serve(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	rid := h.s.requestID(ctx)
	topics, msg := h.parseTopics(ctx)
	if msg != "" {
		h.refusedBad.Inc()
		h.s.writeError(ctx, fasthttp.StatusBadRequest, "bad_request", msg, rid)
		h.stats.observe(fasthttp.StatusBadRequest, start)
		return
	}
	c, code := h.add(topics)
	if c == nil {
		status, msg := fasthttp.StatusServiceUnavailable, "too many event streams"
		if code == "shutdown" {
			msg = "the server is shutting down"
		}
		ctx.Response.Header.Set("Retry-After", "1")
		h.s.writeError(ctx, status, code, msg, rid)
		h.stats.observe(status, start)
		return
	}
	h.streams.Inc()
	ctx.Response.Header.Set(HeaderRequestID, rid)
	ctx.SetContentType("text/event-stream")
	ctx.Response.Header.Set("Cache-Control", "no-cache")
	ctx.Response.Header.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	ctx.SetConnectionClose()                           // a stream owns its connection
	if tc, ok := ctx.Conn().(interface{ SetWriteBuffer(int) error }); ok {
		_ = tc.SetWriteBuffer(h.o.SendBuffer)
	}
	ctx.SetBodyStream(&sseStream{h: h, c: c, conn: ctx.Conn(), start: start}, -1)
}

// parseTopics reads the topic parameters: valid topics, not reserved
// names, at most MaxTopics. A topic that another covers ("task" covers
// "task.42") is left out, so no event can match a stream twice.
func (h *eventHub) parseTopics(ctx *fasthttp.RequestCtx) ([]string, string) {
	var topics []string
	for _, v := range ctx.QueryArgs().PeekMulti("topic") {
		t := string(v)
		switch {
		case !wire.ValidTopic(t):
			return nil, fmt.Sprintf("invalid topic %q: 1-%d bytes of segments of A-Z a-z 0-9 _ - : separated by dots", t, wire.MaxTopic)
		case slices.Contains(reservedEvents, t):
			return nil, fmt.Sprintf("topic %q is reserved", t)
		}
		topics = append(topics, t)
	}
	switch {
	case len(topics) == 0:
		return nil, "name at least one topic: /events?topic=a&topic=b"
	case len(topics) > h.o.MaxTopics:
		return nil, fmt.Sprintf("%d topics, at most %d", len(topics), h.o.MaxTopics)
	}
	slices.SortFunc(topics, func(a, b string) int { return len(a) - len(b) })
	kept := topics[:0]
	for _, t := range topics {
		if !slices.ContainsFunc(kept, func(k string) bool { return wire.TopicMatch(k, t) }) {
			kept = append(kept, t)
		}
	}
	return kept, ""
}

// add registers a client for topics, subscribing to the prefixes nobody
// watched yet. It returns nil and an error code when it refuses.
func (h *eventHub) add(topics []string) (*sseClient, string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.closed:
		h.refusedClosed.Inc()
		return nil, "shutdown"
	case h.o.MaxClients > 0 && len(h.clients) >= h.o.MaxClients:
		h.refusedFull.Inc()
		return nil, "too_many_streams"
	}
	c := &sseClient{ch: make(chan *frame, h.o.Buffer), done: make(chan struct{}),
		topics: make([]*hubTopic, 0, len(topics)), idx: make([]int, len(topics))}
	for i, p := range topics {
		t := h.topics[p]
		if t == nil {
			t = &hubTopic{prefix: p}
			cancel, err := h.src.Subscribe(p, func(ev *wire.Event) { h.deliver(t, ev) })
			if err != nil { // the topic was validated: cannot happen
				h.s.log.Error("cannot subscribe", "topic", p, "err", err)
				continue
			}
			t.cancel = cancel
			h.topics[p] = t
		}
		t.mu.Lock()
		c.idx[i] = len(t.list)
		t.list = append(t.list, c)
		t.mu.Unlock()
		c.topics = append(c.topics, t)
	}
	h.clients[c] = struct{}{}
	h.nclients.Add(1)
	return c, ""
}

// remove unregisters c, unsubscribing the prefixes nobody watches any more.
func (h *eventHub) remove(c *sseClient) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.clients[c]; !ok {
		return
	}
	delete(h.clients, c)
	h.nclients.Add(-1)
	for i, t := range c.topics {
		t.mu.Lock()
		last := len(t.list) - 1
		j := c.idx[i]
		moved := t.list[last]
		t.list[j] = moved
		t.list[last] = nil
		t.list = t.list[:last]
		if moved != c {
			moved.idx[slices.Index(moved.topics, t)] = j
		}
		empty := len(t.list) == 0
		t.mu.Unlock()
		if empty {
			delete(h.topics, t.prefix)
			t.cancel()
		}
	}
}

// deliver runs on the source's receive goroutine: render once, queue for
// every client without blocking, drop the clients that are full.
func (h *eventHub) deliver(t *hubTopic, ev *wire.Event) {
	h.received.Inc()
	frame, err := renderEvent(ev)
	if err != nil {
		h.bad.Inc()
		h.s.log.Warn("dropping event whose body is not msgpack", "topic", ev.Topic, "id", ev.ID)
		return
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	for _, c := range t.list {
		select {
		case c.ch <- frame:
		default:
			if c.stop(dropSlow) {
				h.slowDrops.Inc()
			}
		}
	}
}

// frame is one rendered event, shared by every client that gets it.
type frame struct{ b []byte }

// renderEvent is one SSE event: id, event name, data.
func renderEvent(ev *wire.Event) (*frame, error) {
	b := make([]byte, 0, 32+len(ev.ID)+len(ev.Topic)+2*len(ev.Body))
	b = append(b, "id: "...)
	b = append(b, ev.ID...)
	b = append(b, "\nevent: "...)
	b = append(b, ev.Topic...)
	b = append(b, "\ndata: "...)
	b, err := appendJSON(b, ev.Body)
	if err != nil {
		return nil, err
	}
	return &frame{b: append(b, "\n\n"...)}, nil
}

// sseStream is the response body of one stream. fasthttp calls WriteTo on
// the connection goroutine (BodyWriterTo); Read serves any path that reads
// instead. Close unregisters the client, whatever ended the response.
type sseStream struct {
	h        *eventHub
	c        *sseClient
	conn     net.Conn
	start    time.Time
	started  bool
	ended    bool
	timer    *time.Timer // pings; not reset per write (see next)
	lastData time.Time   // last write
	renewAt  time.Time   // when the write deadline needs moving again
	pending  []byte      // Read: what the last batch left
	closed   sync.Once
}

var _ fasthttp.BodyWriterTo = (*sseStream)(nil)

// SupportsBodyWriteTo tells fasthttp that WriteTo may replace Read.
func (st *sseStream) SupportsBodyWriteTo() bool { return true }

// maxBatch bounds one write: events that queued while the last write was
// in flight leave together, up to this many bytes.
const maxBatch = 64 << 10

// batchBufs hold a batch from the moment there is something to write
// until it is written: an idle stream holds none.
var batchBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

func putBatch(bp *[]byte) {
	if cap(*bp) <= maxBatch+4096 {
		*bp = (*bp)[:0]
		batchBufs.Put(bp)
	}
}

// WriteTo writes the stream: each batch is one chunk, one write(2). It
// runs after the handler returned, outside its recover: it has its own.
func (st *sseStream) WriteTo(w io.Writer) (n int64, err error) {
	defer func() {
		if v := recover(); v != nil {
			st.h.s.panics.Inc()
			st.h.s.log.Error("panic in event stream", "panic", v, "stack", string(debug.Stack()))
			st.ended = true
			n, err = 0, fmt.Errorf("frontend: event stream: panic: %v", v)
		}
	}()
	for !st.ended {
		bp := st.next()
		st.deadline()
		k, werr := w.Write(*bp)
		putBatch(bp)
		n += int64(k)
		if werr != nil {
			st.ended = true
			return n, werr
		}
	}
	return n, nil
}

// Read is the stream for callers that read: it blocks for the next batch.
func (st *sseStream) Read(p []byte) (int, error) {
	if len(st.pending) == 0 {
		if st.ended {
			return 0, io.EOF
		}
		bp := st.next()
		st.pending = append(st.pending[:0], *bp...)
		putBatch(bp)
		st.deadline()
	}
	n := copy(p, st.pending)
	st.pending = st.pending[n:]
	return n, nil
}

// deadline gives the coming write fasthttp's WriteTimeout of its own.
// Moving a deadline costs a runtime timer update: with ten thousand
// streams written per event it is renewed only once a quarter of it has
// passed, so every write still has at least three quarters of it.
func (st *sseStream) deadline() {
	now := time.Now()
	st.lastData = now
	if st.conn == nil || now.Before(st.renewAt) {
		return
	}
	wt := st.h.s.o.WriteTimeout
	_ = st.conn.SetWriteDeadline(now.Add(wt))
	st.renewAt = now.Add(wt / 4)
}

// next blocks until there is something to write and returns it in a
// pooled buffer: the opening lines, queued events, a ping, or the final
// event (then ended). No buffer is held while it waits.
func (st *sseStream) next() *[]byte {
	h, c := st.h, st.c
	var first *frame
	ping, final := false, false
	if st.started {
		select {
		case <-c.done: // a dropped client gets its verdict before its backlog
			final = true
		default:
		}
		for !final && first == nil && !ping {
			select {
			case first = <-c.ch:
			case <-st.timer.C:
				// The timer runs from the last ping, not the last write:
				// ping only when the stream has been idle a whole interval.
				if idle := time.Since(st.lastData); idle < h.o.Heartbeat {
					st.timer.Reset(h.o.Heartbeat - idle)
				} else {
					ping = true
				}
			case <-c.done:
				final = true
			}
		}
	}
	bp := batchBufs.Get().(*[]byte)
	b := (*bp)[:0]
	switch {
	case !st.started:
		st.started = true
		st.timer = time.NewTimer(h.o.Heartbeat)
		b = append(b, ": shoal event stream\nretry: "...)
		b = strconv.AppendInt(b, h.o.Retry.Milliseconds(), 10)
		*bp = append(b, "\n\n"...)
		return bp
	case final:
		*bp = st.final(b)
		return bp
	case ping:
		st.timer.Reset(h.o.Heartbeat)
		b = append(b, ": ping\n\n"...)
	default:
		// Whatever queued meanwhile leaves in the same write.
		b = append(b, first.b...)
		n := 1
	more:
		for len(b) < maxBatch {
			select {
			case f := <-c.ch:
				b = append(b, f.b...)
				n++
			default:
				break more
			}
		}
		h.sent.Add(n)
	}
	*bp = b
	return bp
}

// final is the last event of a stream that the server ends.
func (st *sseStream) final(b []byte) []byte {
	st.ended = true
	st.timer.Stop()
	switch st.c.reason {
	case dropSlow:
		b = append(b, `event: dropped`+"\n"+`data: {"reason":"`+dropSlow+`","buffer":`...)
		b = strconv.AppendInt(b, int64(st.h.o.Buffer), 10)
		b = append(b, "}\n\n"...)
	default:
		b = append(b, `event: shutdown`+"\n"+`data: {"reason":"`+dropShutdown+`"}`+"\n\n"...)
	}
	return b
}

// Close is called by fasthttp when the response is done or abandoned.
func (st *sseStream) Close() error {
	st.closed.Do(func() {
		st.c.stop("closed")
		st.h.remove(st.c)
		if st.timer != nil {
			st.timer.Stop()
		}
		st.h.stats.observe(fasthttp.StatusOK, st.start)
	})
	return nil
}
