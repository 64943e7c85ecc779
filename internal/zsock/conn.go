package zsock

import (
	"bufio"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// conn is the net.Conn zmq4 sees. Reads go through the inbound validator
// over a buffered reader.
//
// Two writers, one byte stream. zmq4 writes through Write: the greeting
// and READY of its handshake, and for PUB, SUB, XPUB, XSUB (and a ROUTER
// that dials, a DEALER that listens) every message; Write parses those
// bytes into ZMTP frames, buffers them and flushes once per complete
// message. A ROUTER listener's and a DEALER dialer's Send (sockState.direct)
// bypass zmq4: they frame the message themselves and hand it to writeMsg,
// one flush per message. Both run under wmu and share the outbound parser
// state: writeMsg only writes once the parser has seen zmq4's READY go out
// (out.handshook) and stands at a message boundary, and leaves it there.
// zmq4 writes to a ROUTER or DEALER conn only from its Send (and, for
// PONG, from RecvMsg, which its reader loop never calls; PING is answered
// by pong below), so on a direct conn it writes nothing after READY and
// the two never meet; were it to, writeMsg would refuse rather than split
// zmq4's message.
//
// A flush never blocks the sender for long: a peer that stops reading must
// not hold up the sender (zmq4's ROUTER writes to one peer while holding
// the lock of the whole socket; the direct path holds no socket-wide lock
// but a broker still sends from one goroutine). A flush writes inline with
// a short deadline (the normal case: the kernel takes it at once); what the
// kernel does not take goes to a bounded backlog that a writer goroutine
// of this connection drains under WriteTimeout.
//
// Lock order: zmq4's socket locks, then conn.wmu, then sockState.mu. The
// direct Send takes sockState.mu (read, for the identity lookup) and
// releases it before it takes wmu.
type conn struct {
	raw net.Conn
	st  *sockState
	in  *inbound

	// Write side, guarded by wmu.
	wmu  sync.Mutex
	out  outbound
	wbuf []byte
	ctl  []byte    // control frames (PONG) waiting for a message boundary
	werr error     // sticky
	iov  [1][]byte // flush's one-buffer net.Buffers, kept here so it does not escape per call

	// Non-blocking first attempt (see send): raw's RawConn when raw is a
	// *net.TCPConn, the write callback bound once, and its arguments and
	// results, all guarded by wmu.
	rc     syscall.RawConn
	rawFn  func(fd uintptr) bool
	rawBuf []byte
	rawN   int
	rawErr error
	rawOps int // write(2) calls made by rawWrite (tests)

	backlog  [][]byte // owned copies waiting for the writer goroutine, in order
	backlogN int      // bytes in backlog
	writing  bool     // the writer goroutine runs: new flushes queue behind it
	// drainSince is when the writer goroutine started its current batch
	// (zero between batches); guarded by wmu.
	drainSince time.Time

	// Reader goroutine only.
	established bool
	estTimer    *time.Timer // listeners: closes the conn if zmq4 never reads after READY

	live      atomic.Bool // zmq4 read past the handshake: its reader loop runs
	dropped   atomic.Bool // a drop reason was counted
	closed    atomic.Bool
	closeOnce sync.Once
	claimed   bool // identity registered in st.ids; guarded by st.mu
}

// outbound tracks ZMTP framing in the bytes zmq4 writes.
type outbound struct {
	skip  int // listeners: bytes of zmq4's greeting to drop (ours went out already)
	greet int // dialers: greeting bytes still to pass
	hdr   [9]byte
	hn    int    // header bytes collected so far
	body  uint64 // body bytes left in the current frame
	flags byte
	more  bool // inside a multipart message

	// handshook: a command frame (zmq4's READY, the only command it writes
	// to a ROUTER or DEALER peer) has gone out, so zmq4's handshake output
	// is complete and flushed.
	handshook bool
}

func (o *outbound) atBoundary() bool {
	return o.skip == 0 && o.greet == 0 && o.hn == 0 && o.body == 0 && !o.more
}

// frameEnd records the end of a frame and reports whether a flush is due:
// after a command and after the last frame of a message.
func (o *outbound) frameEnd() bool {
	if o.flags&flagCommand != 0 {
		o.handshook = true
	}
	o.more = o.flags&flagMore != 0 && o.flags&flagCommand == 0
	return !o.more
}

func newConn(raw net.Conn, st *sockState, server bool) *conn {
	c := &conn{raw: raw, st: st}
	c.in = newInbound(bufio.NewReaderSize(raw, st.o.ReadBuffer), st.o.MaxFrame, st.ztyp)
	c.in.onPing = c.pong
	if server {
		c.out.skip = greetingLen
	} else {
		c.out.greet = greetingLen
		// The dial-time read deadline ends once READY is in.
		c.in.onReady = func() { _ = raw.SetReadDeadline(time.Time{}) }
	}
	if tc, ok := raw.(*net.TCPConn); ok {
		if rc, err := tc.SyscallConn(); err == nil {
			c.rc = rc
			c.rawFn = c.rawWrite
		}
	}
	openConns.Add(1)
	return c
}

// Read serves zmq4 validated bytes.
func (c *conn) Read(p []byte) (int, error) {
	if !c.established && c.in.served {
		// zmq4 is reading past the handshake: Open succeeded and its
		// reader loop runs.
		c.established = true
		c.live.Store(true)
		if c.estTimer != nil {
			c.estTimer.Stop()
		}
	}
	if c.closed.Load() {
		// Nothing more after Close, not even what is buffered: zmq4's
		// reader loop ends at once (see socket.shutdown).
		return 0, &dropError{err: net.ErrClosed}
	}
	n, err := c.in.Read(p)
	if err != nil {
		c.fail(err)
	}
	return n, err
}

// fail counts a drop (once per connection) and closes the connection.
func (c *conn) fail(err error) {
	var de *dropError
	if errors.As(err, &de) && de.reason != "" && !c.closed.Load() && c.dropped.CompareAndSwap(false, true) {
		countDrop(de.reason)
		lvl := c.st.log.Debug
		if de.reason == ReasonWriteTimeout {
			lvl = c.st.log.Warn
		}
		lvl("zsock: dropping connection", "reason", de.reason, "remote", c.raw.RemoteAddr().String(), "err", err)
	}
	c.Close()
}

// Write buffers what zmq4 writes and flushes when a message (or a command,
// or the greeting) is complete.
func (c *conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return 0, c.werr
	}
	o := &c.out
	if o.handshook && c.st.direct {
		lateZmq4Writes.Add(1) // see conn: never expected
	}
	flushTo := -1 // wbuf[:flushTo] ends at a flush point
	for i := 0; i < len(p); {
		switch {
		case o.skip > 0:
			k := min(o.skip, len(p)-i)
			o.skip -= k
			i += k
		case o.greet > 0:
			k := min(o.greet, len(p)-i)
			c.wbuf = append(c.wbuf, p[i:i+k]...)
			o.greet -= k
			i += k
			if o.greet == 0 {
				flushTo = len(c.wbuf)
			}
		case o.body > 0:
			k := len(p) - i
			if uint64(k) > o.body {
				k = int(o.body)
			}
			chunk := p[i : i+k]
			if len(c.wbuf)+k > c.st.o.WriteBuffer {
				// A large body: write what is buffered and the chunk
				// together (one writev on a TCP conn) instead of copying.
				if err := c.flushv(chunk); err != nil {
					return 0, err
				}
				flushTo = -1
			} else {
				c.wbuf = append(c.wbuf, chunk...)
			}
			o.body -= uint64(k)
			i += k
			if o.body == 0 && o.frameEnd() {
				flushTo = len(c.wbuf)
			}
		default: // frame header
			b := p[i]
			i++
			if o.hn == 0 {
				o.flags = b
			}
			o.hdr[o.hn] = b
			o.hn++
			c.wbuf = append(c.wbuf, b)
			need := 2
			if o.flags&flagLong != 0 {
				need = 9
			}
			if o.hn == need {
				o.hn = 0
				size := uint64(o.hdr[1])
				if need == 9 {
					size = binary.BigEndian.Uint64(o.hdr[1:9])
				}
				o.body = size
				if size == 0 && o.frameEnd() {
					flushTo = len(c.wbuf)
				}
			}
		}
	}
	switch {
	case flushTo > 0:
		if flushTo == len(c.wbuf) && o.atBoundary() && len(c.ctl) > 0 {
			c.wbuf = append(c.wbuf, c.ctl...)
			flushTo = len(c.wbuf)
			c.ctl = c.ctl[:0]
		}
		if err := c.flush(c.wbuf[:flushTo]); err != nil {
			return 0, err
		}
		n := copy(c.wbuf, c.wbuf[flushTo:])
		c.wbuf = c.wbuf[:n]
	case len(c.wbuf) >= c.st.o.WriteBuffer:
		if err := c.flush(c.wbuf); err != nil {
			return 0, err
		}
		c.wbuf = c.wbuf[:0]
	}
	if cap(c.wbuf) > 4*c.st.o.WriteBuffer && len(c.wbuf) == 0 {
		c.wbuf = nil // do not keep a large buffer around
	}
	return len(p), nil
}

// inlineWait is how long a flush may wait for the kernel before handing
// the rest to the connection's writer goroutine.
const inlineWait = time.Millisecond

// slowAfter: a backlog over WriteQueue drops the peer once the writer has
// been stuck on one batch this long.
const slowAfter = 200 * time.Millisecond

// lateZmq4Writes counts Write calls from zmq4 on a direct connection after
// its handshake; the direct path relies on there being none (tests check).
var lateZmq4Writes atomic.Int64

// errNotTaken: zmq4 has not finished its handshake on the connection (its
// READY has not gone out), so a direct message may not be written yet.
var errNotTaken = errors.New("zsock: connection not taken by zmq4 yet")

// errMidMessage: zmq4 is halfway through writing a message of its own on a
// direct connection. It never does (see conn); refuse rather than split it.
var errMidMessage = errors.New("zsock: zmq4 is writing to a direct connection")

// bigBody: in a message larger than WriteBuffer, bodies at least this long
// go to writev as they are; smaller ones are copied next to their headers.
const bigBody = 8 << 10

// writeMsg writes one message, frames[i] with MORE on all but the last,
// straight into the connection's write path: framed here (ZMTP 3.0, NULL
// mechanism: bodies as they are), one flush (one write(2) for a message up
// to WriteBuffer, one writev above), inline with inlineWait or queued for
// the writer goroutine like every flush. Messages to one connection never
// interleave: each is written whole under wmu. frames are not kept.
//
// Only for sockets with sockState.direct, whose conns zmq4 does not write
// to after its handshake (see conn).
func (c *conn) writeMsg(frames [][]byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return c.werr
	}
	if c.closed.Load() {
		return &dropError{err: net.ErrClosed}
	}
	if !c.out.handshook {
		return errNotTaken
	}
	if !c.out.atBoundary() || len(c.wbuf) > 0 {
		return errMidMessage
	}
	n := len(c.ctl)
	for _, f := range frames {
		n += 9 + len(f)
	}
	if n > c.st.o.WriteBuffer {
		return c.writeLarge(frames)
	}
	b := c.wbuf[:0]
	if cap(b) < n {
		b = make([]byte, 0, max(n, 512))
	}
	last := len(frames) - 1
	for i, f := range frames {
		var fl byte
		if i < last {
			fl = flagMore
		}
		b = appendHeader(b, fl, uint64(len(f)))
		b = append(b, f...)
	}
	if len(c.ctl) > 0 { // cannot be: PONG waits only while zmq4 is mid-message
		b = append(b, c.ctl...)
		c.ctl = c.ctl[:0]
	}
	c.wbuf = b[:0]
	return c.flush(b)
}

// writeLarge writes a message of more than WriteBuffer bytes as one writev:
// headers and small bodies gathered into a fresh buffer, large bodies as
// they are. Called with wmu held.
func (c *conn) writeLarge(frames [][]byte) error {
	n, big := len(c.ctl), 0
	for _, f := range frames {
		n += 9
		if len(f) >= bigBody {
			big++
		} else {
			n += len(f)
		}
	}
	b := make([]byte, 0, n) // exact: b never moves, the slices below stay valid
	bufs := make(net.Buffers, 0, 2*big+1)
	start, last := 0, len(frames)-1
	for i, f := range frames {
		var fl byte
		if i < last {
			fl = flagMore
		}
		b = appendHeader(b, fl, uint64(len(f)))
		if len(f) >= bigBody {
			bufs = append(bufs, b[start:], f)
			start = len(b)
		} else {
			b = append(b, f...)
		}
	}
	b = append(b, c.ctl...)
	c.ctl = c.ctl[:0]
	if len(b) > start {
		bufs = append(bufs, b[start:])
	}
	return c.send(bufs)
}

// flush writes b, or queues what the peer is not ready to take. Called with
// wmu held; b is not kept.
func (c *conn) flush(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	c.iov[0] = b
	err := c.send(c.iov[:])
	c.iov[0] = nil
	return err
}

// flushv writes wbuf and then chunk (one writev on a TCP conn), and empties
// wbuf. Called with wmu held.
func (c *conn) flushv(chunk []byte) error {
	bufs := net.Buffers{chunk}
	if len(c.wbuf) > 0 {
		bufs = net.Buffers{c.wbuf, chunk}
	}
	err := c.send(bufs)
	c.wbuf = c.wbuf[:0]
	return err
}

// send writes bufs inline if nothing waits and the kernel takes them
// within inlineWait; the rest is queued. Called with wmu held.
//
// One buffer on a TCP conn is first offered to the kernel without waiting
// (tryWrite): usually it takes all, and no deadline is armed, which would
// cost a clock read and a runtime timer per flush and could wake an idle
// process when it expired. Only what the kernel does not take then waits,
// under a deadline of inlineWait, cleared again afterwards: the fast path
// needs the fd's write deadline unset (an expired one fails RawConn.Write
// before it tries; that falls through to here too).
func (c *conn) send(bufs net.Buffers) error {
	if c.writing {
		return c.enqueue(bufs)
	}
	if c.rc != nil && len(bufs) == 1 {
		n, err := c.tryWrite(bufs[0])
		bufs[0] = bufs[0][n:]
		switch {
		case err == nil && len(bufs[0]) == 0:
			return nil
		case err != nil && !isTimeout(err):
			return c.writeFailed(err)
		}
	}
	_ = c.raw.SetWriteDeadline(time.Now().Add(inlineWait))
	var err error
	if len(bufs) == 1 {
		// write(2); and bufs, which writeBuffers would move to the heap,
		// stays where the caller has it.
		var n int
		n, err = c.raw.Write(bufs[0])
		bufs[0] = bufs[0][n:]
	} else {
		bufs, err = writeBuffers(c.raw, bufs)
	}
	if c.rc != nil {
		// Before enqueue starts the writer goroutine, which sets its own.
		_ = c.raw.SetWriteDeadline(time.Time{})
	}
	if err != nil {
		if !c.closed.Load() && isTimeout(err) {
			return c.enqueue(bufs) // what was not written
		}
		return c.writeFailed(err)
	}
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// tryWrite writes what the kernel takes of b at once, without waiting.
// Called with wmu held.
func (c *conn) tryWrite(b []byte) (int, error) {
	c.rawBuf, c.rawN, c.rawErr = b, 0, nil
	err := c.rc.Write(c.rawFn)
	n := c.rawN
	if err == nil {
		err = c.rawErr
	}
	c.rawBuf, c.rawErr = nil, nil
	return n, err
}

// rawWrite is tryWrite's RawConn callback: write(2) until the kernel has
// taken all of rawBuf or would block. It never asks to wait.
func (c *conn) rawWrite(fd uintptr) bool {
	for c.rawN < len(c.rawBuf) {
		n, err := syscall.Write(int(fd), c.rawBuf[c.rawN:])
		c.rawOps++
		if n > 0 {
			c.rawN += n
		}
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
		case err != nil:
			c.rawErr = os.NewSyscallError("write", err)
		case n > 0:
			continue
		}
		break
	}
	return true
}

// writeBuffers writes bufs (one writev on a TCP conn) and returns what was
// not written.
func writeBuffers(w net.Conn, bufs net.Buffers) (net.Buffers, error) {
	_, err := bufs.WriteTo(w)
	return bufs, err
}

// enqueue copies bufs to the backlog and makes sure the writer goroutine
// runs. A peer whose backlog passes WriteQueue is dropped. Called with wmu
// held.
func (c *conn) enqueue(bufs net.Buffers) error {
	n := 0
	for _, b := range bufs {
		n += len(b)
	}
	if n == 0 {
		return nil
	}
	// Over the cap is only a slow peer when the writer has made no
	// progress for a while: a burst of large messages to a peer that reads
	// steadily may queue more than WriteQueue for a moment.
	if c.backlogN > 0 && c.backlogN+n > c.st.o.WriteQueue && !c.drainSince.IsZero() && time.Since(c.drainSince) > slowAfter {
		de := &dropError{reason: ReasonSlowPeer, msg: "more than " + itoa(c.st.o.WriteQueue) + " bytes waiting for a peer that does not read"}
		c.werr = de
		c.fail(de)
		return de
	}
	buf := make([]byte, 0, n)
	for _, b := range bufs {
		buf = append(buf, b...)
	}
	c.backlog = append(c.backlog, buf)
	c.backlogN += n
	if !c.writing {
		c.writing = true
		go c.drain()
	}
	return nil
}

// drain writes the backlog until it is empty, each batch under
// WriteTimeout; a peer that takes nothing for that long is dropped.
func (c *conn) drain() {
	for {
		c.wmu.Lock()
		if len(c.backlog) == 0 || c.werr != nil {
			c.writing = false
			c.backlog, c.backlogN = nil, 0
			c.wmu.Unlock()
			return
		}
		bufs := net.Buffers(c.backlog)
		c.backlog, c.backlogN = nil, 0
		c.drainSince = time.Now()
		c.wmu.Unlock()

		_ = c.raw.SetWriteDeadline(time.Now().Add(c.st.o.WriteTimeout))
		_, err := bufs.WriteTo(c.raw)
		c.wmu.Lock()
		c.drainSince = time.Time{}
		c.wmu.Unlock()
		if c.rc != nil {
			_ = c.raw.SetWriteDeadline(time.Time{}) // before writing ends: see send
		}
		if err != nil {
			c.wmu.Lock()
			if c.werr == nil {
				c.writeFailed(err)
			}
			c.writing = false
			c.backlog, c.backlogN = nil, 0
			c.wmu.Unlock()
			return
		}
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// writeFailed turns a write error into the sticky werr and drops the
// connection: zmq4 then removes the peer. Called with wmu held.
func (c *conn) writeFailed(err error) error {
	var ne net.Error
	de := &dropError{reason: ReasonIOError, err: err}
	switch {
	case c.closed.Load() || errors.Is(err, net.ErrClosed):
		de.reason = ""
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		de.reason, de.msg = ReasonWriteTimeout, "peer did not read for "+c.st.o.WriteTimeout.String()
	}
	c.werr = de
	c.fail(de)
	return de
}

// pong answers a ZMTP 3.1 PING from the reader goroutine. It goes out at
// once between messages, or right after the message being written.
func (c *conn) pong(context []byte) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return
	}
	frame := appendHeader(nil, flagCommand, uint64(1+len("PONG")+len(context)))
	frame = append(frame, 4, 'P', 'O', 'N', 'G')
	frame = append(frame, context...)
	if c.out.atBoundary() && len(c.wbuf) == 0 {
		_ = c.flush(frame)
		return
	}
	if len(c.ctl) < 1024 { // a peer that floods PINGs gets fewer PONGs
		c.ctl = append(c.ctl, frame...)
	}
}

// Close closes the TCP connection once, and tells whoever waits on it.
func (c *conn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		err = c.raw.Close()
		openConns.Add(-1)
		c.st.connClosed(c)
	})
	return err
}

func (c *conn) LocalAddr() net.Addr                { return c.raw.LocalAddr() }
func (c *conn) RemoteAddr() net.Addr               { return c.raw.RemoteAddr() }
func (c *conn) SetDeadline(t time.Time) error      { return c.raw.SetDeadline(t) }
func (c *conn) SetReadDeadline(t time.Time) error  { return c.raw.SetReadDeadline(t) }
func (c *conn) SetWriteDeadline(t time.Time) error { return c.raw.SetWriteDeadline(t) }
