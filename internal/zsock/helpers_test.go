package zsock

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/testenv"
)

// quiet keeps drop logs out of test output unless -v asks for them.
func quiet() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func testOptions() Options {
	return Options{
		HandshakeTimeout: 2 * time.Second,
		WriteTimeout:     2 * time.Second,
		Logger:           quiet(),
	}
}

func listen(t testing.TB, typ Type, o Options) Socket {
	t.Helper()
	s, err := Listen(typ, "tcp://127.0.0.1:0", o)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func dial(t testing.TB, typ Type, l Socket, o Options) Socket {
	t.Helper()
	s, err := Dial(typ, endpoint(l), o)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func endpoint(s Socket) string { return "tcp://" + s.Addr().String() }

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type recvResult struct {
	frames [][]byte
	err    error
}

// recvWithin receives one message or fails the test after d.
func recvWithin(t testing.TB, s Socket, d time.Duration) ([][]byte, error) {
	t.Helper()
	ch := make(chan recvResult, 1)
	go func() {
		f, err := s.Recv()
		ch <- recvResult{f, err}
	}()
	select {
	case r := <-ch:
		return r.frames, r.err
	case <-time.After(d):
		t.Fatalf("Recv did not return within %v", d)
		return nil, nil
	}
}

// roundTrip sends one message from a dealer through the router's echo
// goroutine-less loop: the router receives it here and echoes it back.
func roundTrip(t testing.TB, router, dealer Socket) {
	t.Helper()
	want := []byte("ping-" + time.Now().String())
	if err := dealer.Send([][]byte{want}); err != nil {
		t.Fatalf("dealer Send: %v", err)
	}
	for {
		got, err := recvWithin(t, router, 5*time.Second)
		if err != nil {
			t.Fatalf("router Recv: %v", err)
		}
		if len(got) != 2 || !bytes.Equal(got[1], want) {
			continue // a leftover from an earlier exchange
		}
		if err := router.Send([][]byte{got[0], []byte("pong")}); err != nil {
			t.Fatalf("router Send: %v", err)
		}
		break
	}
	got, err := recvWithin(t, dealer, 5*time.Second)
	if err != nil {
		t.Fatalf("dealer Recv: %v", err)
	}
	if len(got) != 1 || string(got[0]) != "pong" {
		t.Fatalf("dealer got %q, want pong", got)
	}
}

func dropped(reason string) uint64 { return Stats().Dropped[reason] }

// ---- raw ZMTP for hostile clients ----

func rawFrame(flags byte, body []byte) []byte {
	return append(appendHeader(nil, flags, uint64(len(body))), body...)
}

func rawCommand(name string, body []byte) []byte {
	b := append([]byte{byte(len(name))}, name...)
	return rawFrame(flagCommand, append(b, body...))
}

func props(kv ...string) []byte {
	var b []byte
	for i := 0; i+1 < len(kv); i += 2 {
		b = append(b, byte(len(kv[i])))
		b = append(b, kv[i]...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(kv[i+1])))
		b = append(b, kv[i+1]...)
	}
	return b
}

// rawHello is a client's greeting and READY.
func rawHello(sockType, identity string) []byte {
	b := append([]byte(nil), ourGreeting[:]...)
	return append(b, rawCommand("READY", props("Socket-Type", sockType, "Identity", identity))...)
}

func rawDial(t testing.TB, s Socket) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatalf("raw dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// expectClosed reads until the peer closes the connection.
func expectClosed(t testing.TB, c net.Conn, within time.Duration) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(within))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %v", within)
	}
}

// countingConn counts Write calls on a net.Conn. It is not a *net.TCPConn,
// so conn writes to it through the deadline path (see conn.send).
//
// It ignores write deadlines: a goroutine descheduled for more than
// inlineWait between arming the inline deadline and writing (seen under
// -race on a loaded 2-core machine, with the code before the direct path
// too) fails the write untried, and the writer goroutine then writes the
// message: two writes for one message, through no fault of the framing
// this counts. The peers in these tests read everything, so a Write never
// waits for long.
type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

func (c countingConn) SetWriteDeadline(time.Time) error { return nil }

func (c countingConn) SetDeadline(t time.Time) error { return c.Conn.SetReadDeadline(t) }

func openFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		testenv.Missing(t, fmt.Sprintf("cannot count descriptors: %v", err))
	}
	return len(ents)
}
