package zsock

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"
)

// Type is a ZeroMQ socket type.
type Type int

// Socket types.
const (
	Router Type = iota + 1
	Dealer
	Pub
	Sub
	XPub
	XSub
)

func (t Type) zmq() zmq4.SocketType {
	switch t {
	case Router:
		return zmq4.Router
	case Dealer:
		return zmq4.Dealer
	case Pub:
		return zmq4.Pub
	case Sub:
		return zmq4.Sub
	case XPub:
		return zmq4.XPub
	case XSub:
		return zmq4.XSub
	}
	return ""
}

// String returns the ZMTP name of the type, e.g. "ROUTER".
func (t Type) String() string {
	if z := t.zmq(); z != "" {
		return string(z)
	}
	return fmt.Sprintf("Type(%d)", int(t))
}

// Defaults for Options fields left zero.
const (
	DefaultMaxFrame         = 64 << 20
	DefaultHandshakeTimeout = 5 * time.Second
	DefaultWriteTimeout     = 5 * time.Second
	DefaultReadBuffer       = 64 << 10
	DefaultWriteBuffer      = 64 << 10
	DefaultWriteQueue       = 8 << 20
)

// Options configure a socket. The zero value is usable.
type Options struct {
	// MaxFrame is the largest frame a peer may announce. A larger
	// announcement drops the connection before anything is allocated.
	// Default 64 MiB.
	MaxFrame int64
	// HandshakeTimeout bounds the ZMTP handshake: a listener drops a
	// client that has not sent its greeting and READY by then, and Dial
	// fails. Default 5s.
	HandshakeTimeout time.Duration
	// WriteTimeout: a peer that does not drain its socket for this long is
	// disconnected. Default 5s.
	WriteTimeout time.Duration
	// ReadBuffer is the size of each connection's read buffer. Default 64 KiB.
	ReadBuffer int
	// WriteBuffer is how much of a message is gathered before a write;
	// a message up to this size leaves in one write(2). Default 64 KiB.
	WriteBuffer int
	// WriteQueue bounds the bytes waiting for a peer whose socket is full.
	// A write never blocks the sender (a broker sends to every peer from
	// one goroutine): what the kernel does not take within a millisecond
	// waits here for a writer goroutine of the connection; past this many
	// bytes the peer is dropped (slow_peer). A single message larger than
	// this is still accepted when nothing waits. Default 8 MiB.
	WriteQueue int
	// Identity is this socket's ZMTP identity (what a ROUTER peer sees as
	// frames[0]); at most 255 bytes. Default: 16 fresh random bytes per
	// socket, so a reconnect (a new socket) never reuses a stale ROUTER
	// entry.
	Identity []byte
	// OnDisconnect, for a ROUTER, is called with the peer's identity (from
	// its READY) when that peer's TCP connection ends. It runs in its own
	// goroutine, possibly after Close; peers that sent no identity are not
	// reported.
	OnDisconnect func(identity []byte)
	// Logger receives connection drops (debug; write timeouts at warn) and
	// zmq4's own log lines (debug). Default slog.Default().
	Logger *slog.Logger

	wrapRaw func(net.Conn) net.Conn // tests: wraps each TCP connection
}

func (o Options) withDefaults() (Options, error) {
	if o.MaxFrame <= 0 {
		o.MaxFrame = DefaultMaxFrame
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = DefaultWriteTimeout
	}
	if o.ReadBuffer <= 0 {
		o.ReadBuffer = DefaultReadBuffer
	}
	o.ReadBuffer = max(o.ReadBuffer, 256)
	if o.WriteQueue <= 0 {
		o.WriteQueue = DefaultWriteQueue
	}
	if o.WriteBuffer <= 0 {
		o.WriteBuffer = DefaultWriteBuffer
	}
	if len(o.Identity) > maxIdentity {
		return o, fmt.Errorf("zsock: identity of %d bytes, at most %d", len(o.Identity), maxIdentity)
	}
	if len(o.Identity) == 0 {
		o.Identity = newIdentity()
	} else {
		o.Identity = append([]byte(nil), o.Identity...)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o, nil
}

// newIdentity returns 16 random bytes; the first is never zero (libzmq
// reserves identities that start with a zero byte).
func newIdentity() []byte {
	id := make([]byte, 16)
	_, _ = rand.Read(id)
	id[0] |= 0x80
	return id
}

// Errors.
var (
	// ErrClosed is returned by Send and Recv after Close.
	ErrClosed = errors.New("zsock: socket closed")
	// ErrPeerGone is returned by a dialing socket's Send and Recv once its
	// connection is lost (after any messages already received), and by a
	// ROUTER's Send when the write to that peer failed. Make a new socket.
	ErrPeerGone = errors.New("zsock: peer connection lost")
	// ErrBadMessage is returned by Send for a message with no frames (or,
	// on a ROUTER, with no frame after the identity).
	ErrBadMessage = errors.New("zsock: message needs at least one frame (ROUTER: identity and one frame)")
)

// Socket is a ZeroMQ socket. Send, Recv and Close may be called from
// several goroutines.
type Socket interface {
	// Send sends one multipart message. On a ROUTER frames[0] is the
	// identity of the peer; a message for an unknown peer is dropped
	// silently, and so is a message sent by a listening socket before any
	// peer connected. Send returns after the message is written (PUB:
	// queued) and does not keep frames. A peer that does not read for
	// WriteTimeout is disconnected and Send returns ErrPeerGone.
	Send(frames [][]byte) error
	// Recv blocks for the next message. On a ROUTER frames[0] is the
	// peer's identity (shared between messages: do not modify it); a peer
	// that sent none has one made up by zsock.
	Recv() ([][]byte, error)
	// Subscribe adds a topic prefix on a SUB or XSUB socket.
	Subscribe(topic string) error
	// Unsubscribe removes a topic prefix on a SUB or XSUB socket.
	Unsubscribe(topic string) error
	// Close closes the socket and all its connections. It waits for a
	// Send in progress, at most about WriteTimeout.
	Close() error
	// Addr is the bound address of a listening socket, nil for a dialer.
	Addr() net.Addr
	// Done is closed when a dialer's connection is lost, and when the
	// socket is closed.
	Done() <-chan struct{}
}

// Listen binds a socket to endpoint ("tcp://host:port"; port 0 picks a free
// port, see Addr).
func Listen(typ Type, endpoint string, o Options) (Socket, error) {
	s, addr, err := open(typ, endpoint, o, false)
	if err != nil {
		return nil, err
	}
	if err := s.zs.Listen(transportName + "://" + addr); err != nil {
		s.Close()
		return nil, fmt.Errorf("zsock: cannot listen on %s: %w", endpoint, err)
	}
	return s, nil
}

// Dial connects a socket to endpoint ("tcp://host:port") with one attempt:
// it fails if the TCP connection or the ZMTP handshake does not complete
// within Options.HandshakeTimeout. Reconnecting is the caller's job: make
// a new socket.
func Dial(typ Type, endpoint string, o Options) (Socket, error) {
	s, addr, err := open(typ, endpoint, o, true)
	if err != nil {
		return nil, err
	}
	s.st.dialDeadline = time.Now().Add(s.st.o.HandshakeTimeout)
	if err := s.zs.Dial(transportName + "://" + addr); err != nil {
		s.st.mu.Lock()
		c := s.st.dialed
		s.st.mu.Unlock()
		if c != nil {
			// zmq4 leaves a connection whose handshake failed open.
			c.Close()
		}
		s.Close()
		return nil, fmt.Errorf("zsock: cannot dial %s: %w", endpoint, err)
	}
	s.st.mu.RLock()
	s.dconn = s.st.dialed
	s.st.mu.RUnlock()
	s.st.handed()
	return s, nil
}

func open(typ Type, endpoint string, o Options, dialer bool) (*socket, string, error) {
	if typ.zmq() == "" {
		return nil, "", fmt.Errorf("zsock: unknown socket type %d", int(typ))
	}
	addr, ok := strings.CutPrefix(endpoint, "tcp://")
	if !ok {
		return nil, "", fmt.Errorf("zsock: endpoint %q: only tcp:// is supported", endpoint)
	}
	if _, err := (tcpTransport{}).Addr(addr); err != nil {
		return nil, "", fmt.Errorf("zsock: endpoint %q: %w", endpoint, err)
	}
	if err := register(); err != nil {
		return nil, "", err
	}
	o, err := o.withDefaults()
	if err != nil {
		return nil, "", err
	}
	st := newSockState(typ, o, dialer)
	ctx := context.WithValue(context.Background(), stateKey{}, st)
	opts := []zmq4.Option{
		zmq4.WithID(zmq4.SocketIdentity(o.Identity)),
		zmq4.WithDialerMaxRetries(0), // one attempt; zmq4 would retry 10 x 250ms
		zmq4.WithLogger(log.New(slogWriter{o.Logger}, "", 0)),
		// zmq4's Send timeout must outlast our write deadline: when it
		// fires, DEALER's Send returns while the write still runs.
		zmq4.WithTimeout(max(5*time.Minute, 4*o.WriteTimeout)),
	}
	var zs zmq4.Socket
	switch typ {
	case Router:
		zs = zmq4.NewRouter(ctx, opts...)
	case Dealer:
		zs = zmq4.NewDealer(ctx, opts...)
	case Pub:
		zs = zmq4.NewPub(ctx, opts...)
	case Sub:
		zs = zmq4.NewSub(ctx, opts...)
	case XPub:
		zs = zmq4.NewXPub(ctx, opts...)
	case XSub:
		zs = zmq4.NewXSub(ctx, opts...)
	}
	return &socket{typ: typ, zs: zs, st: st, dialer: dialer}, addr, nil
}

// socket implements Socket over a zmq4 socket.
//
// Send on a ROUTER listener or a DEALER dialer (st.direct) does not go
// through zmq4, whose writers cost a context per call and a goroutine per
// message and peer (and, on a ROUTER, hold one socket-wide lock across the
// write): it frames the message itself and writes it into the target
// connection under that connection's own lock (conn.writeMsg). A ROUTER
// finds the connection in zsock's identity table (sockState.lookup), a
// DEALER has one. No lock is shared between sends to different peers, and
// none is held across a wait for a slow peer: conn's inline write gives up
// after a millisecond and leaves the rest to the connection's bounded
// backlog. Receiving stays zmq4's.
type socket struct {
	typ    Type
	zs     zmq4.Socket
	st     *sockState
	dialer bool
	dconn  *conn // direct DEALER: the dialed connection, set before Dial returns

	// mu: a zmq4 Send holds it shared, shutdown exclusively, so that no
	// Send is still inside zmq4 (whose DEALER returns on cancellation while
	// its write goes on, reading the caller's frames) once Close returns.
	// The direct Send does not take it: it keeps nothing of the frames
	// after it returns, and a connection closed under it fails its write.
	mu       sync.RWMutex
	subMu    sync.Mutex // zmq4's SetOption writes a map without locking
	closed   atomic.Bool
	gone     atomic.Bool // Recv saw the dialed connection's end
	stopOnce sync.Once
}

func (s *socket) Done() <-chan struct{} { return s.st.done }

func (s *socket) Addr() net.Addr {
	if s.dialer {
		return nil
	}
	return s.zs.Addr()
}

func (s *socket) Send(frames [][]byte) error {
	if len(frames) == 0 || s.typ == Router && len(frames) < 2 {
		return ErrBadMessage
	}
	if s.st.direct {
		return s.sendDirect(frames)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed.Load() {
		return ErrClosed
	}
	if s.dialer && s.st.isDone() {
		return ErrPeerGone
	}
	if !s.dialer && !s.st.everConn.Load() && s.typ != Pub && s.typ != XPub {
		// No peer ever connected: zmq4 would block until its Send timeout
		// (minutes). Drop, as a ROUTER does for an unknown peer.
		return nil
	}
	if s.typ == Pub || s.typ == XPub {
		// zmq4 queues PUB messages and writes them later.
		frames = cloneFrames(frames)
	}
	err := s.zs.SendMulti(zmq4.NewMsgFrom(frames...))
	if err == nil {
		return nil
	}
	if s.closed.Load() {
		return ErrClosed
	}
	var de *dropError
	if errors.As(err, &de) || errors.Is(err, zmq4.ErrClosedConn) {
		return fmt.Errorf("%w: %w", ErrPeerGone, err)
	}
	return fmt.Errorf("zsock: send: %w", err)
}

// sendDirect is Send for a ROUTER listener or a DEALER dialer.
func (s *socket) sendDirect(frames [][]byte) error {
	if s.closed.Load() {
		return ErrClosed
	}
	var c *conn
	if s.typ == Router {
		if c = s.st.lookup(frames[0]); c == nil {
			// Unknown peer, or none ever connected: dropped, as zmq4 does.
			return nil
		}
		frames = frames[1:]
	} else if c = s.dconn; c == nil || s.st.isDone() {
		return ErrPeerGone
	}
	err := c.writeMsg(frames)
	switch {
	case err == nil:
		return nil
	case s.closed.Load():
		return ErrClosed
	case err == errNotTaken && s.typ == Router:
		// Connected, but zmq4 is still in its handshake: the peer is not
		// known to zmq4 either, which would drop the message.
		return nil
	}
	return fmt.Errorf("%w: %w", ErrPeerGone, err)
}

func (s *socket) Recv() ([][]byte, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	if s.typ == Pub {
		return nil, fmt.Errorf("zsock: a PUB socket cannot receive: %w", errors.ErrUnsupported)
	}
	if s.gone.Load() {
		return nil, ErrPeerGone
	}
	msg, err := s.zs.Recv()
	if s.closed.Load() {
		return nil, ErrClosed // XPUB's Recv returns no error once closed
	}
	if err == nil {
		return msg.Frames, nil
	}
	if s.dialer {
		// zmq4 queues the connection's error after the messages that came
		// before it, once; the next Recv would block forever. Shut the
		// zmq4 socket so that concurrent Recvs return too.
		s.gone.Store(true)
		s.shutdown()
		return nil, ErrPeerGone
	}
	return nil, fmt.Errorf("zsock: recv: %w", err)
}

func (s *socket) Subscribe(topic string) error   { return s.subscribe(topic, true) }
func (s *socket) Unsubscribe(topic string) error { return s.subscribe(topic, false) }

func (s *socket) subscribe(topic string, on bool) error {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	if s.closed.Load() {
		return ErrClosed
	}
	switch s.typ {
	case Sub:
		opt := zmq4.OptionSubscribe
		if !on {
			opt = zmq4.OptionUnsubscribe
		}
		s.mu.RLock()
		defer s.mu.RUnlock()
		if err := s.zs.SetOption(opt, topic); err != nil {
			return fmt.Errorf("zsock: cannot subscribe: %w", err)
		}
		return nil
	case XSub:
		op := byte(0)
		if on {
			op = 1
		}
		return s.Send([][]byte{append([]byte{op}, topic...)})
	}
	return fmt.Errorf("zsock: %s sockets cannot subscribe: %w", s.typ, errors.ErrUnsupported)
}

// Close closes the socket. Recv and Send then return ErrClosed.
func (s *socket) Close() error {
	s.closed.Store(true)
	s.shutdown()
	return nil
}

// shutdown closes the zmq4 socket once. zmq4's per-connection reader
// goroutine can be blocked handing a message to its 10-slot receive queue,
// and would stay blocked forever once nobody calls Recv: after the close
// (our conns then refuse further reads, so each reader hands over at most
// the message it holds) we drain the queue until it stays empty.
func (s *socket) shutdown() {
	s.stopOnce.Do(func() {
		s.mu.Lock()
		_ = s.zs.Close()
		s.mu.Unlock()
		s.st.closeAll()
		if s.st.everConn.Load() && s.typ != Pub && s.typ != XPub {
			// zmq4's Recv picks at random between its closed context and
			// a queued message: 32 misses in a row mean empty.
			for misses, i := 0, 0; misses < 32 && i < 1<<20; i++ {
				if _, err := s.zs.Recv(); err != nil {
					misses++
					runtime.Gosched()
				} else {
					misses = 0
				}
			}
		}
		s.st.markDone()
	})
}

func cloneFrames(frames [][]byte) [][]byte {
	n := 0
	for _, f := range frames {
		n += len(f)
	}
	buf := make([]byte, 0, n)
	out := make([][]byte, len(frames))
	for i, f := range frames {
		buf = append(buf, f...)
		out[i] = buf[len(buf)-len(f) : len(buf) : len(buf)]
	}
	return out
}

// slogWriter turns zmq4's log.Logger lines into debug records. zmq4 only
// logs handshakes its accept loop failed; those we let through can only
// fail on I/O, so a client could otherwise flood the log.
type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.l.Debug("zmq4: " + strings.TrimSpace(string(p)))
	return len(p), nil
}

var _ io.Writer = slogWriter{}
