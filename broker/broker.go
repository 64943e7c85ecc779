package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"time"

	"github.com/shoal-dev/shoal/internal/zsock"
	"github.com/shoal-dev/shoal/wire"
)

// Options configure a Broker. The cli fills them from shoal.yaml.
type Options struct {
	Name           string        // for logs and metrics labels
	Clients        string        // endpoint to bind for clients, e.g. tcp://127.0.0.1:5555
	Workers        string        // endpoint to bind for workers
	Admin          string        // host:port of the admin HTTP endpoint; "" = none
	Heartbeat      time.Duration // default heartbeat interval of peers
	Liveness       int           // silent intervals before a worker is dead
	QueueLimit     int           // queued requests per service before "overloaded"
	DefaultTimeout time.Duration // deadline for requests that carry none
	Transport      zsock.Options
	EventsIn       string       // endpoint to bind for event publishers; "" = no events
	EventsOut      string       // endpoint to bind for event subscribers; "" = no events
	Events         EventOptions // event forwarder tuning (events.go)
	Logger         *slog.Logger
}

func (o *Options) defaults() {
	if o.Heartbeat <= 0 {
		o.Heartbeat = time.Second
	}
	if o.Liveness < 2 {
		o.Liveness = 3
	}
	if o.QueueLimit <= 0 {
		o.QueueLimit = 1024
	}
	if o.DefaultTimeout <= 0 {
		o.DefaultTimeout = 5 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Name == "" {
		o.Name = "b0"
	}
}

// Broker routes requests from clients to workers by service name. See the
// package documentation for its contract. All routing state belongs to the
// goroutine running Run; other goroutines only feed it through channels.
type Broker struct {
	o       Options
	log     *slog.Logger
	clients zsock.Socket
	workers zsock.Socket
	admin   net.Listener
	fw      *forwarder // event forwarder, nil without events (events.go)

	clientIn chan [][]byte
	workerIn chan [][]byte
	gone     chan string           // worker identities whose TCP connection ended
	queries  chan func(*Broker)    // run on the loop: stats, admin actions
	deadSig  chan deadWorkerNotice // supervisor: "this process died"

	// Loop-owned state below.
	services map[string]*service
	wk       map[string]*worker // by identity
	cl       map[string]*peer   // clients by identity
	live     map[uint64]*request
	dirty    []*peer // peers with envelopes waiting to be flushed
	frames   [][]byte
	now      time.Time
	nowMS    int64
	c        counters
}

type deadWorkerNotice struct {
	process string
	reply   chan int
}

// counters are broker-wide; per-service ones live on service.
type counters struct {
	malformed    map[string]uint64 // by reason
	late         uint64            // replies for requests no longer held by that worker
	dupIDs       uint64
	noService    uint64
	workersDied  uint64
	unknownPeers uint64
}

type peer struct {
	id       []byte // ROUTER identity; zmq4 shares it across messages, never mutated
	key      string
	out      [][]byte // envelopes to flush
	cmd      wire.Command
	sock     zsock.Socket
	lastSeen time.Time
	queued   bool // in b.dirty
	pending  int  // clients: live requests from this client
}

type worker struct {
	peer
	services []*service
	credit   int
	inflight map[uint64]*request
	liveness time.Duration
	draining bool
	name     string
	process  string
}

func (w *worker) free() int { return w.credit - len(w.inflight) }

type service struct {
	name    string
	queue   deque
	workers []*worker
	next    int // where the next dispatch scan starts (round-robin on ties)
	stats   ServiceStats
}

type request struct {
	id       uint64
	client   *peer
	env      []byte
	rt       wire.Route
	svc      *service
	deadline int64 // unix ms
	attempt  int
	max      int
	worker   *worker
	answered bool // the client already got a deadline reply
}

// New binds the broker's sockets and admin listener; Run serves them.
func New(o Options) (*Broker, error) {
	o.defaults()
	b := &Broker{
		o:        o,
		log:      o.Logger.With("broker", o.Name),
		clientIn: make(chan [][]byte, 1024),
		workerIn: make(chan [][]byte, 1024),
		gone:     make(chan string, 256),
		queries:  make(chan func(*Broker)),
		deadSig:  make(chan deadWorkerNotice),
		services: make(map[string]*service),
		wk:       make(map[string]*worker),
		cl:       make(map[string]*peer),
		live:     make(map[uint64]*request),
		c:        counters{malformed: make(map[string]uint64)},
	}
	var err error
	if b.clients, err = zsock.Listen(zsock.Router, o.Clients, o.Transport); err != nil {
		return nil, fmt.Errorf("broker %s: cannot bind clients endpoint: %w", o.Name, err)
	}
	wopts := o.Transport
	wopts.OnDisconnect = func(id []byte) {
		select {
		case b.gone <- string(id):
		default: // the loop is behind; heartbeats will catch this one
		}
	}
	if b.workers, err = zsock.Listen(zsock.Router, o.Workers, wopts); err != nil {
		b.clients.Close()
		return nil, fmt.Errorf("broker %s: cannot bind workers endpoint: %w", o.Name, err)
	}
	if o.Admin != "" {
		if b.admin, err = net.Listen("tcp", o.Admin); err != nil {
			b.clients.Close()
			b.workers.Close()
			return nil, fmt.Errorf("broker %s: cannot listen on admin address: %w", o.Name, err)
		}
	}
	if err := b.openEvents(); err != nil {
		b.clients.Close()
		b.workers.Close()
		if b.admin != nil {
			b.admin.Close()
		}
		return nil, fmt.Errorf("broker %s: %w", o.Name, err)
	}
	return b, nil
}

// ClientsAddr is the bound clients endpoint address.
func (b *Broker) ClientsAddr() net.Addr { return b.clients.Addr() }

// WorkersAddr is the bound workers endpoint address.
func (b *Broker) WorkersAddr() net.Addr { return b.workers.Addr() }

// AdminAddr is the admin listener's address, or nil.
func (b *Broker) AdminAddr() net.Addr {
	if b.admin == nil {
		return nil
	}
	return b.admin.Addr()
}

// Run serves until ctx ends, then closes the sockets.
func (b *Broker) Run(ctx context.Context) error {
	done := make(chan struct{})
	defer close(done)
	go b.recv(b.clients, b.clientIn, done)
	go b.recv(b.workers, b.workerIn, done)
	if b.admin != nil {
		srv := b.adminServer()
		go srv.Serve(b.admin)
		defer srv.Close()
	}
	b.log.Info("broker serving", "clients", b.clients.Addr(), "workers", b.workers.Addr(), "admin", b.AdminAddr())
	eventsDone := b.startEvents(ctx)

	tick := time.NewTicker(b.tickEvery())
	defer tick.Stop()
	b.stamp()
	for {
		select {
		case <-ctx.Done():
			b.clients.Close()
			b.workers.Close()
			eventsDone()
			return nil
		case f := <-b.clientIn:
			b.stamp()
			b.fromClient(f)
			b.drain()
		case f := <-b.workerIn:
			b.stamp()
			b.fromWorker(f)
			b.drain()
		case id := <-b.gone:
			b.stamp()
			if w := b.wk[id]; w != nil {
				b.log.Info("worker connection closed", "worker", w.name, "in_flight", len(w.inflight))
				b.removeWorker(w, true)
			}
		case q := <-b.queries:
			b.stamp()
			q(b)
		case n := <-b.deadSig:
			b.stamp()
			n.reply <- b.processDied(n.process)
		case <-tick.C:
			// Read what is already waiting first: after the loop was slow,
			// heartbeats queued meanwhile must count before anyone is
			// judged silent. They are stamped with the time now, not that
			// of the loop's last turn.
			b.stamp()
			b.drain()
			b.expire()
		}
		b.flush()
	}
}

func (b *Broker) tickEvery() time.Duration {
	return min(max(b.o.Heartbeat/10, 10*time.Millisecond), 100*time.Millisecond)
}

func (b *Broker) stamp() {
	b.now = time.Now()
	b.nowMS = b.now.UnixMilli()
}

// drain handles whatever else is already waiting, so that everything that
// queued up while the loop was busy leaves in one flush.
func (b *Broker) drain() {
	for range 512 {
		select {
		case f := <-b.clientIn:
			b.fromClient(f)
		case f := <-b.workerIn:
			b.fromWorker(f)
		default:
			return
		}
	}
}

func (b *Broker) recv(s zsock.Socket, ch chan<- [][]byte, done <-chan struct{}) {
	for {
		f, err := s.Recv()
		if err != nil {
			if errors.Is(err, zsock.ErrClosed) {
				return
			}
			continue
		}
		select {
		case ch <- f:
		case <-done:
			return
		}
	}
}

func (b *Broker) malformed(reason string) { b.c.malformed[reason]++ }

// ---- clients ----

func (b *Broker) client(id []byte) *peer {
	p := b.cl[string(id)]
	if p == nil {
		p = &peer{id: id, key: string(id), cmd: wire.CmdReply, sock: b.clients}
		b.cl[p.key] = p
	}
	p.lastSeen = b.now
	return p
}

func (b *Broker) fromClient(f [][]byte) {
	if len(f) < 1 {
		b.malformed("frames")
		return
	}
	m, err := wire.Parse(f[1:])
	if err != nil {
		b.malformed("frames")
		return
	}
	switch m.Cmd {
	case wire.CmdHeartbeat:
		b.client(f[0])
		b.sendNow(b.clients, f[0], wire.CmdHeartbeat)
	case wire.CmdRequest:
		c := b.client(f[0])
		for _, env := range m.Body {
			b.accept(c, env)
		}
	default:
		b.malformed("client_command")
	}
}

// accept takes one request envelope from client c.
func (b *Broker) accept(c *peer, env []byte) {
	rt, err := wire.PeekRequest(env)
	if err != nil {
		b.malformed("envelope")
		return
	}
	if b.live[rt.ID] != nil {
		b.c.dupIDs++
		b.fail(c, rt.ID, wire.CodeBadRequest, "request id already in use at this broker")
		return
	}
	svc := b.services[string(rt.Service)]
	if svc == nil {
		b.c.noService++
		b.fail(c, rt.ID, wire.CodeNoService, "no such service: "+string(rt.Service))
		return
	}
	svc.stats.Received++
	dl := rt.Deadline
	if dl == 0 {
		dl = b.nowMS + b.o.DefaultTimeout.Milliseconds()
	}
	if dl <= b.nowMS {
		svc.stats.Expired++
		b.fail(c, rt.ID, wire.CodeDeadline, "deadline passed before dispatch")
		return
	}
	if len(svc.workers) == 0 {
		svc.stats.Dropped++
		b.fail(c, rt.ID, wire.CodeNoWorker, "no live worker serves "+svc.name)
		return
	}
	if svc.queue.len() >= b.o.QueueLimit {
		svc.stats.Dropped++
		b.fail(c, rt.ID, wire.CodeOverloaded, "queue of "+svc.name+" is full")
		return
	}
	r := &request{id: rt.ID, client: c, env: env, rt: rt, svc: svc, deadline: dl,
		attempt: max(rt.Attempt, 1), max: max(rt.MaxAttempts, 1)}
	b.live[r.id] = r
	c.pending++
	svc.queue.pushBack(r)
	b.dispatch(svc)
}

// fail answers request id of client c with an error reply.
func (b *Broker) fail(c *peer, id uint64, code wire.Code, msg string) {
	rep := wire.Reply{ID: id, Code: code, Status: code.HTTPStatus(), Error: msg}
	b.queue(c, rep.AppendMsgpack(nil))
}

// finish forgets r; the client got (or will get) its answer elsewhere.
func (b *Broker) finish(r *request) {
	delete(b.live, r.id)
	r.client.pending--
}

// ---- workers ----

func (b *Broker) fromWorker(f [][]byte) {
	if len(f) < 1 {
		b.malformed("frames")
		return
	}
	m, err := wire.Parse(f[1:])
	if err != nil {
		b.malformed("frames")
		return
	}
	w := b.wk[string(f[0])]
	if w != nil {
		w.lastSeen = b.now
	}
	switch m.Cmd {
	case wire.CmdReady:
		b.ready(f[0], w, m.Body[0])
	case wire.CmdHeartbeat:
		if w == nil {
			b.unknownWorker(f[0])
			return
		}
		b.sendNow(b.workers, f[0], wire.CmdHeartbeat)
	case wire.CmdReply:
		if w == nil {
			b.unknownWorker(f[0])
			return
		}
		for _, env := range m.Body {
			b.reply(w, env)
		}
		if w.draining && len(w.inflight) == 0 {
			b.removeWorker(w, false)
			return
		}
		for _, s := range w.services {
			b.dispatch(s)
		}
	case wire.CmdDisconnect:
		if w == nil {
			return
		}
		b.log.Info("worker draining", "worker", w.name, "in_flight", len(w.inflight))
		w.draining = true
		b.detach(w)
		if len(w.inflight) == 0 {
			b.removeWorker(w, false)
		}
	default:
		b.malformed("worker_command")
	}
}

// unknownWorker tells a peer we do not know (we restarted, or declared it
// dead) to send READY again.
func (b *Broker) unknownWorker(id []byte) {
	b.c.unknownPeers++
	b.sendNow(b.workers, id, wire.CmdDisconnect)
}

func (b *Broker) ready(id []byte, w *worker, body []byte) {
	var rd wire.Ready
	if err := rd.UnmarshalMsgpack(body); err != nil {
		b.malformed("ready")
		b.log.Warn("refusing READY", "err", err)
		return
	}
	if w != nil { // READY again: take the new offer
		b.detach(w)
	} else {
		w = &worker{peer: peer{id: id, key: string(id), cmd: wire.CmdRequest, sock: b.workers, lastSeen: b.now},
			inflight: make(map[uint64]*request)}
		b.wk[w.key] = w
	}
	w.draining = false
	w.credit = rd.Credit
	w.name, w.process = rd.Name, rd.Process
	hb := b.o.Heartbeat
	if rd.Heartbeat > 0 {
		hb = time.Duration(rd.Heartbeat) * time.Millisecond
	}
	w.liveness = hb * time.Duration(b.o.Liveness)
	w.services = w.services[:0]
	for _, name := range rd.Services {
		s := b.services[name]
		if s == nil {
			s = &service{name: name}
			b.services[name] = s
		}
		if !slices.Contains(w.services, s) {
			w.services = append(w.services, s)
			s.workers = append(s.workers, w)
		}
	}
	b.log.Info("worker ready", "worker", w.name, "process", w.process, "services", rd.Services, "credit", w.credit)
	for _, s := range w.services {
		b.dispatch(s)
	}
}

// reply passes one reply envelope from w back to its client.
func (b *Broker) reply(w *worker, env []byte) {
	id, err := wire.PeekReplyID(env)
	if err != nil {
		b.malformed("envelope")
		return
	}
	r := w.inflight[id]
	if r == nil {
		b.c.late++
		return
	}
	delete(w.inflight, id)
	r.svc.stats.Replied++
	if !r.answered {
		b.queue(r.client, env)
		b.finish(r)
	}
}

// detach stops dispatching to w; its in-flight requests stay with it.
func (b *Broker) detach(w *worker) {
	for _, s := range w.services {
		s.workers = slices.DeleteFunc(s.workers, func(x *worker) bool { return x == w })
	}
}

// removeWorker forgets w. When it died, its in-flight requests go back to
// the front of their queues while attempts and deadline allow.
func (b *Broker) removeWorker(w *worker, died bool) {
	b.detach(w)
	delete(b.wk, w.key)
	if died {
		b.c.workersDied++
	}
	if len(w.inflight) == 0 {
		return
	}
	ids := make([]uint64, 0, len(w.inflight))
	for id := range w.inflight {
		ids = append(ids, id)
	}
	slices.Sort(ids) // oldest first keeps the requeued order stable
	touched := make(map[*service]bool)
	for i := len(ids) - 1; i >= 0; i-- {
		r := w.inflight[ids[i]]
		if r.answered { // the client had its deadline reply already
			continue
		}
		switch {
		case r.attempt >= r.max:
			b.fail(r.client, r.id, wire.CodeWorkerDied, "worker died while handling the request; not retried (attempts used)")
			b.finish(r)
		case r.deadline <= b.nowMS:
			r.svc.stats.Expired++
			b.fail(r.client, r.id, wire.CodeDeadline, "deadline passed while the worker that held it died")
			b.finish(r)
		default:
			env, err := wire.SetAttempt(r.env, r.rt, r.attempt+1)
			if err != nil {
				b.fail(r.client, r.id, wire.CodeWorkerDied, "worker died and the request cannot be re-sent")
				b.finish(r)
				continue
			}
			r.attempt++
			r.env = env
			r.rt, _ = wire.PeekRequest(env)
			r.worker = nil
			r.svc.stats.Requeued++
			r.svc.queue.pushFront(r)
			touched[r.svc] = true
		}
	}
	clear(w.inflight)
	for s := range touched {
		b.dispatch(s)
	}
}

// dispatch hands queued requests of s to the workers with the most free
// credit until either runs out. The scan starts after the worker chosen
// last, so workers with equal free credit take turns: with fast replies
// every worker is often fully free, and a fixed order would send all the
// work to the first one.
func (b *Broker) dispatch(s *service) {
	for s.queue.len() > 0 {
		var best *worker
		bi, n := 0, len(s.workers)
		for k := range n {
			i := (s.next + k) % n
			if w := s.workers[i]; w.free() > 0 && (best == nil || w.free() > best.free()) {
				best, bi = w, i
			}
		}
		if best == nil {
			return
		}
		s.next = bi + 1
		r := s.queue.popFront()
		if r.deadline <= b.nowMS {
			s.stats.Expired++
			b.fail(r.client, r.id, wire.CodeDeadline, "deadline passed while queued")
			b.finish(r)
			continue
		}
		r.worker = best
		best.inflight[r.id] = r
		s.stats.Dispatched++
		b.queue(&best.peer, r.env)
	}
}

// expire runs on every tick: drop queued requests past their deadline,
// answer in-flight ones whose deadline passed, bury silent workers, forget
// idle clients.
func (b *Broker) expire() {
	for _, s := range b.services {
		if s.queue.len() == 0 {
			continue
		}
		s.queue.filter(func(r *request) bool {
			if r.deadline > b.nowMS {
				return true
			}
			s.stats.Expired++
			b.fail(r.client, r.id, wire.CodeDeadline, "deadline passed while queued")
			b.finish(r)
			return false
		})
	}
	for _, w := range b.wk {
		if b.now.Sub(w.lastSeen) > w.liveness {
			b.log.Warn("worker missed heartbeats; declaring it dead", "worker", w.name, "in_flight", len(w.inflight))
			b.removeWorker(w, true)
			continue
		}
		for _, r := range w.inflight {
			if !r.answered && r.deadline <= b.nowMS {
				// The worker still holds it (and its credit) until it
				// answers; the client hears now.
				r.answered = true
				r.svc.stats.Expired++
				b.fail(r.client, r.id, wire.CodeDeadline, "deadline passed while a worker handled it")
				r.client.pending--
				delete(b.live, r.id)
			}
		}
	}
	idle := 10 * b.o.Heartbeat * time.Duration(b.o.Liveness)
	for k, c := range b.cl {
		if c.pending == 0 && b.now.Sub(c.lastSeen) > idle {
			delete(b.cl, k)
		}
	}
}

// processDied handles the supervisor's word that a process died: every
// worker whose READY named it is dead now, without waiting for heartbeats.
func (b *Broker) processDied(process string) int {
	n := 0
	for _, w := range b.wk {
		if w.process == process {
			b.removeWorker(w, true)
			n++
		}
	}
	return n
}

// ---- output ----

// queue adds an envelope for p to the next flush.
func (b *Broker) queue(p *peer, env []byte) {
	p.out = append(p.out, env)
	if !p.queued {
		p.queued = true
		b.dirty = append(b.dirty, p)
	}
}

// flush sends each peer's waiting envelopes as one message.
func (b *Broker) flush() {
	for _, p := range b.dirty {
		for rest := p.out; len(rest) > 0; {
			k := min(len(rest), wire.MaxBatch)
			b.frames = wire.AppendFrames(append(b.frames[:0], p.id), p.cmd, rest[:k]...)
			if err := p.sock.Send(b.frames); err != nil {
				b.log.Debug("send failed", "err", err)
			}
			rest = rest[k:]
		}
		clear(p.out)
		p.out = p.out[:0]
		p.queued = false
	}
	clear(b.frames)
	clear(b.dirty)
	b.dirty = b.dirty[:0]
}

func (b *Broker) sendNow(s zsock.Socket, id []byte, cmd wire.Command) {
	b.frames = wire.AppendFrames(append(b.frames[:0], id), cmd)
	_ = s.Send(b.frames)
	clear(b.frames)
}
