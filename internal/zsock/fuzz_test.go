package zsock

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/go-zeromq/zmq4/security/null"
)

const fuzzMaxFrame = 4096

// fuzzConn feeds zmq4 from a reader and discards what it writes.
type fuzzConn struct{ r io.Reader }

func (c fuzzConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c fuzzConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c fuzzConn) Close() error                     { return nil }
func (c fuzzConn) LocalAddr() net.Addr              { return nil }
func (c fuzzConn) RemoteAddr() net.Addr             { return nil }
func (c fuzzConn) SetDeadline(time.Time) error      { return nil }
func (c fuzzConn) SetReadDeadline(time.Time) error  { return nil }
func (c fuzzConn) SetWriteDeadline(time.Time) error { return nil }

// halves returns a reader that yields data[:cut] and data[cut:] from
// separate Reads, so a unit can be split across network reads.
func halves(data []byte, cut int) io.Reader {
	return io.MultiReader(bytes.NewReader(data[:cut]), bytes.NewReader(data[cut:]))
}

var fuzzTypes = []zmq4.SocketType{zmq4.Router, zmq4.Dealer, zmq4.Pub, zmq4.Sub}

func FuzzInboundStream(f *testing.F) {
	hello := rawHello("DEALER", "fuzz")
	frames := func(b ...[]byte) []byte {
		out := append([]byte(nil), hello...)
		for _, x := range b {
			out = append(out, x...)
		}
		return out
	}
	f.Add(frames(rawFrame(flagMore, []byte("a")), rawFrame(0, make([]byte, 300))), uint16(70), uint8(0))
	f.Add(frames(rawFrame(0, nil), rawFrame(flagMore, make([]byte, 255)), rawFrame(0, make([]byte, 256))), uint16(3), uint8(0))
	f.Add(frames(rawCommand("PING", []byte{0, 1, 'x'}), rawCommand("PONG", []byte("x")), rawFrame(0, []byte("m"))), uint16(90), uint8(0))
	f.Add(frames(longHeader(0, 1<<40)), uint16(75), uint8(0))
	f.Add(frames(longHeader(0, fuzzMaxFrame), make([]byte, fuzzMaxFrame)), uint16(100), uint8(0))
	f.Add(frames([]byte{0x08, 1, 'x'}), uint16(0), uint8(0))
	f.Add(append(ourGreeting[:], rawCommand("READY", []byte{11, 'S', 'o', 'c', 'k', 'e', 't', '-', 'T', 'y', 'p', 'e', 0, 0, 0, 50, 'D'})...), uint16(64), uint8(0))
	f.Add(append(ourGreeting[:], rawCommand("READY", props("Socket-Type", "FOO"))...), uint16(1), uint8(0))
	sub := append(append([]byte(nil), ourGreeting[:]...), rawCommand("READY", props("Socket-Type", "SUB"))...)
	f.Add(append(sub, append(rawCommand("SUBSCRIBE", []byte("t")), rawFrame(0, []byte("\x01topic"))...)...), uint16(80), uint8(2))
	f.Add(append(append([]byte(nil), ourGreeting[:]...), rawCommand("READY", props("socket-type", "PUB", "identity", "x"))...), uint16(9), uint8(3))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"), uint16(4), uint8(1))

	f.Fuzz(func(t *testing.T, data []byte, split uint16, mode uint8) {
		cut := int(split) % (len(data) + 1)
		local := fuzzTypes[int(mode)%len(fuzzTypes)]

		// 1. zmq4's own reader behind the validator, as in production: it
		// must neither panic nor see an unchecked frame.
		in := newInbound(bufio.NewReaderSize(halves(data, cut), 256), fuzzMaxFrame, local)
		var seen bytes.Buffer
		zc, err := zmq4.Open(fuzzConn{io.TeeReader(in, &seen)}, null.Security(), local, zmq4.SocketIdentity("fuzz"), true, nil)
		if err == nil {
			for range 1000 {
				if _, err := zc.RecvMsg(); err != nil {
					break
				}
			}
		}
		checkStream(t, seen.Bytes(), fuzzMaxFrame)

		// 2. Odd-sized reads straight from the validator.
		in = newInbound(bufio.NewReaderSize(halves(data, cut), 256), fuzzMaxFrame, local)
		var out bytes.Buffer
		buf := make([]byte, 1+int(mode)%13)
		for range 1 << 16 {
			n, err := in.Read(buf)
			out.Write(buf[:n])
			if err != nil {
				var de *dropError
				if !errors.As(err, &de) {
					t.Fatalf("validator returned %T %v, want *dropError", err, err)
				}
				break
			}
		}
		checkStream(t, out.Bytes(), fuzzMaxFrame)
	})
}

// checkStream is an independent reading of what the validator let through:
// a valid NULL greeting, READY first, properties within bounds, only
// allowed flags, no frame over maxFrame, no command over maxCommand.
// A stream may end anywhere.
func checkStream(t *testing.T, b []byte, maxFrame uint64) {
	t.Helper()
	if len(b) == 0 {
		return
	}
	if len(b) < greetingLen {
		t.Fatalf("partial greeting passed: % x", b) // held until validated
	}
	g := b[:greetingLen]
	if g[0] != sigHeader || g[9] != sigFooter || g[10] < 3 || !bytes.Equal(g[12:32], ourGreeting[12:32]) || g[32] > 1 {
		t.Fatalf("bad greeting passed: % x", g)
	}
	b = b[greetingLen:]
	first, more := true, false
	for len(b) > 0 {
		if len(b) < 2 {
			return
		}
		flags, size, hl := b[0], uint64(b[1]), 2
		if flags&^(flagMore|flagLong|flagCommand) != 0 {
			t.Fatalf("flags %#x passed", flags)
		}
		if flags&flagLong != 0 {
			if len(b) < 9 {
				return
			}
			size, hl = binary.BigEndian.Uint64(b[1:9]), 9
		}
		if size > maxFrame {
			t.Fatalf("frame of %d bytes passed, MaxFrame %d", size, maxFrame)
		}
		isCmd := flags&flagCommand != 0
		if first && !isCmd {
			t.Fatalf("message frame before READY passed")
		}
		if isCmd && (flags&flagMore != 0 || more || size > maxCommand) {
			t.Fatalf("bad command frame passed: flags %#x, size %d, inside message %v", flags, size, more)
		}
		b = b[hl:]
		if uint64(len(b)) < size {
			if isCmd {
				t.Fatalf("incomplete command passed")
			}
			return
		}
		body := b[:size]
		b = b[size:]
		if isCmd {
			if len(body) == 0 || int(body[0]) == 0 || 1+int(body[0]) > len(body) {
				t.Fatalf("malformed command passed: % x", body)
			}
			name := string(body[1 : 1+body[0]])
			if !first || name != "READY" {
				t.Fatalf("command %q passed (first frame: %v): zmq4 delivers commands as messages", name, first)
			}
			md := make(zmq4.Metadata)
			if err := md.UnmarshalZMTP(body[1+len(name):]); err != nil {
				t.Fatalf("READY properties zmq4 cannot read passed: %v", err)
			}
		} else {
			more = flags&flagMore != 0
		}
		first = false
	}
}
