package zsock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/go-zeromq/zmq4/transport"
)

// transportName is the zmq4 transport Shoal registers; users write tcp://
// and never see it.
const transportName = "shoaltcp"

var (
	registerOnce sync.Once
	registerErr  error
)

func register() error {
	registerOnce.Do(func() {
		registerErr = zmq4.RegisterTransport(transportName, tcpTransport{})
	})
	return registerErr
}

// stateKey carries a socket's *sockState through the context zmq4 hands
// its transport: zmq4 derives every socket's context from the one given to
// NewRouter & co., and passes it to Transport.Listen and Transport.Dial.
type stateKey struct{}

// sockState is what one socket's transport connections share.
type sockState struct {
	typ  Type
	ztyp zmq4.SocketType
	o    Options
	log  *slog.Logger

	everConn atomic.Bool // a connection has been given to zmq4

	dialDeadline time.Time // dialers: TCP connect and handshake deadline

	// done is closed when the socket shuts down and when a dialer's
	// connection ends.
	done     chan struct{}
	doneOnce sync.Once

	// direct: Socket.Send frames messages itself and writes them into
	// the target conn (conn.writeMsg) instead of calling zmq4's Send. True
	// for ROUTER listeners and DEALER dialers; zmq4 then writes nothing to
	// their conns after its handshake (see conn.writeMsg).
	direct bool

	// mu guards the fields below. Send looks identities up under RLock;
	// everything else (connect, disconnect, close) takes it exclusively.
	mu     sync.RWMutex
	conns  map[*conn]struct{} // open connections of this socket
	ids    map[string]*conn   // ROUTER listeners: routing identities of live peers
	dialed *conn
	closed bool
}

func newSockState(typ Type, o Options, dialer bool) *sockState {
	return &sockState{
		typ:    typ,
		ztyp:   typ.zmq(),
		o:      o,
		log:    o.Logger,
		direct: typ == Router && !dialer || typ == Dealer && dialer,
		done:   make(chan struct{}),
		conns:  make(map[*conn]struct{}),
		ids:    make(map[string]*conn),
	}
}

// lookup returns the live connection whose routing identity is id, or nil.
// It does not allocate.
func (st *sockState) lookup(id []byte) *conn {
	st.mu.RLock()
	c := st.ids[string(id)]
	st.mu.RUnlock()
	return c
}

// track registers a new connection; it reports false (and the caller
// closes the conn) once the socket is closing.
func (st *sockState) track(c *conn) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.closed {
		return false
	}
	st.conns[c] = struct{}{}
	return true
}

// claim reserves the peer's routing identity on a ROUTER listener (a peer
// that sent none has been given one: see inbound.routeID). Like libzmq
// (without ROUTER_HANDOVER), a second connection claiming an identity that
// is still connected is refused: zmq4 would otherwise deliver messages
// meant for one peer to both. The table is also what Send routes by.
func (st *sockState) claim(c *conn) bool {
	if st.typ != Router || len(c.in.routeID) == 0 {
		return true
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if _, dup := st.ids[string(c.in.routeID)]; dup {
		return false
	}
	st.ids[string(c.in.routeID)] = c
	c.claimed = true
	return true
}

// handed records that zmq4 now owns c.
func (st *sockState) handed() {
	st.everConn.Store(true)
	establishedTotal.Inc()
}

func (st *sockState) markDone() { st.doneOnce.Do(func() { close(st.done) }) }

func (st *sockState) isDone() bool {
	select {
	case <-st.done:
		return true
	default:
		return false
	}
}

// connClosed runs once per conn, from conn.Close.
func (st *sockState) connClosed(c *conn) {
	st.mu.Lock()
	delete(st.conns, c)
	if c.claimed {
		delete(st.ids, string(c.in.routeID))
		c.claimed = false
	}
	dialed := st.dialed == c
	st.mu.Unlock()

	if dialed {
		st.markDone()
	}
	if st.typ == Router && c.live.Load() && len(c.in.identity) > 0 && st.o.OnDisconnect != nil {
		// Own goroutine: Close may run under zmq4's socket locks (a write
		// timeout inside Send), and a callback that sends would deadlock.
		go st.o.OnDisconnect(c.in.identity)
	}
}

// closeAll closes every connection of the socket and refuses new ones.
func (st *sockState) closeAll() {
	st.mu.Lock()
	st.closed = true
	cs := make([]*conn, 0, len(st.conns))
	for c := range st.conns {
		cs = append(cs, c)
	}
	st.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
}

// tcpTransport is the zmq4 transport: TCP, with every connection wrapped.
type tcpTransport struct{}

var _ transport.Transport = tcpTransport{}

func stateFrom(ctx context.Context) (*sockState, error) {
	st, _ := ctx.Value(stateKey{}).(*sockState)
	if st == nil {
		return nil, errors.New("zsock: the " + transportName + " transport is only usable through zsock.Listen and zsock.Dial")
	}
	return st, nil
}

// Dial makes the one TCP connection of a dialing socket. zmq4 runs the
// handshake on it right after; the read deadline set here bounds that
// handshake and is cleared once the peer's READY is in.
func (tcpTransport) Dial(ctx context.Context, _ transport.Dialer, addr string) (net.Conn, error) {
	st, err := stateFrom(ctx)
	if err != nil {
		return nil, err
	}
	d := net.Dialer{Deadline: st.dialDeadline}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	dialedTotal.Inc()
	if st.o.wrapRaw != nil {
		raw = st.o.wrapRaw(raw)
	}
	_ = raw.SetReadDeadline(st.dialDeadline)
	c := newConn(raw, st, false)
	st.mu.Lock()
	st.dialed = c
	st.mu.Unlock()
	if !st.track(c) {
		c.Close()
		return nil, ErrClosed
	}
	return c, nil
}

// Listen starts a listener whose Accept only returns connections that
// have completed the handshake input (greeting and READY validated).
func (tcpTransport) Listen(ctx context.Context, addr string) (net.Listener, error) {
	st, err := stateFrom(ctx)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	l := &listener{
		st:      st,
		ln:      ln,
		ready:   make(chan *conn, 64),
		closing: make(chan struct{}),
	}
	l.wg.Add(1)
	go l.acceptLoop()
	return l, nil
}

// Addr maps "host:port" the way zmq4's own tcp transport does.
func (tcpTransport) Addr(ep string) (string, error) {
	host, port, err := net.SplitHostPort(ep)
	if err != nil {
		return "", err
	}
	switch port {
	case "", "*":
		port = "0"
	}
	switch host {
	case "", "*":
		host = "0.0.0.0"
	}
	return net.JoinHostPort(host, port), nil
}

// listener runs each connection's handshake input in its own goroutine
// under HandshakeTimeout, so a silent or slow client never holds up zmq4's
// accept loop (which performs handshakes one at a time, without a timeout).
type listener struct {
	st      *sockState
	ln      net.Listener
	ready   chan *conn // handshake input complete, waiting for Accept
	closing chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
}

func (l *listener) acceptLoop() {
	defer l.wg.Done()
	var backoff time.Duration
	for {
		raw, err := l.ln.Accept()
		if err != nil {
			select {
			case <-l.closing:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and friends: back off instead of spinning (zmq4's
			// own accept loop spins on errors).
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.st.log.Warn("zsock: accept failed", "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-l.closing:
				return
			}
			continue
		}
		backoff = 0
		acceptedTotal.Inc()
		if l.st.o.wrapRaw != nil {
			raw = l.st.o.wrapRaw(raw)
		}
		c := newConn(raw, l.st, true)
		if !l.st.track(c) {
			c.Close()
			continue
		}
		l.wg.Add(1)
		go l.handshake(c)
	}
}

// handshake writes our greeting, then reads and validates the peer's
// greeting and READY (ZMTP NULL peers send READY without waiting for ours).
func (l *listener) handshake(c *conn) {
	defer l.wg.Done()
	_ = c.raw.SetDeadline(time.Now().Add(l.st.o.HandshakeTimeout))
	if _, err := c.raw.Write(ourGreeting[:]); err != nil {
		c.fail(c.in.ioErr(err))
		return
	}
	if err := c.in.handshake(); err != nil {
		c.fail(err)
		return
	}
	_ = c.raw.SetDeadline(time.Time{})
	if !l.st.claim(c) {
		c.fail(protoErr(ReasonDuplicateIdentity, "identity %q is already connected", c.in.identity))
		return
	}
	select {
	case l.ready <- c:
	case <-l.closing:
		c.Close()
	}
}

// Accept hands zmq4 the next connection whose handshake input is complete.
// It only fails once the listener is closed.
func (l *listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		l.st.handed()
		// zmq4 never closes a connection whose handshake it rejects: if it
		// does not start reading after READY in time, close it ourselves.
		c.estTimer = time.AfterFunc(l.st.o.HandshakeTimeout, func() {
			if !c.live.Load() && !c.closed.Load() {
				c.fail(protoErr(ReasonHandshakeRejected, "zmq4 did not take the connection"))
			}
		})
		return c, nil
	case <-l.closing:
		return nil, net.ErrClosed
	}
}

// Close stops accepting, closes connections still in their handshake and
// waits for the listener's goroutines.
func (l *listener) Close() error {
	var err error
	l.once.Do(func() {
		close(l.closing)
		err = l.ln.Close()
		l.st.closeAll()
		l.wg.Wait()
		for {
			select {
			case c := <-l.ready:
				c.Close()
				continue
			default:
			}
			break
		}
	})
	return err
}

func (l *listener) Addr() net.Addr { return l.ln.Addr() }

func (l *listener) String() string { return fmt.Sprintf("zsock listener %s", l.ln.Addr()) }
