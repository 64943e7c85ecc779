package broker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"sort"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/shoal-dev/shoal/internal/zsock"
	"github.com/shoal-dev/shoal/wire"
)

// The event forwarder: publishers send EVENT messages to the events_in
// ROUTER, subscribers hold a DEALER to the events_out ROUTER, say which
// topic prefixes they want with SUBSCRIBE, and take events in as the
// CREDIT they grant allows. It runs in its own goroutine with its own
// sockets, apart from the request loop, so events never slow requests.
//
// Why not ZeroMQ's PUB/SUB or an XSUB/XPUB proxy: zmq4's XPUB swallows
// subscriptions (#108: the textbook proxy delivers nothing), XSUB does not
// resend subscriptions after a reconnect, and PUB queues without bound.
// Here subscriptions are Shoal messages a subscriber sends again on every
// new connection, and every queue is ours and bounded:
//
//   - each subscriber has a queue of at most Queue events and QueueBytes
//     bytes; when full, the oldest event is dropped and counted;
//   - at most Window bytes are on the wire to a subscriber before it
//     grants CREDIT for them, so a subscriber that stops reading stops
//     getting writes long before its TCP buffers fill: the ROUTER (which
//     writes to all peers under one lock) never waits on it, and the
//     others do not notice it;
//   - a subscriber silent for liveness heartbeat intervals, or whose
//     connection closes, is forgotten with its queue.
//
// Matching is by whole dot-separated segments (wire.TopicMatch): the
// forwarder looks up each prefix of an event's topic ("", "task",
// "task.42", "task.42.done") in a map, so routing costs a few map lookups
// per event however many subscriptions there are. A subscriber whose
// several prefixes match gets the event once.

// EventOptions tune the event forwarder. Zero values take the defaults.
type EventOptions struct {
	// Queue is how many events may wait for one subscriber; past it the
	// oldest is dropped. Default 4096.
	Queue int
	// QueueBytes is how many bytes of events may wait for one subscriber.
	// Default 4 MiB.
	QueueBytes int
	// Window is how many bytes may be sent to a subscriber before it
	// grants credit for them. It must stay well below what the TCP
	// buffers and the subscriber's socket absorb (about 200 KiB on
	// Linux), so that a write to a subscriber that stopped reading never
	// blocks. Default 64 KiB.
	Window int
	// WriteTimeout of the events_out socket: a subscriber that does not
	// drain its socket for this long is disconnected. Default 1s.
	WriteTimeout time.Duration
	// MaxSubscriptions is how many prefixes one subscriber may hold.
	// Default 65536.
	MaxSubscriptions int
}

// Defaults of EventOptions.
const (
	DefaultEventQueue            = 4096
	DefaultEventQueueBytes       = 4 << 20
	DefaultEventWindow           = 64 << 10
	DefaultEventWriteTimeout     = time.Second
	DefaultEventMaxSubscriptions = 65536
)

func (o *EventOptions) defaults() {
	if o.Queue <= 0 {
		o.Queue = DefaultEventQueue
	}
	if o.QueueBytes <= 0 {
		o.QueueBytes = DefaultEventQueueBytes
	}
	if o.Window <= 0 {
		o.Window = DefaultEventWindow
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = DefaultEventWriteTimeout
	}
	if o.MaxSubscriptions <= 0 {
		o.MaxSubscriptions = DefaultEventMaxSubscriptions
	}
}

// maxTopicLabels bounds the topic label values of the event counters; the
// first segments seen after that many are counted under otherTopics.
const (
	maxTopicLabels = 256
	otherTopics    = "(other)"
)

// TopicStats count one topic label's events: the label is the first
// segment of the topic ("task" for "task.42.done").
type TopicStats struct {
	Prefix   string `json:"prefix"`
	In       uint64 `json:"in"`       // events received from publishers
	Out      uint64 `json:"out"`      // deliveries sent to subscribers (one per subscriber)
	Dropped  uint64 `json:"dropped"`  // deliveries dropped: a subscriber's queue was full or it was lost
	Unrouted uint64 `json:"unrouted"` // events no subscriber wanted
}

// EventStats is a snapshot of the forwarder.
type EventStats struct {
	Subscribers     int               `json:"subscribers"`
	Subscriptions   int               `json:"subscriptions"` // prefixes, over all subscribers
	Prefixes        []string          `json:"prefixes,omitempty"`
	Queued          int               `json:"queued"` // events waiting, over all subscribers
	QueuedBytes     int               `json:"queued_bytes"`
	InFlightBytes   int               `json:"in_flight_bytes"` // sent, not yet credited
	Topics          []TopicStats      `json:"topics"`
	Malformed       map[string]uint64 `json:"malformed"`
	Unknown         uint64            `json:"unknown_subscribers"` // messages from subscribers it did not know: told DISCONNECT
	Lost            uint64            `json:"subscribers_lost"`    // dropped by silence, connection loss or a failed write
	Refused         uint64            `json:"subscriptions_refused"`
	SendErrors      uint64            `json:"send_errors"`
	CreditsReceived uint64            `json:"credits"`
}

// maxListedPrefixes bounds EventStats.Prefixes.
const maxListedPrefixes = 1000

type forwarder struct {
	o        EventOptions
	log      *slog.Logger
	liveness time.Duration
	in, out  zsock.Socket

	inCh    chan [][]byte
	outCh   chan [][]byte
	gone    chan string
	queries chan func(*forwarder)
	done    chan struct{} // closed when run returns

	// Loop-owned state below.
	subs   map[string]*evSub
	table  map[string][]*evSub // prefix → subscribers
	dirty  []*evSub
	labels map[string]*TopicStats
	seq    uint64
	frames [][]byte
	now    time.Time
	c      struct {
		malformed                                 map[string]uint64
		unknown, lost, refused, sendErr, credited uint64
	}
}

// evSub is one subscriber connection.
type evSub struct {
	id       []byte // ROUTER identity, never mutated
	key      string
	prefixes map[string]struct{}
	q        evQueue
	inflight int // bytes sent and not credited
	lastSeen time.Time
	mark     uint64 // seq of the last event queued, so several matching prefixes deliver once
	queued   bool   // in f.dirty
	removed  bool
}

type evEntry struct {
	env []byte
	st  *TopicStats
}

// evQueue is a ring buffer of events waiting for one subscriber.
type evQueue struct {
	buf         []evEntry
	head, n     int
	bytes       int
	limit, blim int
}

func (q *evQueue) push(e evEntry) {
	if q.n == len(q.buf) {
		nb := make([]evEntry, min(max(16, 2*len(q.buf)), q.limit))
		for i := range q.n {
			nb[i] = q.buf[(q.head+i)%len(q.buf)]
		}
		q.buf, q.head = nb, 0
	}
	q.buf[(q.head+q.n)%len(q.buf)] = e
	q.n++
	q.bytes += len(e.env)
}

func (q *evQueue) front() *evEntry { return &q.buf[q.head] }

func (q *evQueue) pop() evEntry {
	e := q.buf[q.head]
	q.buf[q.head] = evEntry{}
	q.head = (q.head + 1) % len(q.buf)
	q.n--
	q.bytes -= len(e.env)
	return e
}

// openEvents binds the event endpoints when both are configured.
func (b *Broker) openEvents() error {
	o := b.o
	if o.EventsIn == "" && o.EventsOut == "" {
		return nil
	}
	if o.EventsIn == "" || o.EventsOut == "" {
		return errors.New("events need both an events_in and an events_out endpoint")
	}
	o.Events.defaults()
	f := &forwarder{
		o:        o.Events,
		log:      b.log.With("component", "events"),
		liveness: o.Heartbeat * time.Duration(o.Liveness),
		inCh:     make(chan [][]byte, 1024),
		outCh:    make(chan [][]byte, 1024),
		gone:     make(chan string, 256),
		queries:  make(chan func(*forwarder)),
		done:     make(chan struct{}),
		subs:     make(map[string]*evSub),
		table:    make(map[string][]*evSub),
		labels:   make(map[string]*TopicStats),
	}
	f.c.malformed = make(map[string]uint64)
	var err error
	if f.in, err = zsock.Listen(zsock.Router, o.EventsIn, o.Transport); err != nil {
		return fmt.Errorf("cannot bind events_in endpoint: %w", err)
	}
	oo := o.Transport
	oo.WriteTimeout = f.o.WriteTimeout
	oo.OnDisconnect = func(id []byte) {
		select {
		case f.gone <- string(id):
		default: // the loop is behind; heartbeats will catch this one
		}
	}
	if f.out, err = zsock.Listen(zsock.Router, o.EventsOut, oo); err != nil {
		f.in.Close()
		return fmt.Errorf("cannot bind events_out endpoint: %w", err)
	}
	b.fw = f
	return nil
}

// EventsInAddr is the bound events_in address, nil without events.
func (b *Broker) EventsInAddr() net.Addr {
	if b.fw == nil {
		return nil
	}
	return b.fw.in.Addr()
}

// EventsOutAddr is the bound events_out address, nil without events.
func (b *Broker) EventsOutAddr() net.Addr {
	if b.fw == nil {
		return nil
	}
	return b.fw.out.Addr()
}

// startEvents runs the forwarder until ctx ends; the returned function
// waits for it to stop. Without events it does nothing.
func (b *Broker) startEvents(ctx context.Context) (wait func()) {
	if b.fw == nil {
		return func() {}
	}
	b.log.Info("event forwarder serving", "events_in", b.fw.in.Addr(), "events_out", b.fw.out.Addr())
	go b.fw.run(ctx)
	return func() { <-b.fw.done }
}

// eventStats adds the forwarder's snapshot to st.
func (b *Broker) eventStats(ctx context.Context, st *Stats) {
	if b.fw == nil {
		return
	}
	ch := make(chan EventStats, 1)
	select {
	case b.fw.queries <- func(f *forwarder) { ch <- f.snapshot() }:
	case <-b.fw.done:
		return
	case <-ctx.Done():
		return
	}
	es := <-ch
	st.Events = &es
	for k, v := range es.Malformed {
		if st.Malformed == nil {
			st.Malformed = make(map[string]uint64)
		}
		st.Malformed[k] += v
	}
}

func (f *forwarder) run(ctx context.Context) {
	defer close(f.done)
	stop := make(chan struct{})
	defer close(stop)
	go recvLoop(f.in, f.inCh, stop)
	go recvLoop(f.out, f.outCh, stop)
	tick := time.NewTicker(min(max(f.liveness/30, 10*time.Millisecond), 100*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			f.in.Close()
			f.out.Close()
			return
		case m := <-f.inCh:
			f.now = time.Now()
			f.fromPublisher(m)
			f.drain()
		case m := <-f.outCh:
			f.now = time.Now()
			f.fromSubscriber(m)
			f.drain()
		case id := <-f.gone:
			f.now = time.Now()
			if s := f.subs[id]; s != nil {
				f.c.lost++
				f.remove(s)
			}
		case q := <-f.queries:
			f.now = time.Now()
			q(f)
		case now := <-tick.C:
			f.now = now
			f.expire()
		}
		f.flush()
	}
}

// drain handles whatever else is waiting, so that it leaves in one flush.
func (f *forwarder) drain() {
	for range 512 {
		select {
		case m := <-f.inCh:
			f.fromPublisher(m)
		case m := <-f.outCh:
			f.fromSubscriber(m)
		default:
			return
		}
	}
}

func recvLoop(s zsock.Socket, ch chan<- [][]byte, stop <-chan struct{}) {
	for {
		m, err := s.Recv()
		if err != nil {
			if errors.Is(err, zsock.ErrClosed) {
				return
			}
			continue
		}
		select {
		case ch <- m:
		case <-stop:
			return
		}
	}
}

func (f *forwarder) malformed(reason string) { f.c.malformed[reason]++ }

// ---- publishers (events_in) ----

func (f *forwarder) fromPublisher(fr [][]byte) {
	if len(fr) < 1 {
		f.malformed("event_frames")
		return
	}
	m, err := wire.Parse(fr[1:])
	if err != nil {
		f.malformed("event_frames")
		return
	}
	switch m.Cmd {
	case wire.CmdEvent:
		for _, env := range m.Body {
			f.route(env)
		}
	case wire.CmdHeartbeat:
		f.sendNow(f.in, fr[0], wire.CmdHeartbeat)
	default:
		f.malformed("event_publisher_command")
	}
}

// route queues one event for every subscriber with a matching prefix.
func (f *forwarder) route(env []byte) {
	topic, err := wire.PeekEvent(env)
	if err != nil {
		f.malformed("event_envelope")
		return
	}
	st := f.label(topic)
	st.In++
	f.seq++
	matched := false
	wire.TopicPrefixes(topic, func(p []byte) bool {
		for _, s := range f.table[string(p)] {
			if s.mark != f.seq {
				s.mark = f.seq
				f.enqueue(s, evEntry{env: env, st: st})
				matched = true
			}
		}
		return true
	})
	if !matched {
		st.Unrouted++
	}
}

// label returns the counters of topic's first segment.
func (f *forwarder) label(topic []byte) *TopicStats {
	first := topic
	for i, c := range topic {
		if c == '.' {
			first = topic[:i]
			break
		}
	}
	if st := f.labels[string(first)]; st != nil {
		return st
	}
	name := string(first)
	if len(f.labels) >= maxTopicLabels {
		name = otherTopics
		if st := f.labels[name]; st != nil {
			return st
		}
	}
	st := &TopicStats{Prefix: name}
	f.labels[name] = st
	return st
}

// enqueue adds e to s's queue, dropping the oldest events to make room.
func (f *forwarder) enqueue(s *evSub, e evEntry) {
	if len(e.env) > f.o.QueueBytes {
		e.st.Dropped++
		return
	}
	for s.q.n > 0 && (s.q.n >= f.o.Queue || s.q.bytes+len(e.env) > f.o.QueueBytes) {
		s.q.pop().st.Dropped++
	}
	s.q.push(e)
	f.markDirty(s)
}

func (f *forwarder) markDirty(s *evSub) {
	if !s.queued {
		s.queued = true
		f.dirty = append(f.dirty, s)
	}
}

// ---- subscribers (events_out) ----

func (f *forwarder) fromSubscriber(fr [][]byte) {
	if len(fr) < 1 {
		f.malformed("event_frames")
		return
	}
	m, err := wire.Parse(fr[1:])
	if err != nil {
		f.malformed("event_frames")
		return
	}
	id := fr[0]
	s := f.subs[string(id)]
	if s != nil {
		s.lastSeen = f.now
	}
	switch m.Cmd {
	case wire.CmdSubscribe:
		if s == nil {
			s = &evSub{id: id, key: string(id), prefixes: make(map[string]struct{}), lastSeen: f.now,
				q: evQueue{limit: f.o.Queue}}
			f.subs[s.key] = s
		}
		for _, p := range m.Body {
			f.subscribe(s, p)
		}
	case wire.CmdUnsubscribe:
		if s == nil {
			f.unknown(id)
			return
		}
		for _, p := range m.Body {
			f.unsubscribe(s, string(p))
		}
	case wire.CmdCredit:
		if s == nil {
			f.unknown(id)
			return
		}
		n, err := wire.ParseCredit(m.Body[0])
		if err != nil {
			f.malformed("event_credit")
			return
		}
		f.c.credited++
		s.inflight = max(0, s.inflight-int(min(n, math.MaxInt32)))
		if s.q.n > 0 {
			f.markDirty(s)
		}
	case wire.CmdHeartbeat:
		if s == nil {
			f.unknown(id)
			return
		}
		f.sendNow(f.out, id, wire.CmdHeartbeat)
	case wire.CmdDisconnect:
		if s != nil {
			f.remove(s)
		}
	default:
		f.malformed("event_subscriber_command")
	}
}

// unknown tells a subscriber we do not know (we restarted, or forgot it)
// to send its subscriptions again.
func (f *forwarder) unknown(id []byte) {
	f.c.unknown++
	f.sendNow(f.out, id, wire.CmdDisconnect)
}

func (f *forwarder) subscribe(s *evSub, p []byte) {
	if !wire.ValidTopicPrefix(string(p)) {
		f.malformed("event_prefix")
		return
	}
	if _, dup := s.prefixes[string(p)]; dup {
		return
	}
	if len(s.prefixes) >= f.o.MaxSubscriptions {
		f.c.refused++
		return
	}
	key := string(p)
	s.prefixes[key] = struct{}{}
	f.table[key] = append(f.table[key], s)
}

func (f *forwarder) unsubscribe(s *evSub, p string) {
	if _, ok := s.prefixes[p]; !ok {
		return
	}
	delete(s.prefixes, p)
	subs := f.table[p]
	for i, x := range subs {
		if x == s {
			subs[i] = subs[len(subs)-1]
			subs[len(subs)-1] = nil
			subs = subs[:len(subs)-1]
			break
		}
	}
	if len(subs) == 0 {
		delete(f.table, p)
	} else {
		f.table[p] = subs
	}
}

// remove forgets s; what it had queued counts as dropped.
func (f *forwarder) remove(s *evSub) {
	if s.removed {
		return
	}
	s.removed = true
	for p := range s.prefixes {
		f.unsubscribe(s, p)
	}
	for s.q.n > 0 {
		s.q.pop().st.Dropped++
	}
	s.q.buf = nil
	delete(f.subs, s.key)
}

// expire forgets subscribers silent for liveness intervals.
func (f *forwarder) expire() {
	for _, s := range f.subs {
		if f.now.Sub(s.lastSeen) > f.liveness {
			f.log.Info("subscriber silent; forgetting it", "subscriptions", len(s.prefixes), "queued", s.q.n)
			f.c.lost++
			f.remove(s)
		}
	}
}

// ---- output ----

// flush sends each dirty subscriber what its window allows, in batches.
func (f *forwarder) flush() {
	for _, s := range f.dirty {
		s.queued = false
		for !s.removed && s.q.n > 0 {
			f.frames = wire.AppendFrames(append(f.frames[:0], s.id), wire.CmdEvent)
			sent := 0
			for s.q.n > 0 && len(f.frames)-3 < wire.MaxBatch {
				e := s.q.front()
				if s.inflight+sent > 0 && s.inflight+sent+len(e.env) > f.o.Window {
					break // one event larger than the window goes alone
				}
				f.frames = append(f.frames, e.env)
				sent += len(e.env)
				s.q.pop().st.Out++
			}
			if len(f.frames) == 3 {
				break // window full: wait for credit
			}
			s.inflight += sent
			if err := f.out.Send(f.frames); err != nil {
				// zsock dropped the connection (it would not drain).
				f.c.sendErr++
				f.c.lost++
				f.log.Debug("event send failed; forgetting subscriber", "err", err)
				f.remove(s)
			}
		}
	}
	clear(f.frames)
	clear(f.dirty)
	f.dirty = f.dirty[:0]
}

func (f *forwarder) sendNow(s zsock.Socket, id []byte, cmd wire.Command) {
	f.frames = wire.AppendFrames(append(f.frames[:0], id), cmd)
	_ = s.Send(f.frames)
	clear(f.frames)
}

// ---- stats ----

func (f *forwarder) snapshot() EventStats {
	es := EventStats{Subscribers: len(f.subs), Malformed: make(map[string]uint64, len(f.c.malformed)),
		Unknown: f.c.unknown, Lost: f.c.lost, Refused: f.c.refused, SendErrors: f.c.sendErr, CreditsReceived: f.c.credited}
	for k, v := range f.c.malformed {
		es.Malformed[k] = v
	}
	for _, s := range f.subs {
		es.Subscriptions += len(s.prefixes)
		es.Queued += s.q.n
		es.QueuedBytes += s.q.bytes
		es.InFlightBytes += s.inflight
	}
	for p := range f.table {
		if len(es.Prefixes) >= maxListedPrefixes {
			break
		}
		es.Prefixes = append(es.Prefixes, p)
	}
	sort.Strings(es.Prefixes)
	for _, st := range f.labels {
		es.Topics = append(es.Topics, *st)
	}
	sort.Slice(es.Topics, func(i, j int) bool { return es.Topics[i].Prefix < es.Topics[j].Prefix })
	return es
}

// Topic returns the counters of one topic label, zero if none.
func (es *EventStats) Topic(prefix string) TopicStats {
	for _, t := range es.Topics {
		if t.Prefix == prefix {
			return t
		}
	}
	return TopicStats{Prefix: prefix}
}

// writePrometheus writes the event metrics; es may be nil.
func (es *EventStats) writePrometheus(w io.Writer, broker string) {
	if es == nil {
		return
	}
	for _, t := range es.Topics {
		l := fmt.Sprintf(`{broker=%q,prefix=%q}`, broker, t.Prefix)
		metrics.WriteCounterUint64(w, "shoal_broker_events_in_total"+l, t.In)
		metrics.WriteCounterUint64(w, "shoal_broker_events_out_total"+l, t.Out)
		metrics.WriteCounterUint64(w, "shoal_broker_events_dropped_total"+l, t.Dropped)
		metrics.WriteCounterUint64(w, "shoal_broker_events_unrouted_total"+l, t.Unrouted)
	}
	b := fmt.Sprintf(`{broker=%q}`, broker)
	metrics.WriteGaugeUint64(w, "shoal_broker_event_subscribers"+b, uint64(es.Subscribers))
	metrics.WriteGaugeUint64(w, "shoal_broker_event_subscriptions"+b, uint64(es.Subscriptions))
	metrics.WriteGaugeUint64(w, "shoal_broker_event_queued"+b, uint64(es.Queued))
	metrics.WriteGaugeUint64(w, "shoal_broker_event_queued_bytes"+b, uint64(es.QueuedBytes))
	metrics.WriteGaugeUint64(w, "shoal_broker_event_in_flight_bytes"+b, uint64(es.InFlightBytes))
	metrics.WriteCounterUint64(w, "shoal_broker_event_subscribers_lost_total"+b, es.Lost)
	metrics.WriteCounterUint64(w, "shoal_broker_event_unknown_subscribers_total"+b, es.Unknown)
	metrics.WriteCounterUint64(w, "shoal_broker_event_subscriptions_refused_total"+b, es.Refused)
}
