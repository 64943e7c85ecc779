package broker

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-dev/shoal/internal/link"
	"github.com/shoal-dev/shoal/internal/zsock"
	"github.com/shoal-dev/shoal/wire"
)

// ---- publishing ----

// PublisherOptions configure a Publisher.
type PublisherOptions struct {
	Endpoints []string      // the events_in endpoint of every broker
	Heartbeat time.Duration // as the brokers' heartbeat
	Liveness  int
	Transport zsock.Options
	Logger    *slog.Logger
}

// Publisher sends events to the brokers' forwarders. Each event goes to
// one broker (subscribers listen to all of them): the broker is chosen by
// the topic, so that one topic's events keep their order while the links
// stay up. Delivery is at most once: an event on a link that breaks is
// lost, and so is one a subscriber's full queue drops. It is safe for
// concurrent use.
type Publisher struct {
	links  []*link.Link
	prefix string // of event ids: random per publisher
	seq    atomic.Uint64
	sent   atomic.Uint64
}

// NewPublisher starts a link to every endpoint; they connect in the
// background (Ready reports when one is up).
func NewPublisher(o PublisherOptions) (*Publisher, error) {
	if len(o.Endpoints) == 0 {
		return nil, errors.New("broker: publisher needs at least one events_in endpoint")
	}
	p := &Publisher{prefix: randomHex(6) + "-"}
	for _, ep := range o.Endpoints {
		p.links = append(p.links, link.Start(link.Options{
			Endpoint:  ep,
			Heartbeat: o.Heartbeat,
			Liveness:  o.Liveness,
			Transport: o.Transport,
			Logger:    o.Logger,
			Batch:     wire.CmdEvent,
		}))
	}
	return p, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Ready reports whether at least one broker link is up.
func (p *Publisher) Ready() bool { return anyUp(p.links) }

// Published counts events handed to a link.
func (p *Publisher) Published() uint64 { return p.sent.Load() }

// Close sends what is queued (for at most a second) and stops the links.
func (p *Publisher) Close() {
	for _, l := range p.links {
		l.Close()
	}
}

// NewID returns a fresh event id, unique to this publisher: its random
// prefix and a counter.
func (p *Publisher) NewID() string {
	return p.prefix + strconv.FormatUint(p.seq.Add(1), 16)
}

// Publish queues ev for the next batch to one broker. It sets ev.ID when
// empty and ev.Time when zero, and does not keep ev. It fails with
// wire.ErrTopic for an invalid topic and ErrUnavailable when no broker link
// is up; a nil error means the event left for a broker, not that anyone
// got it.
func (p *Publisher) Publish(ev *wire.Event) error {
	if !wire.ValidTopic(ev.Topic) {
		return fmt.Errorf("%w: %q", wire.ErrTopic, ev.Topic)
	}
	if ev.ID == "" {
		ev.ID = p.NewID()
	}
	if ev.Time == 0 {
		ev.Time = time.Now().UnixMicro()
	}
	env := ev.AppendMsgpack(make([]byte, 0, 64+len(ev.ID)+len(ev.Topic)+len(ev.RID)+len(ev.Body)+48*len(ev.Trace)))
	n := uint64(len(p.links))
	start := topicHash(ev.Topic)
	for i := range n {
		if l := p.links[(start+i)%n]; l.Send(env) {
			p.sent.Add(1)
			return nil
		}
	}
	return ErrUnavailable
}

// topicHash is FNV-1a: it keeps a topic on one broker.
func topicHash(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

func anyUp(links []*link.Link) bool {
	for _, l := range links {
		if l.Up() {
			return true
		}
	}
	return false
}

// ---- subscribing ----

// SubscriberOptions configure a Subscriber.
type SubscriberOptions struct {
	Endpoints []string      // the events_out endpoint of every broker
	Heartbeat time.Duration // as the brokers' heartbeat
	Liveness  int
	Transport zsock.Options
	Logger    *slog.Logger
}

// Subscriber receives events from every broker's forwarder. Each process
// needs one, however many handlers it has: a topic prefix that several
// handlers want is subscribed once at each broker.
//
// Subscriptions are sent to a broker on every new connection, and again
// when the broker answers DISCONNECT (it restarted, or forgot a silent
// subscriber), so they survive broker restarts. Events that were on their
// way then are lost: delivery is at most once.
type Subscriber struct {
	log       *slog.Logger
	links     []*subLink
	wake      chan struct{}
	stop      chan struct{}
	done      sync.WaitGroup
	closeOnce sync.Once

	mu   sync.RWMutex // guards subs; never held while a handler runs
	subs map[string][]*subHandle

	received, malformed atomic.Uint64
	resyncs             atomic.Uint64
}

type subHandle struct {
	prefix string
	fn     func(*wire.Event)
}

type subLink struct {
	l      *link.Link
	mu     sync.Mutex // guards sent and resync; taken by the syncer and link callbacks
	sent   map[string]struct{}
	resync bool
}

// NewSubscriber starts a link to every endpoint.
func NewSubscriber(o SubscriberOptions) (*Subscriber, error) {
	if len(o.Endpoints) == 0 {
		return nil, errors.New("broker: subscriber needs at least one events_out endpoint")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	s := &Subscriber{log: o.Logger, wake: make(chan struct{}, 1), stop: make(chan struct{}),
		subs: make(map[string][]*subHandle)}
	for _, ep := range o.Endpoints {
		sl := &subLink{sent: make(map[string]struct{}), resync: true}
		s.links = append(s.links, sl)
		sl.l = link.Start(link.Options{
			Endpoint:  ep,
			Heartbeat: o.Heartbeat,
			Liveness:  o.Liveness,
			Transport: o.Transport,
			Logger:    o.Logger,
			OnUp:      func(*link.Link) { s.resync(sl) },
			Handle:    func(l *link.Link, m wire.Message) { s.handle(sl, l, m) },
		})
	}
	s.done.Add(1)
	go s.syncer()
	return s, nil
}

// Ready reports whether at least one broker link is up.
func (s *Subscriber) Ready() bool {
	for _, sl := range s.links {
		if sl.l.Up() {
			return true
		}
	}
	return false
}

// SubscriberStats count what a Subscriber received.
type SubscriberStats struct {
	Received  uint64 // event envelopes decoded
	Malformed uint64 // event envelopes that did not decode (dropped)
	Resyncs   uint64 // times the subscriptions were sent to a broker afresh
}

// Stats returns the subscriber's counters.
func (s *Subscriber) Stats() SubscriberStats {
	return SubscriberStats{Received: s.received.Load(), Malformed: s.malformed.Load(), Resyncs: s.resyncs.Load()}
}

// Subscribe calls fn with every event whose topic matches prefix by whole
// segments (wire.TopicMatch: "task" gets "task.42.done"; "" gets
// everything). fn runs on a link's receive goroutine, one per broker, so
// it may run concurrently with itself; it must not block (hand the event
// to a queue of your own). The event is shared with the other handlers
// that get it: read it, do not modify it. The returned function cancels
// the subscription; it may be called from fn.
func (s *Subscriber) Subscribe(prefix string, fn func(ev *wire.Event)) (cancel func(), err error) {
	if !wire.ValidTopicPrefix(prefix) {
		return nil, fmt.Errorf("%w: %q", wire.ErrTopic, prefix)
	}
	h := &subHandle{prefix: prefix, fn: fn}
	s.mu.Lock()
	old := s.subs[prefix]
	// Copy on write: handle() iterates a slice it read under the lock.
	s.subs[prefix] = append(old[:len(old):len(old)], h)
	s.mu.Unlock()
	if len(old) == 0 {
		s.kick()
	}
	return sync.OnceFunc(func() { s.unsubscribe(h) }), nil
}

func (s *Subscriber) unsubscribe(h *subHandle) {
	s.mu.Lock()
	old := s.subs[h.prefix]
	hs := make([]*subHandle, 0, len(old))
	for _, x := range old {
		if x != h {
			hs = append(hs, x)
		}
	}
	if len(hs) == 0 {
		delete(s.subs, h.prefix)
	} else {
		s.subs[h.prefix] = hs
	}
	s.mu.Unlock()
	if len(hs) == 0 {
		s.kick()
	}
}

// Close tells every broker it is leaving and stops the links. Calling it
// again does nothing.
func (s *Subscriber) Close() {
	s.closeOnce.Do(func() {
		close(s.stop)
		s.done.Wait()
		bye := wire.Frames(wire.CmdDisconnect)
		for _, sl := range s.links {
			_ = sl.l.SendNow(bye)
			sl.l.Close()
		}
	})
}

func (s *Subscriber) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// resync makes the syncer send every subscription to sl's broker again.
func (s *Subscriber) resync(sl *subLink) {
	sl.mu.Lock()
	sl.resync = true
	sl.mu.Unlock()
	s.kick()
}

// handle runs on the receive goroutine of sl's link l.
func (s *Subscriber) handle(sl *subLink, l *link.Link, m wire.Message) {
	switch m.Cmd {
	case wire.CmdEvent:
		n := 0
		for _, env := range m.Body {
			n += len(env)
			s.deliver(env)
		}
		// Credit what we took in: the broker sends more only as we do.
		_ = l.SendNow(wire.Frames(wire.CmdCredit, wire.AppendCredit(make([]byte, 0, 9), uint64(n))))
	case wire.CmdDisconnect:
		// The broker does not know us: it restarted or forgot us.
		s.resync(sl)
	}
}

func (s *Subscriber) deliver(env []byte) {
	ev := new(wire.Event)
	if err := ev.UnmarshalMsgpack(env); err != nil {
		s.malformed.Add(1)
		s.log.Warn("dropping malformed event from broker", "err", err)
		return
	}
	s.received.Add(1)
	var buf [8][]*subHandle
	lists := buf[:0]
	s.mu.RLock()
	wire.TopicPrefixes(ev.Topic, func(p string) bool {
		if hs := s.subs[p]; len(hs) > 0 {
			lists = append(lists, hs)
		}
		return true
	})
	s.mu.RUnlock()
	for _, hs := range lists {
		for _, h := range hs {
			s.call(h, ev)
		}
	}
}

// call runs one handler; a panic is logged, not fatal to the link.
func (s *Subscriber) call(h *subHandle, ev *wire.Event) {
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("event handler panicked", "prefix", h.prefix, "topic", ev.Topic, "panic", v,
				"stack", string(debug.Stack()))
		}
	}()
	h.fn(ev)
}

// syncer sends SUBSCRIBE and UNSUBSCRIBE so that each broker holds the
// prefixes wanted now. It is the only sender of both, so they never
// overtake each other.
func (s *Subscriber) syncer() {
	defer s.done.Done()
	for {
		select {
		case <-s.wake:
		case <-s.stop:
			return
		}
		for _, sl := range s.links {
			s.sync(sl)
		}
	}
}

func (s *Subscriber) sync(sl *subLink) {
	if !sl.l.Up() {
		return // OnUp will ask again
	}
	sl.mu.Lock()
	fresh := sl.resync
	if fresh {
		clear(sl.sent)
		sl.resync = false
	}
	var adds, dels [][]byte
	s.mu.RLock()
	for p := range s.subs {
		if _, ok := sl.sent[p]; !ok {
			adds = append(adds, []byte(p))
		}
	}
	for p := range sl.sent {
		if _, ok := s.subs[p]; !ok {
			dels = append(dels, []byte(p))
		}
	}
	s.mu.RUnlock()
	sl.mu.Unlock()
	if fresh {
		s.resyncs.Add(1)
	}

	ok := true
	if fresh && len(adds) == 0 {
		// An empty SUBSCRIBE makes us known, so heartbeats are answered.
		ok = sl.l.SendNow(wire.Frames(wire.CmdSubscribe)) == nil
	}
	for rest := adds; ok && len(rest) > 0; {
		k := min(len(rest), wire.MaxBatch)
		ok = sl.l.SendNow(wire.Frames(wire.CmdSubscribe, rest[:k]...)) == nil
		rest = rest[k:]
	}
	for rest := dels; ok && len(rest) > 0; {
		k := min(len(rest), wire.MaxBatch)
		ok = sl.l.SendNow(wire.Frames(wire.CmdUnsubscribe, rest[:k]...)) == nil
		rest = rest[k:]
	}
	sl.mu.Lock()
	defer sl.mu.Unlock()
	if !ok {
		sl.resync = true // the link is going down; OnUp kicks us again
		return
	}
	for _, p := range adds {
		sl.sent[string(p)] = struct{}{}
	}
	for _, p := range dels {
		delete(sl.sent, string(p))
	}
}
