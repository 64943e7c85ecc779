package link

import (
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/testenv"
	"github.com/shoal-dev/shoal/internal/zsock"
	"github.com/shoal-dev/shoal/wire"
)

// fakeBroker is a real ROUTER socket on loopback standing in for a broker:
// it hands every received message to the test on a channel.
type fakeBroker struct {
	t    *testing.T
	sock zsock.Socket
	msgs chan [][]byte
}

func listenBroker(t *testing.T, endpoint string) *fakeBroker {
	t.Helper()
	s, err := zsock.Listen(zsock.Router, endpoint, zsock.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b := &fakeBroker{t: t, sock: s, msgs: make(chan [][]byte, 1024)}
	go func() {
		for {
			frames, err := s.Recv()
			if err != nil {
				return
			}
			// frames[0] is shared by zsock between messages: copy it.
			frames[0] = append([]byte(nil), frames[0]...)
			b.msgs <- frames
		}
	}()
	t.Cleanup(func() { s.Close() })
	return b
}

func (b *fakeBroker) endpoint() string { return "tcp://" + b.sock.Addr().String() }

// next returns the next message whose command is not HEARTBEAT.
func (b *fakeBroker) next(within time.Duration) (id []byte, m wire.Message) {
	b.t.Helper()
	deadline := time.After(within)
	for {
		select {
		case frames := <-b.msgs:
			m, err := wire.Parse(frames[1:])
			if err != nil {
				b.t.Fatalf("broker got a malformed message %q: %v", frames, err)
			}
			if m.Cmd != wire.CmdHeartbeat {
				return frames[0], m
			}
		case <-deadline:
			b.t.Fatalf("broker got nothing but heartbeats within %v", within)
		}
	}
}

// OnUp's READY reaches the broker before any batched envelope: Send stays
// closed while OnUp runs. Envelopes queued together leave in order,
// several per message.
func TestReadyFirstThenBatchesInOrder(t *testing.T) {
	b := listenBroker(t, "tcp://127.0.0.1:0")
	inOnUp, release := make(chan *Link), make(chan struct{})
	l := Start(Options{
		Endpoint: b.endpoint(), Heartbeat: time.Second, Batch: wire.CmdReply,
		OnUp: func(l *Link) {
			inOnUp <- l
			<-release
			if err := l.SendNow(wire.Frames(wire.CmdReady, []byte("ready"))); err != nil {
				t.Errorf("SendNow in OnUp: %v", err)
			}
		},
	})
	defer l.Close()
	<-inOnUp
	if l.Send([]byte("early")) {
		t.Fatal("Send open while OnUp runs: an envelope could overtake READY")
	}
	close(release)
	testenv.Eventually(t, 5*time.Second, "Send to open after OnUp", func() bool { return l.Send([]byte("0")) })
	const n = 500
	for i := 1; i < n; i++ {
		if !l.Send([]byte(strconv.Itoa(i))) {
			t.Fatalf("Send %d refused while up", i)
		}
	}

	_, m := b.next(5 * time.Second)
	if m.Cmd != wire.CmdReady || string(m.Body[0]) != "ready" {
		t.Fatalf("first message: %v %q, want READY", m.Cmd, m.Body)
	}
	got, messages := 0, 0
	for got < n {
		_, m := b.next(5 * time.Second)
		if m.Cmd != wire.CmdReply {
			t.Fatalf("batch command %v, want REPLY", m.Cmd)
		}
		messages++
		for _, env := range m.Body {
			if string(env) != strconv.Itoa(got) {
				t.Fatalf("envelope %d is %q: out of order or lost", got, env)
			}
			got++
		}
	}
	if messages >= n {
		t.Errorf("%d envelopes took %d messages: no batching", n, messages)
	}
	t.Logf("%d envelopes in %d messages", n, messages)
}

// A link heartbeats on its own, and a broker that stops answering is
// declared dead after Liveness intervals: OnDown runs and the link dials a
// fresh socket (a new identity, so no stale ROUTER entry eats messages).
func TestSilentBrokerIsDroppedAndRedialed(t *testing.T) {
	b := listenBroker(t, "tcp://127.0.0.1:0")
	var downs atomic.Int32
	hb := 20 * time.Millisecond
	start := time.Now()
	l := Start(Options{Endpoint: b.endpoint(), Heartbeat: hb, Liveness: 3,
		OnDown: func(*Link) { downs.Add(1) }})
	defer l.Close()

	// The fake broker never answers: every message it gets is a heartbeat.
	var ids []string
	beats := 0
	deadline := time.After(5 * time.Second)
	for len(ids) < 2 {
		select {
		case frames := <-b.msgs:
			m, err := wire.Parse(frames[1:])
			if err != nil || m.Cmd != wire.CmdHeartbeat {
				t.Fatalf("got %v %v, want only heartbeats", m.Cmd, err)
			}
			beats++
			if id := string(frames[0]); len(ids) == 0 || ids[len(ids)-1] != id {
				ids = append(ids, id)
			}
		case <-deadline:
			t.Fatalf("after %d heartbeats from %d identities, no redial", beats, len(ids))
		}
	}
	took := time.Since(start)
	testenv.Eventually(t, time.Second, "OnDown", func() bool { return downs.Load() >= 1 })
	if took < 3*hb {
		t.Errorf("redialed after %v: before liveness (3 × %v) ran out", took, hb)
	}
	if l.Connects() < 2 {
		t.Errorf("Connects = %d after a redial", l.Connects())
	}
	t.Logf("%d heartbeats, redialed after %v with a new identity", beats, took)
}

// While no broker listens Send refuses (the caller fails fast instead of
// queueing into nothing); when one comes up the link connects by itself,
// and after that broker dies and another binds the same port, it
// reconnects again.
func TestSendRefusedWhileDownAndReconnects(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	var mu sync.Mutex
	var events []string
	l := Start(Options{Endpoint: "tcp://" + addr, Heartbeat: 50 * time.Millisecond,
		OnUp:   func(*Link) { mu.Lock(); events = append(events, "up"); mu.Unlock() },
		OnDown: func(*Link) { mu.Lock(); events = append(events, "down"); mu.Unlock() }})
	defer l.Close()
	if l.Send([]byte("x")) {
		t.Fatal("Send accepted with no broker listening")
	}
	if err := l.SendNow(wire.Frames(wire.CmdHeartbeat)); err != ErrDown {
		t.Fatalf("SendNow while down: %v, want ErrDown", err)
	}

	for round := range 2 {
		b := listenBroker(t, "tcp://"+addr)
		testenv.Eventually(t, 5*time.Second, fmt.Sprintf("connect %d", round+1), l.Up)
		if !l.Send([]byte("hello")) {
			t.Fatal("Send refused while up")
		}
		if _, m := b.next(5 * time.Second); m.Cmd != wire.CmdRequest || string(m.Body[0]) != "hello" {
			t.Fatalf("round %d: got %v %q", round, m.Cmd, m.Body)
		}
		b.sock.Close()
		// A redial can still reach the closing broker and be closed by it
		// an instant later: wait for a quiet "down".
		testenv.Eventually(t, 5*time.Second, "link down after the broker closed", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(events) > 0 && events[len(events)-1] == "down" && !l.Up()
		})
	}
	time.Sleep(100 * time.Millisecond) // no broker listens: nothing may follow
	mu.Lock()
	defer mu.Unlock()
	for i, e := range events {
		if want := []string{"up", "down"}[i%2]; e != want {
			t.Fatalf("callbacks ran as %v: OnUp and OnDown must alternate", events)
		}
	}
	if len(events)%2 != 0 || len(events) < 4 {
		t.Errorf("callbacks ran as %v, want at least two up/down pairs ending down", events)
	}
}

// Messages from the broker reach Handle, heartbeats do not, and a
// malformed message is dropped without taking the link down.
func TestHandleSkipsHeartbeatsAndMalformed(t *testing.T) {
	b := listenBroker(t, "tcp://127.0.0.1:0")
	got := make(chan wire.Message, 8)
	l := Start(Options{Endpoint: b.endpoint(), Heartbeat: 20 * time.Millisecond,
		OnUp: func(l *Link) { l.SendNow(wire.Frames(wire.CmdReady, []byte("r"))) },
		Handle: func(_ *Link, m wire.Message) {
			m.Body = append([][]byte(nil), m.Body...)
			got <- m
		}})
	defer l.Close()
	id, _ := b.next(5 * time.Second) // READY: the peer's identity
	send := func(frames ...[]byte) {
		if err := b.sock.Send(append([][]byte{id}, frames...)); err != nil {
			t.Fatal(err)
		}
	}
	send(wire.Frames(wire.CmdHeartbeat)...)
	send([]byte("SHL9"), []byte{3}, []byte("bad version"))
	send([]byte(wire.Version), []byte{0xee})
	send(wire.Frames(wire.CmdRequest, []byte("one"), []byte("two"))...)
	select {
	case m := <-got:
		if m.Cmd != wire.CmdRequest || len(m.Body) != 2 || string(m.Body[1]) != "two" {
			t.Errorf("Handle got %v %q", m.Cmd, m.Body)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Handle got nothing")
	}
	select {
	case m := <-got:
		t.Errorf("Handle also got %v %q", m.Cmd, m.Body)
	default:
	}
	if !l.Up() || l.Connects() != 1 {
		t.Errorf("after malformed input: up %v, connects %d", l.Up(), l.Connects())
	}
}

// Close sends what is queued before it stops, and Send refuses after it.
func TestCloseFlushesQueue(t *testing.T) {
	b := listenBroker(t, "tcp://127.0.0.1:0")
	l := Start(Options{Endpoint: b.endpoint()})
	testenv.Eventually(t, 5*time.Second, "link up", l.Up)
	const n = 200
	for i := range n {
		l.Send([]byte(strconv.Itoa(i)))
	}
	l.Close()
	if l.Send([]byte("late")) {
		t.Error("Send accepted after Close")
	}
	for got := 0; got < n; {
		_, m := b.next(5 * time.Second)
		got += len(m.Body)
	}
}
