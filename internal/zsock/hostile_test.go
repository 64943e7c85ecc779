package zsock

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// longHeader is a 9-byte long-frame header announcing size bytes.
func longHeader(flags byte, size uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{flags | flagLong}, size)
}

func greetingWith(edit func(g []byte)) []byte {
	g := append([]byte(nil), ourGreeting[:]...)
	edit(g)
	return g
}

func TestOversizedFrameDropped(t *testing.T) {
	r := listen(t, Router, testOptions())
	hello := rawHello("DEALER", "big")
	cases := []struct {
		name  string
		bytes []byte
	}{
		{"message frame before READY", append(ourGreeting[:], longHeader(0, 1<<40)...)},
		{"message frame after READY", append(hello, longHeader(0, 1<<40)...)},
		{"max uint64", append(hello, longHeader(flagMore, ^uint64(0))...)},
		{"just over MaxFrame", append(hello, longHeader(0, DefaultMaxFrame+1)...)},
		{"command over 64 KiB", append(hello, longHeader(flagCommand, maxCommand+1)...)},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// A fresh identity per case (same length): the previous case's
			// connection may not have released "big" yet.
			msg := bytes.Replace(tc.bytes, []byte("big"), fmt.Appendf(nil, "b%02d", i), 1)
			before := dropped(ReasonOversizedFrame)
			c := rawDial(t, r)
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			expectClosed(t, c, 5*time.Second)
			waitFor(t, 5*time.Second, "oversized_frame counted", func() bool { return dropped(ReasonOversizedFrame) > before })
		})
	}
	// The process is alive (it would have died of OOM) and the router serves.
	roundTrip(t, r, dial(t, Dealer, r, testOptions()))
}

func TestSilentClientDoesNotBlockAccept(t *testing.T) {
	o := testOptions()
	o.HandshakeTimeout = 500 * time.Millisecond
	r := listen(t, Router, o)
	before := dropped(ReasonHandshakeTimeout)

	silent := rawDial(t, r)
	half := rawDial(t, r)
	if _, err := half.Write(ourGreeting[:40]); err != nil { // a greeting that stops halfway
		t.Fatal(err)
	}
	opened := time.Now()

	start := time.Now()
	d := dial(t, Dealer, r, o)
	roundTrip(t, r, d)
	if el := time.Since(start); el > o.HandshakeTimeout/2 {
		t.Fatalf("a normal DEALER needed %v next to a silent client (HandshakeTimeout %v)", el, o.HandshakeTimeout)
	}

	expectClosed(t, silent, 5*time.Second)
	expectClosed(t, half, 5*time.Second)
	if el := time.Since(opened); el < o.HandshakeTimeout-50*time.Millisecond {
		t.Fatalf("silent client closed after %v, before HandshakeTimeout %v", el, o.HandshakeTimeout)
	}
	waitFor(t, 5*time.Second, "handshake_timeout counted twice", func() bool { return dropped(ReasonHandshakeTimeout) >= before+2 })
	roundTrip(t, r, d)
}

func TestMalformedInputDropped(t *testing.T) {
	r := listen(t, Router, testOptions())
	hello := func(b ...[]byte) []byte {
		out := rawHello("DEALER", "")
		for _, x := range b {
			out = append(out, x...)
		}
		return out
	}
	withReady := func(body []byte) []byte {
		return append(append([]byte(nil), ourGreeting[:]...), rawCommand("READY", body)...)
	}
	cases := []struct {
		name   string
		bytes  []byte
		reason string
	}{
		// Greeting.
		{"HTTP request", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), ReasonBadGreeting},
		{"bad signature footer", greetingWith(func(g []byte) { g[9] = 0 }), ReasonBadGreeting},
		{"ZMTP 2.0", greetingWith(func(g []byte) { g[10] = 1 }), ReasonBadGreeting},
		{"PLAIN mechanism", greetingWith(func(g []byte) { copy(g[12:32], "PLAIN\x00") }), ReasonBadGreeting},
		{"CURVE mechanism", greetingWith(func(g []byte) { copy(g[12:32], "CURVE") }), ReasonBadGreeting},
		{"as-server 7", greetingWith(func(g []byte) { g[32] = 7 }), ReasonBadGreeting},
		// READY.
		{"READY property value runs past the frame (zmq4 panics)", withReady([]byte{11, 'S', 'o', 'c', 'k', 'e', 't', '-', 'T', 'y', 'p', 'e', 0, 0, 0, 50, 'D'}), ReasonMalformedCommand},
		{"READY property name runs past the frame", withReady([]byte{200, 'a'}), ReasonMalformedCommand},
		{"READY value length cut short", withReady([]byte{3, 'a', 'b', 'c', 0, 0}), ReasonMalformedCommand},
		{"READY empty property name", withReady([]byte{0, 0, 0, 0, 0}), ReasonMalformedCommand},
		{"READY without Socket-Type", withReady(props("Identity", "x")), ReasonIncompatiblePeer},
		{"READY unknown Socket-Type (zmq4 panics)", withReady(props("Socket-Type", "FOO")), ReasonIncompatiblePeer},
		{"READY incompatible Socket-Type", withReady(props("Socket-Type", "PUB")), ReasonIncompatiblePeer},
		{"READY identity over 255 bytes", withReady(props("Socket-Type", "DEALER", "Identity", string(make([]byte, 256)))), ReasonMalformedCommand},
		{"HELLO instead of READY", append(ourGreeting[:], rawCommand("HELLO", nil)...), ReasonMalformedCommand},
		{"message before READY", append(ourGreeting[:], rawFrame(0, []byte("x"))...), ReasonMalformedCommand},
		// After the handshake.
		{"reserved flag bit", hello([]byte{0x08, 1, 'x'}), ReasonBadFlags},
		{"all flag bits", hello([]byte{0xff, 1, 'x'}), ReasonBadFlags},
		{"command with MORE", hello([]byte{flagCommand | flagMore, 5, 4, 'P', 'I', 'N', 'G'}), ReasonBadFlags},
		{"command inside a multipart message", hello(rawFrame(flagMore, []byte("a")), rawCommand("PING", []byte{0, 0})), ReasonBadFlags},
		{"empty command", hello(rawFrame(flagCommand, nil)), ReasonMalformedCommand},
		{"command name past the frame", hello(rawFrame(flagCommand, []byte{10, 'P'})), ReasonMalformedCommand},
		{"second READY", hello(rawCommand("READY", props("Socket-Type", "DEALER"))), ReasonMalformedCommand},
		{"unknown command", hello(rawCommand("HELLO", nil)), ReasonMalformedCommand},
		{"SUBSCRIBE to a ROUTER", hello(rawCommand("SUBSCRIBE", []byte("x"))), ReasonMalformedCommand},
		{"PING too long", hello(rawCommand("PING", make([]byte, 30))), ReasonMalformedCommand},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := dropped(tc.reason)
			c := rawDial(t, r)
			if _, err := c.Write(tc.bytes); err != nil {
				t.Fatal(err)
			}
			expectClosed(t, c, 5*time.Second)
			waitFor(t, 5*time.Second, tc.reason+" counted", func() bool { return dropped(tc.reason) > before })
		})
	}
	roundTrip(t, r, dial(t, Dealer, r, testOptions()))
}

func TestRandomGarbage(t *testing.T) {
	o := testOptions()
	o.HandshakeTimeout = 300 * time.Millisecond
	o.MaxFrame = 1 << 20
	r := listen(t, Router, o)
	d := dial(t, Dealer, r, o)
	for seed := uint64(1); seed <= 16; seed++ {
		rng := rand.New(rand.NewPCG(seed, seed))
		garbage := make([]byte, 64+rng.IntN(8192))
		for i := range garbage {
			garbage[i] = byte(rng.Uint32())
		}
		for _, after := range []bool{false, true} {
			t.Run(fmt.Sprintf("seed %d after handshake %v", seed, after), func(t *testing.T) {
				c := rawDial(t, r)
				var b []byte
				if after {
					b = rawHello("DEALER", fmt.Sprintf("garbage-%d", seed))
				}
				if _, err := c.Write(append(b, garbage...)); err != nil {
					return // already dropped: fine
				}
				// Either we drop it, or it waits for bytes a frame header
				// announced: then the client leaves.
				_ = c.SetReadDeadline(time.Now().Add(time.Second))
				_, _ = io.Copy(io.Discard, c)
				c.Close()
			})
		}
		roundTrip(t, r, d)
	}
}

func TestBadGreetingsDoNotLeakDescriptors(t *testing.T) {
	r := listen(t, Router, testOptions())
	d := dial(t, Dealer, r, testOptions())
	roundTrip(t, r, d)
	start := openFDs(t)
	bad := [][]byte{
		[]byte("GET / HTTP/1.0\r\n\r\n"),
		greetingWith(func(g []byte) { g[10] = 9; g[11] = 9; copy(g[12:32], "PLAIN") }),
		greetingWith(func(g []byte) { g[9] = 0x42 }),
	}
	for i := range 500 {
		c, err := net.Dial("tcp", r.Addr().String())
		if err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		_, _ = c.Write(bad[i%len(bad)])
		c.Close()
	}
	waitFor(t, 10*time.Second, fmt.Sprintf("descriptors back near %d", start), func() bool {
		return openFDs(t) <= start+5
	})
	roundTrip(t, r, d)
}

func TestStalledPeerIsDisconnected(t *testing.T) {
	o := testOptions()
	o.WriteTimeout = 300 * time.Millisecond
	r := listen(t, Router, o)
	good := dial(t, Dealer, r, testOptions())
	roundTrip(t, r, good)

	// A DEALER that completes the handshake and never reads, with a small
	// receive buffer so the kernel cannot soak up much.
	dialer := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	stalled, err := dialer.Dial("tcp", r.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	if _, err := stalled.Write(append(rawHello("DEALER", "stalled"), rawFrame(0, []byte("hi"))...)); err != nil {
		t.Fatal(err)
	}
	if got, err := recvWithin(t, r, 5*time.Second); err != nil || string(got[0]) != "stalled" {
		t.Fatalf("router got %q, %v", got, err)
	}

	// Either way out counts: the backlog overflowing (slow_peer) or the
	// writer goroutine giving up after WriteTimeout (write_timeout).
	gone := func() uint64 { return dropped(ReasonWriteTimeout) + dropped(ReasonSlowPeer) }
	before := gone()
	big := make([]byte, 1<<20)
	deadline := time.Now().Add(20 * time.Second)
	var sendErr error
	for gone() == before {
		if time.Now().After(deadline) {
			t.Fatal("the stalled peer was never disconnected")
		}
		start := time.Now()
		sendErr = r.Send([][]byte{[]byte("stalled"), big})
		if el := time.Since(start); el > o.WriteTimeout+time.Second {
			t.Fatalf("Send to a stalled peer blocked %v (WriteTimeout %v)", el, o.WriteTimeout)
		}
		if sendErr != nil {
			break
		}
	}
	if sendErr == nil {
		t.Log("the drop happened between sends")
	} else if !errors.Is(sendErr, ErrPeerGone) {
		t.Fatalf("Send: %v, want ErrPeerGone", sendErr)
	}
	waitFor(t, 5*time.Second, "slow_peer or write_timeout counted", func() bool { return gone() > before })

	// Sends to the dropped identity return at once; the good peer is served.
	start := time.Now()
	_ = r.Send([][]byte{[]byte("stalled"), big})
	if el := time.Since(start); el > 100*time.Millisecond {
		t.Fatalf("Send to the dropped peer took %v", el)
	}
	for range 3 {
		roundTrip(t, r, good)
	}
	expectClosed(t, stalled, 30*time.Second) // after draining what the kernel holds
}

// readRawFrame reads one ZMTP frame.
func readRawFrame(t testing.TB, br *bufio.Reader) (byte, []byte) {
	t.Helper()
	var h [9]byte
	if _, err := io.ReadFull(br, h[:2]); err != nil {
		t.Fatalf("read frame header: %v", err)
	}
	size := uint64(h[1])
	if h[0]&flagLong != 0 {
		if _, err := io.ReadFull(br, h[2:9]); err != nil {
			t.Fatal(err)
		}
		size = binary.BigEndian.Uint64(h[1:9])
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(br, body); err != nil {
		t.Fatalf("read frame body: %v", err)
	}
	return h[0], body
}

// rawHandshake connects, sends greeting and READY, and reads the server's.
func rawHandshake(t testing.TB, s Socket, sockType, identity string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c := rawDial(t, s)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(rawHello(sockType, identity)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	var g [greetingLen]byte
	if _, err := io.ReadFull(br, g[:]); err != nil {
		t.Fatal(err)
	}
	if g != ourGreeting {
		t.Fatalf("server greeting % x", g)
	}
	if fl, body := readRawFrame(t, br); fl != flagCommand || !bytes.HasPrefix(body, []byte("\x05READY")) {
		t.Fatalf("server sent %#x %q, want READY", fl, body)
	}
	return c, br
}

func TestPingAnsweredAndSwallowed(t *testing.T) {
	r := listen(t, Router, testOptions())
	c, br := rawHandshake(t, r, "DEALER", "pinger")
	if _, err := c.Write(rawCommand("PING", []byte{0, 10, 'c', 't', 'x'})); err != nil {
		t.Fatal(err)
	}
	fl, body := readRawFrame(t, br)
	if fl != flagCommand || string(body) != "\x04PONGctx" {
		t.Fatalf("got %#x %q, want PONG with the PING's context", fl, body)
	}
	if _, err := c.Write(append(rawCommand("PONG", nil), rawFrame(0, []byte("after"))...)); err != nil {
		t.Fatal(err)
	}
	got, err := recvWithin(t, r, 5*time.Second)
	if err != nil || len(got) != 2 || string(got[1]) != "after" {
		t.Fatalf("router got %q, %v; commands must not reach the application", got, err)
	}
}

func TestPubTakesSubscribeCommands(t *testing.T) {
	p := listen(t, Pub, testOptions())
	c, br := rawHandshake(t, p, "SUB", "")
	// ZMTP 3.1 peers subscribe with a command; zmq4 only knows messages.
	if _, err := c.Write(rawCommand("SUBSCRIBE", []byte("news"))); err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 1)
	go func() {
		_, body := readRawFrame(t, br)
		got <- body
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := p.Send([][]byte{[]byte("news-1")}); err != nil {
			t.Fatal(err)
		}
		select {
		case b := <-got:
			if string(b) != "news-1" {
				t.Fatalf("got %q", b)
			}
			// Anything but a subscription is refused on a PUB.
			before := dropped(ReasonUnexpectedMessage)
			if _, err := c.Write(rawFrame(0, []byte("hello"))); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 5*time.Second, "unexpected_message counted", func() bool { return dropped(ReasonUnexpectedMessage) > before })
			return
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("SUBSCRIBE command had no effect")
		}
	}
}

func TestOneWritePerMessage(t *testing.T) {
	const n = 200
	msg := [][]byte{[]byte("a"), make([]byte, 300), []byte(""), make([]byte, 1000)}

	var routerWrites, dealerWrites atomic.Int64
	ro := testOptions()
	ro.wrapRaw = func(c net.Conn) net.Conn { return countingConn{c, &routerWrites} }
	r := listen(t, Router, ro)
	do := testOptions()
	do.Identity = []byte("counted")
	do.wrapRaw = func(c net.Conn) net.Conn { return countingConn{c, &dealerWrites} }
	d := dial(t, Dealer, r, do)
	roundTrip(t, r, d)

	t.Run("DEALER", func(t *testing.T) {
		w0 := dealerWrites.Load()
		for range n {
			if err := d.Send(msg); err != nil {
				t.Fatal(err)
			}
		}
		for range n {
			got, err := recvWithin(t, r, 5*time.Second)
			if err != nil || !equalFrames(got[1:], msg) {
				t.Fatalf("router got %v, %v", frameLens(got), err)
			}
		}
		if w := dealerWrites.Load() - w0; w != n {
			t.Fatalf("%d writes for %d messages of %d frames, want one per message", w, n, len(msg))
		}
	})
	t.Run("ROUTER", func(t *testing.T) {
		w0 := routerWrites.Load()
		out := append([][]byte{[]byte("counted")}, msg...)
		for range n {
			if err := r.Send(out); err != nil {
				t.Fatal(err)
			}
		}
		for range n {
			got, err := recvWithin(t, d, 5*time.Second)
			if err != nil || !equalFrames(got, msg) {
				t.Fatalf("dealer got %v, %v", frameLens(got), err)
			}
		}
		if w := routerWrites.Load() - w0; w != n {
			t.Fatalf("%d writes for %d messages of %d frames, want one per message", w, n, len(msg))
		}
	})
}

// rawListener accepts TCP connections and never says a word.
func rawListener(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				for _, c := range conns {
					c.Close()
				}
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return ln
}

// zmq4 never closes a connection whose handshake it rejected; the listener
// closes one that zmq4 took from Accept but never reads from.
func TestConnectionZmq4NeverReadsIsClosed(t *testing.T) {
	o, err := testOptions().withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	o.HandshakeTimeout = 200 * time.Millisecond
	st := newSockState(Router, o, false)
	ln, err := tcpTransport{}.Listen(context.WithValue(context.Background(), stateKey{}, st), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(rawHello("DEALER", "x")); err != nil {
		t.Fatal(err)
	}
	before := dropped(ReasonHandshakeRejected)
	if _, err := ln.Accept(); err != nil { // as zmq4 would, then give up on it
		t.Fatal(err)
	}
	expectClosed(t, c, 5*time.Second)
	waitFor(t, 5*time.Second, "handshake_rejected counted", func() bool { return dropped(ReasonHandshakeRejected) > before })
}

func TestWriteMetrics(t *testing.T) {
	var b strings.Builder
	WriteMetrics(&b)
	for _, want := range []string{
		"shoal_zmtp_conns_accepted_total ",
		`shoal_zmtp_conns_dropped_total{reason="oversized_frame"} `,
		`shoal_zmtp_conns_dropped_total{reason="write_timeout"} `,
		"shoal_zmtp_conns_open ",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("WriteMetrics lacks %q:\n%s", want, b.String())
		}
	}
}
