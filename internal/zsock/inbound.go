package zsock

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"github.com/go-zeromq/zmq4"
	"golang.org/x/text/cases"
	"golang.org/x/text/language"
)

// ZMTP 3.0 wire constants (https://rfc.zeromq.org/spec/23/).
const (
	greetingLen = 64
	sigHeader   = 0xFF
	sigFooter   = 0x7F
	flagMore    = 0x01
	flagLong    = 0x02
	flagCommand = 0x04

	// maxCommand caps a command frame. Commands are held in memory until
	// they are complete and validated; READY with a few properties is well
	// under a kilobyte.
	maxCommand = 64 << 10
	// maxIdentity is the ZMTP limit on a routing identity.
	maxIdentity = 255
	// maxPingContext is the ZMTP 3.1 limit on a PING context.
	maxPingContext = 16
)

// ourGreeting is byte for byte what zmq4's greeting.marshal produces for
// the NULL mechanism with Server=0: signature, version 3.0, "NULL".
var ourGreeting = func() [greetingLen]byte {
	var g [greetingLen]byte
	g[0] = sigHeader
	g[9] = sigFooter
	g[10], g[11] = 3, 0
	copy(g[12:32], "NULL")
	return g
}()

// dropError is what the wrapped connection returns once it has given up.
// It is a net.Error whose Timeout is false, so zmq4's checkIO marks its
// Conn closed and schedules its removal (a timeout, or io.ErrUnexpectedEOF
// after a partial read, would leave the dead Conn registered forever).
type dropError struct {
	reason string // a Reason* constant, or "" for an uncounted end (EOF, closed by us)
	msg    string
	err    error
}

func (e *dropError) Error() string {
	s := "zsock: connection dropped"
	if e.reason != "" {
		s += " (" + e.reason + ")"
	}
	if e.msg != "" {
		s += ": " + e.msg
	}
	if e.err != nil {
		s += ": " + e.err.Error()
	}
	return s
}

func (e *dropError) Unwrap() error   { return e.err }
func (e *dropError) Timeout() bool   { return false }
func (e *dropError) Temporary() bool { return false }

var _ net.Error = (*dropError)(nil)

func protoErr(reason, format string, args ...any) *dropError {
	return &dropError{reason: reason, msg: fmt.Sprintf(format, args...)}
}

type inState uint8

const (
	inGreeting inState = iota // expecting the peer's 64-byte greeting
	inReady                   // expecting the peer's READY command
	inFrames                  // handshake done: message frames and a few commands
)

// inbound validates the ZMTP byte stream a peer sends before zmq4 reads
// any of it. zmq4 reads through Read; Read only returns bytes that belong
// to a validated greeting, a validated command, or a message frame whose
// header announced at most maxFrame bytes. Message bodies stream through
// without being buffered; commands (at most maxCommand bytes) are held
// until complete, then checked.
//
// After the handshake, PING is answered through onPing and swallowed, PONG
// is swallowed, SUBSCRIBE/CANCEL (ZMTP 3.1) become the 3.0 subscription
// messages zmq4 understands on PUB/XPUB; any other command ends the
// connection. zmq4 would hand commands to the application as messages.
//
// inbound is used by one goroutine at a time.
type inbound struct {
	src      *bufio.Reader
	maxFrame uint64
	local    zmq4.SocketType
	subOnly  bool // PUB/XPUB: a peer may only send subscriptions

	state inState
	pend  []byte // validated bytes zmq4 has not read yet
	off   int
	body  uint64 // bytes left in the current message frame's body
	more  bool   // the last message frame had MORE: we are inside a message
	err   error  // sticky
	cmd   []byte // command frame being validated
	hdr   [9]byte

	readyEnd int  // offset in pend just past the peer's READY; 0 once served
	served   bool // zmq4 has read the whole READY

	// Learned from the peer's READY.
	peerType zmq4.SocketType
	identity []byte // as the peer sent it (may be empty)
	// routeID is the identity zmq4 files the peer under, what a ROUTER's
	// Recv puts in frames[0] and Send routes by: the peer's own, or, on a
	// ROUTER, for a peer that sent none, a fresh one (anonIdentity) added
	// to the READY zmq4 reads. zmq4 would make up a UUID of its own that
	// zsock could not see.
	routeID []byte

	onReady func()               // READY has been read off the wire and validated
	onPing  func(context []byte) // a PING arrived; context is only valid during the call
}

func newInbound(src *bufio.Reader, maxFrame int64, local zmq4.SocketType) *inbound {
	return &inbound{
		src:      src,
		maxFrame: uint64(maxFrame),
		local:    local,
		subOnly:  local == zmq4.Pub || local == zmq4.XPub,
	}
}

// Read implements io.Reader for zmq4.
func (in *inbound) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if in.off < len(in.pend) {
			n := copy(p, in.pend[in.off:])
			in.off += n
			if in.readyEnd > 0 && in.off >= in.readyEnd {
				in.readyEnd = 0
				in.served = true
			}
			return n, nil
		}
		if in.err != nil {
			return 0, in.err
		}
		if in.body > 0 {
			k := len(p)
			if uint64(k) > in.body {
				k = int(in.body)
			}
			n, err := in.src.Read(p[:k])
			in.body -= uint64(n)
			if err != nil {
				in.err = in.ioErr(err)
				if n > 0 {
					return n, nil
				}
				return 0, in.err
			}
			return n, nil
		}
		if in.off == len(in.pend) {
			in.pend = in.pend[:0]
			in.off = 0
		}
		if err := in.next(); err != nil {
			in.err = err
		}
	}
}

// handshake reads and validates the greeting and READY, holding them for
// zmq4. Listeners call it before handing the connection to zmq4.
func (in *inbound) handshake() error {
	for in.state != inFrames && in.err == nil {
		if err := in.next(); err != nil {
			in.err = err
		}
	}
	return in.err
}

// next reads one unit (greeting or frame header or command) from src.
func (in *inbound) next() error {
	if in.state == inGreeting {
		return in.greeting()
	}
	return in.frame()
}

func (in *inbound) greeting() error {
	var g [greetingLen]byte
	// Check as the bytes arrive: an HTTP request or a TLS hello is turned
	// away after its first byte.
	if err := in.fill(g[:1]); err != nil {
		return err
	}
	if g[0] != sigHeader {
		return protoErr(ReasonBadGreeting, "signature starts with %#x", g[0])
	}
	if err := in.fill(g[1:10]); err != nil {
		return err
	}
	if g[9] != sigFooter {
		return protoErr(ReasonBadGreeting, "signature ends with %#x", g[9])
	}
	if err := in.fill(g[10:12]); err != nil {
		return err
	}
	if g[10] < 3 {
		return protoErr(ReasonBadGreeting, "ZMTP version %d.%d, want 3 or later", g[10], g[11])
	}
	if err := in.fill(g[12:]); err != nil {
		return err
	}
	if string(g[12:32]) != string(ourGreeting[12:32]) {
		return protoErr(ReasonBadGreeting, "mechanism %q, only NULL is supported", trimNUL(g[12:32]))
	}
	if g[32] > 1 { // zmq4 fails the handshake on anything but 0 or 1
		return protoErr(ReasonBadGreeting, "as-server byte %#x", g[32])
	}
	in.pend = append(in.pend, g[:]...)
	in.state = inReady
	return nil
}

func (in *inbound) frame() error {
	h := in.hdr[:]
	if err := in.fill(h[:2]); err != nil {
		return err
	}
	flags := h[0]
	if flags&^(flagMore|flagLong|flagCommand) != 0 {
		return protoErr(ReasonBadFlags, "flags %#x", flags)
	}
	hl, size := 2, uint64(h[1])
	if flags&flagLong != 0 {
		if err := in.fill(h[2:9]); err != nil {
			return err
		}
		hl, size = 9, binary.BigEndian.Uint64(h[1:9])
	}
	if size > in.maxFrame {
		return protoErr(ReasonOversizedFrame, "frame of %d bytes announced, limit %d", size, in.maxFrame)
	}
	if flags&flagCommand != 0 {
		switch {
		case flags&flagMore != 0:
			return protoErr(ReasonBadFlags, "command frame with MORE")
		case in.more:
			return protoErr(ReasonBadFlags, "command frame inside a multipart message")
		case size > maxCommand:
			return protoErr(ReasonOversizedFrame, "command of %d bytes announced, limit %d", size, maxCommand)
		}
		if uint64(cap(in.cmd)) < size {
			in.cmd = make([]byte, size)
		}
		body := in.cmd[:size]
		if err := in.fill(body); err != nil {
			return err
		}
		err := in.command(h[:hl], body)
		if cap(in.cmd) > 4<<10 {
			in.cmd = nil // a rare large command: do not keep its buffer
		}
		return err
	}
	if in.state == inReady {
		return protoErr(ReasonMalformedCommand, "message frame before READY")
	}
	if in.subOnly && !in.more {
		// zmq4's PUB reader queues anything that is not a subscription
		// for a Recv nobody calls; after ten such messages it stops
		// reading that peer for good.
		if flags&flagMore != 0 || size == 0 {
			return protoErr(ReasonUnexpectedMessage, "PUB peers may only send subscriptions")
		}
		b, err := in.src.Peek(1)
		if err != nil {
			return in.ioErr(err)
		}
		if b[0] > 1 {
			return protoErr(ReasonUnexpectedMessage, "PUB peers may only send subscriptions")
		}
	}
	in.more = flags&flagMore != 0
	in.pend = append(in.pend, h[:hl]...)
	in.body = size
	return nil
}

func (in *inbound) command(hdr, body []byte) error {
	if len(body) == 0 {
		return protoErr(ReasonMalformedCommand, "empty command")
	}
	nl := int(body[0])
	if nl == 0 || 1+nl > len(body) {
		return protoErr(ReasonMalformedCommand, "command name of %d bytes in a %d-byte frame", nl, len(body))
	}
	name, data := string(body[1:1+nl]), body[1+nl:]

	if in.state == inReady {
		if name != zmq4.CmdReady {
			return protoErr(ReasonMalformedCommand, "%.32q instead of READY", name)
		}
		if err := in.ready(data); err != nil {
			return err
		}
		in.routeID = in.identity
		if len(in.identity) == 0 && in.local == zmq4.Router {
			// zmq4 keeps the last value of a property: ours wins over an
			// empty Identity the peer may have sent.
			in.routeID = anonIdentity()
			prop := appendProperty(nil, "Identity", in.routeID)
			size := len(body) + len(prop)
			if size > maxCommand {
				return protoErr(ReasonOversizedFrame, "READY of %d bytes", len(body))
			}
			in.pend = appendHeader(in.pend, flagCommand, uint64(size))
			in.pend = append(in.pend, body...)
			in.pend = append(in.pend, prop...)
		} else {
			in.pend = append(in.pend, hdr...)
			in.pend = append(in.pend, body...)
		}
		in.readyEnd = len(in.pend)
		in.state = inFrames
		if in.onReady != nil {
			in.onReady()
		}
		return nil
	}

	switch name {
	case zmq4.CmdPing:
		// ZMTP 3.1: 2-byte TTL, then up to 16 bytes of context.
		if len(data) < 2 || len(data) > 2+maxPingContext {
			return protoErr(ReasonMalformedCommand, "PING of %d bytes", len(data))
		}
		if in.onPing != nil {
			in.onPing(data[2:])
		}
		return nil
	case zmq4.CmdPong:
		return nil
	case zmq4.CmdSubscribe, zmq4.CmdCancel:
		if !in.subOnly {
			return protoErr(ReasonMalformedCommand, "%s sent to a %s socket", name, in.local)
		}
		size := uint64(1 + len(data))
		if size > in.maxFrame {
			return protoErr(ReasonOversizedFrame, "subscription of %d bytes, limit %d", size, in.maxFrame)
		}
		op := byte(1)
		if name == zmq4.CmdCancel {
			op = 0
		}
		in.pend = appendHeader(in.pend, 0, size)
		in.pend = append(in.pend, op)
		in.pend = append(in.pend, data...)
		return nil
	}
	return protoErr(ReasonMalformedCommand, "command %.32q after the handshake", name)
}

// ready checks every READY property so that zmq4's unchecked parser
// (Property.Write) and its socket-type check (SocketType.IsCompatible
// panics on an unknown type) only ever see what they can handle.
func (in *inbound) ready(data []byte) error {
	title := cases.Title(language.Und, cases.NoLower)
	var peerType []byte
	var haveType bool
	for i := 0; i < len(data); {
		nl := int(data[i])
		i++
		if nl == 0 || nl > len(data)-i {
			return protoErr(ReasonMalformedCommand, "READY property name of %d bytes runs past the frame", nl)
		}
		name := data[i : i+nl]
		i += nl
		for _, c := range name {
			if !isNameChar(c) {
				return protoErr(ReasonMalformedCommand, "READY property name %.32q", name)
			}
		}
		if len(data)-i < 4 {
			return protoErr(ReasonMalformedCommand, "READY property %.32q has no value length", name)
		}
		vl := binary.BigEndian.Uint32(data[i:])
		i += 4
		if uint64(vl) > uint64(len(data)-i) {
			return protoErr(ReasonMalformedCommand, "READY property %.32q value of %d bytes runs past the frame", name, vl)
		}
		value := data[i : i+int(vl)]
		i += int(vl)
		// zmq4 keys its metadata map by the title-cased name and keeps
		// the last value: look the properties up the same way.
		switch title.String(string(name)) {
		case "Socket-Type":
			peerType, haveType = value, true
		case "Identity":
			in.identity = value
		}
	}
	if len(in.identity) > maxIdentity {
		return protoErr(ReasonMalformedCommand, "identity of %d bytes", len(in.identity))
	}
	in.identity = append([]byte(nil), in.identity...)
	if !haveType {
		return protoErr(ReasonIncompatiblePeer, "READY without Socket-Type")
	}
	pt := zmq4.SocketType(peerType)
	if !knownType(pt) {
		return protoErr(ReasonIncompatiblePeer, "unknown Socket-Type %.32q", peerType)
	}
	if !in.local.IsCompatible(pt) || !pt.IsCompatible(in.local) {
		return protoErr(ReasonIncompatiblePeer, "%s cannot talk to %s", pt, in.local)
	}
	in.peerType = pt
	return nil
}

// fill reads exactly len(b) bytes from src.
func (in *inbound) fill(b []byte) error {
	if _, err := io.ReadFull(in.src, b); err != nil {
		return in.ioErr(err)
	}
	return nil
}

// ioErr classifies an error from the network.
func (in *inbound) ioErr(err error) error {
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		return &dropError{err: err}
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		if in.state != inFrames {
			return &dropError{reason: ReasonHandshakeTimeout, err: err}
		}
	}
	return &dropError{reason: ReasonIOError, err: err}
}

// appendProperty appends one ZMTP metadata property.
func appendProperty(b []byte, name string, value []byte) []byte {
	b = append(b, byte(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(value)))
	return append(b, value...)
}

// anonIdentity is the routing identity a ROUTER gives a peer that sent
// none: a zero byte (libzmq reserves identities that start with one for
// generated ones; zsock's own never do) and 16 random bytes, so that no
// peer can guess one and claim it first.
func anonIdentity() []byte {
	id := make([]byte, 17)
	_, _ = rand.Read(id[1:])
	return id
}

func appendHeader(b []byte, flags byte, size uint64) []byte {
	if size <= 255 {
		return append(b, flags, byte(size))
	}
	b = append(b, flags|flagLong)
	return binary.BigEndian.AppendUint64(b, size)
}

// isNameChar reports whether c may appear in a ZMTP property name:
// ALPHA / DIGIT / "-" / "_" / "." / "+".
func isNameChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '-' || c == '_' || c == '.' || c == '+'
}

func knownType(t zmq4.SocketType) bool {
	switch t {
	case zmq4.Pair, zmq4.Pub, zmq4.Sub, zmq4.Req, zmq4.Rep, zmq4.Dealer,
		zmq4.Router, zmq4.Pull, zmq4.Push, zmq4.XPub, zmq4.XSub:
		return true
	}
	return false
}

func trimNUL(b []byte) []byte {
	for i, c := range b {
		if c == 0 {
			return b[:i]
		}
	}
	return b
}
