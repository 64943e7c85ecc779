package zsock

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"runtime/metrics"
	"sync"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/testenv"
)

// Tests of the direct send path: ROUTER listeners and DEALER dialers frame
// messages themselves and write them into the connection (conn.writeMsg),
// without zmq4's writers.

// checkNoLateZmq4Writes fails if zmq4 wrote to a direct connection after
// its handshake during the test (the direct path's invariant).
func checkNoLateZmq4Writes(t *testing.T) {
	t.Helper()
	before := lateZmq4Writes.Load()
	t.Cleanup(func() {
		if n := lateZmq4Writes.Load() - before; n != 0 {
			t.Errorf("zmq4 wrote %d times to a direct connection after its handshake", n)
		}
	})
}

// pattern is a body that names its message: any mix-up of bytes between
// messages shows.
func pattern(n int, sender, seq int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(sender*31 + seq*7 + i)
	}
	return b
}

// taggedMsg is [tag, frame sized frameSizes[0], ..., frameSizes[4]].
func taggedMsg(sender, seq int) [][]byte {
	msg := [][]byte{[]byte(fmt.Sprintf("%d/%d", sender, seq))}
	for i, n := range frameSizes {
		msg = append(msg, pattern(n, sender+i, seq))
	}
	return msg
}

func checkTagged(t testing.TB, got [][]byte) (sender, seq int) {
	t.Helper()
	if len(got) != 1+len(frameSizes) {
		t.Fatalf("message of %d frames (%v), want %d", len(got), frameLens(got), 1+len(frameSizes))
	}
	if _, err := fmt.Sscanf(string(got[0]), "%d/%d", &sender, &seq); err != nil {
		t.Fatalf("corrupted tag %q", got[0])
	}
	if want := taggedMsg(sender, seq); !equalFrames(got, want) {
		t.Fatalf("message %s corrupted: sizes %v", got[0], frameLens(got))
	}
	return sender, seq
}

func TestDirectRoundTripFrameSizes(t *testing.T) {
	checkNoLateZmq4Writes(t)
	for _, wb := range []int{0, 1000} { // default, and small: the writev path
		t.Run(fmt.Sprintf("WriteBuffer %d", wb), func(t *testing.T) {
			o := testOptions()
			o.WriteBuffer = wb
			r := listen(t, Router, o)
			echo(t, r)
			d := dial(t, Dealer, r, o)
			msgs := [][][]byte{
				{nil}, {{}}, {[]byte("x")},
				{make([]byte, 255)}, {make([]byte, 256)}, {make([]byte, 70000)},
				sizedFrames(1),
				// around bigBody, and many small frames past WriteBuffer
				{pattern(bigBody-1, 1, 1), pattern(bigBody, 2, 2), pattern(bigBody+1, 3, 3), nil},
				func() [][]byte {
					m := make([][]byte, 3000)
					for i := range m {
						m[i] = pattern(i%40, i, 5)
					}
					return m
				}(),
			}
			for i, want := range msgs {
				if err := d.Send(want); err != nil {
					t.Fatalf("Send %d: %v", i, err)
				}
				got, err := recvWithin(t, d, 5*time.Second)
				if err != nil {
					t.Fatalf("Recv %d: %v", i, err)
				}
				if !equalFrames(got, want) {
					t.Fatalf("message %d came back different: %d frames, want %d", i, len(got), len(want))
				}
			}
		})
	}
}

// Many goroutines send to several peers and to the same peer at once:
// every message arrives whole, and each sender's messages to one peer in
// the order sent.
func TestDirectConcurrentSenders(t *testing.T) {
	checkNoLateZmq4Writes(t)
	const peers, sendersPerPeer, each = 4, 4, 25
	o := testOptions()
	o.WriteTimeout = 10 * time.Second
	r := listen(t, Router, o)
	dealers := make([]Socket, peers)
	for p := range dealers {
		do := o
		do.Identity = []byte(fmt.Sprintf("peer-%d", p))
		dealers[p] = dial(t, Dealer, r, do)
		if err := dealers[p].Send([][]byte{[]byte("hello")}); err != nil {
			t.Fatal(err)
		}
	}
	for range peers { // the router learns every peer
		if _, err := recvWithin(t, r, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}

	// ROUTER -> DEALERs: sendersPerPeer goroutines per peer, all at once.
	var wg sync.WaitGroup
	for p := range peers {
		for s := range sendersPerPeer {
			wg.Add(1)
			go func() {
				defer wg.Done()
				id := []byte(fmt.Sprintf("peer-%d", p))
				for i := range each {
					if err := r.Send(append([][]byte{id}, taggedMsg(s, i)...)); err != nil {
						t.Errorf("router Send: %v", err)
						return
					}
				}
			}()
		}
	}
	// DEALERs -> ROUTER: each dealer from sendersPerPeer goroutines too.
	for p, d := range dealers {
		for s := range sendersPerPeer {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					if err := d.Send(taggedMsg(p*sendersPerPeer+s, i)); err != nil {
						t.Errorf("dealer Send: %v", err)
						return
					}
				}
			}()
		}
	}

	var rwg sync.WaitGroup
	for p, d := range dealers {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			next := make([]int, sendersPerPeer)
			for range sendersPerPeer * each {
				got, err := recvWithin(t, d, 10*time.Second)
				if err != nil {
					t.Errorf("peer %d Recv: %v", p, err)
					return
				}
				s, i := checkTagged(t, got)
				if i != next[s] {
					t.Errorf("peer %d: sender %d's message %d arrived when %d was due", p, s, i, next[s])
					return
				}
				next[s]++
			}
		}()
	}
	next := make([]int, peers*sendersPerPeer)
	for range peers * sendersPerPeer * each {
		got, err := recvWithin(t, r, 10*time.Second)
		if err != nil {
			t.Fatalf("router Recv: %v", err)
		}
		s, i := checkTagged(t, got[1:])
		if want := fmt.Sprintf("peer-%d", s/sendersPerPeer); string(got[0]) != want {
			t.Fatalf("message from sender %d came with identity %q, want %q", s, got[0], want)
		}
		if i != next[s] {
			t.Fatalf("sender %d's message %d arrived when %d was due", s, i, next[s])
		}
		next[s]++
	}
	wg.Wait()
	rwg.Wait()
}

func TestDirectSendToUnknownIdentity(t *testing.T) {
	r := listen(t, Router, testOptions())
	if err := r.Send([][]byte{[]byte("nobody"), []byte("x")}); err != nil {
		t.Fatalf("Send before any peer: %v, want nil", err)
	}
	o := testOptions()
	o.Identity = []byte("known")
	d := dial(t, Dealer, r, o)
	roundTrip(t, r, d)
	for _, id := range [][]byte{[]byte("nobody"), nil, []byte("know"), []byte("known\x00")} {
		if err := r.Send([][]byte{id, []byte("x")}); err != nil {
			t.Fatalf("Send to %q: %v, want nil (dropped)", id, err)
		}
	}
	d.Close()
	waitFor(t, 5*time.Second, "identity released", func() bool { return r.(*socket).st.lookup([]byte("known")) == nil })
	if err := r.Send([][]byte{[]byte("known"), []byte("x")}); err != nil {
		t.Fatalf("Send to a peer that left: %v, want nil (dropped)", err)
	}
}

func TestDirectDealerPeerGone(t *testing.T) {
	t.Run("router closed", func(t *testing.T) {
		r, err := Listen(Router, "tcp://127.0.0.1:0", testOptions())
		if err != nil {
			t.Fatal(err)
		}
		d := dial(t, Dealer, r, testOptions())
		roundTrip(t, r, d)
		r.Close()
		select {
		case <-d.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("Done not closed")
		}
		for range 3 {
			if err := d.Send([][]byte{[]byte("x")}); !errors.Is(err, ErrPeerGone) {
				t.Fatalf("Send: %v, want ErrPeerGone", err)
			}
		}
		d.Close()
		if err := d.Send([][]byte{[]byte("x")}); !errors.Is(err, ErrClosed) {
			t.Fatalf("Send after Close: %v, want ErrClosed", err)
		}
	})
	t.Run("connection reset under the sender", func(t *testing.T) {
		// A raw ZMTP server that completes the handshake, then resets.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		srv := make(chan net.Conn, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write(append(append([]byte(nil), ourGreeting[:]...), rawCommand("READY", props("Socket-Type", "ROUTER"))...))
			srv <- c
		}()
		d, err := Dial(Dealer, "tcp://"+ln.Addr().String(), testOptions())
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		c := <-srv
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := d.Send([][]byte{make([]byte, 1000)})
			if errors.Is(err, ErrPeerGone) {
				break
			}
			if err != nil {
				t.Fatalf("Send: %v, want nil or ErrPeerGone", err)
			}
			if time.Now().After(deadline) {
				t.Fatal("Send never reported the reset connection")
			}
			time.Sleep(time.Millisecond)
		}
	})
}

// A peer that sends no identity gets one from zsock (zmq4 would make up a
// UUID zsock cannot route by): replies reach it through the direct path.
func TestDirectAnonymousPeer(t *testing.T) {
	checkNoLateZmq4Writes(t)
	r := listen(t, Router, testOptions())
	var ids [2][]byte
	var conns [2]*bufio.Reader
	for i := range 2 {
		c, br := rawHandshake(t, r, "DEALER", "")
		conns[i] = br
		if _, err := c.Write(rawFrame(0, []byte(fmt.Sprint("anon-", i)))); err != nil {
			t.Fatal(err)
		}
		got, err := recvWithin(t, r, 5*time.Second)
		if err != nil || len(got) != 2 || string(got[1]) != fmt.Sprint("anon-", i) {
			t.Fatalf("router got %q, %v", got, err)
		}
		if len(got[0]) != 17 || got[0][0] != 0 {
			t.Fatalf("identity % x, want 17 bytes starting with a zero byte", got[0])
		}
		ids[i] = bytes.Clone(got[0])
	}
	if bytes.Equal(ids[0], ids[1]) {
		t.Fatal("two anonymous peers got the same identity")
	}
	for i := range 2 {
		if err := r.Send([][]byte{ids[i], []byte("for"), []byte(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	for i, br := range conns {
		if fl, body := readRawFrame(t, br); fl != flagMore || string(body) != "for" {
			t.Fatalf("peer %d got %#x %q", i, fl, body)
		}
		if fl, body := readRawFrame(t, br); fl != 0 || string(body) != fmt.Sprint(i) {
			t.Fatalf("peer %d got %#x %q: a message for the other peer", i, fl, body)
		}
	}
}

// The wire format of a direct message, byte for byte.
func TestDirectWireFormat(t *testing.T) {
	r := listen(t, Router, testOptions())
	c, br := rawHandshake(t, r, "DEALER", "wire")
	if _, err := c.Write(rawFrame(0, []byte("hi"))); err != nil {
		t.Fatal(err)
	}
	if _, err := recvWithin(t, r, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	frames := [][]byte{nil, []byte("a"), make([]byte, 255), make([]byte, 256), make([]byte, 70000)}
	if err := r.Send(append([][]byte{[]byte("wire")}, frames...)); err != nil {
		t.Fatal(err)
	}
	var want []byte
	for i, f := range frames {
		var fl byte
		if i < len(frames)-1 {
			fl = flagMore
		}
		if len(f) > 255 {
			want = binary.BigEndian.AppendUint64(append(want, fl|flagLong), uint64(len(f)))
		} else {
			want = append(want, fl, byte(len(f)))
		}
		want = append(want, f...)
	}
	got := make([]byte, len(want))
	if _, err := io.ReadFull(br, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("wire bytes differ from ZMTP 3.0 framing")
	}
}

// A peer that stops reading never holds up sends to other peers: there is
// no socket-wide lock on the direct path, and a send to the stalled peer
// returns within about inlineWait.
func TestDirectStalledPeerDoesNotDelayOthers(t *testing.T) {
	o := testOptions()
	o.WriteTimeout = 3 * time.Second
	o.WriteQueue = 32 << 20
	r := listen(t, Router, o)
	good := dial(t, Dealer, r, testOptions())
	roundTrip(t, r, good)

	stalled, _ := rawHandshake(t, r, "DEALER", "stalled")
	_ = stalled.SetDeadline(time.Time{})
	if _, err := stalled.Write(rawFrame(0, []byte("hi"))); err != nil {
		t.Fatal(err)
	}
	if got, err := recvWithin(t, r, 5*time.Second); err != nil || string(got[0]) != "stalled" {
		t.Fatalf("router got %q, %v", got, err)
	}

	stop := make(chan struct{})
	var worst time.Duration
	var sent int
	done := make(chan struct{})
	go func() {
		defer close(done)
		big := make([]byte, 256<<10)
		for {
			select {
			case <-stop:
				return
			default:
			}
			start := time.Now()
			err := r.Send([][]byte{[]byte("stalled"), big})
			worst = max(worst, time.Since(start))
			if err != nil {
				return // dropped as slow: fine
			}
			sent++
			time.Sleep(time.Millisecond)
		}
	}()
	// On a failure below, r's Close (cleanup) ends the sender.
	time.Sleep(50 * time.Millisecond) // let the stalled peer's backlog build
	for i := range 20 {
		start := time.Now()
		roundTrip(t, r, good)
		if el := time.Since(start); el > time.Second {
			t.Fatalf("round trip %d to a good peer took %v next to a stalled one", i, el)
		}
	}
	close(stop)
	<-done
	if worst > 500*time.Millisecond {
		t.Fatalf("a Send to the stalled peer took %v", worst)
	}
	t.Logf("%d sends of 256 KiB to the stalled peer, slowest %v", sent, worst)
}

// goroutinesCreated is the process's count of goroutines ever created.
func goroutinesCreated(t *testing.T) uint64 {
	s := []metrics.Sample{{Name: "/sched/goroutines-created:goroutines"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		testenv.Missing(t, "runtime/metrics has no /sched/goroutines-created")
	}
	return s[0].Value.Uint64()
}

// zmq4's ROUTER Send spawns a goroutine per message, its DEALER Send two:
// the direct path spawns none.
func TestDirectSendSpawnsNoGoroutines(t *testing.T) {
	checkNoLateZmq4Writes(t)
	r := listen(t, Router, testOptions())
	o := testOptions()
	o.Identity = []byte("g")
	d := dial(t, Dealer, r, o)
	roundTrip(t, r, d)

	const n = 2000
	msg := [][]byte{[]byte("g"), []byte("a"), make([]byte, 100)}
	// Receivers started before the count (Recv itself spawns nothing).
	errs := make(chan error, 2)
	for _, s := range []Socket{r, d} {
		go func() {
			for range n {
				if _, err := s.Recv(); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	runtime.GC() // GC workers start on the first cycle: not during the count
	before := goroutinesCreated(t)
	for range n {
		if err := r.Send(msg); err != nil {
			t.Fatal(err)
		}
		if err := d.Send(msg[1:]); err != nil {
			t.Fatal(err)
		}
	}
	created := goroutinesCreated(t) - before
	for range 2 {
		select {
		case err := <-errs:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("messages missing")
		}
	}
	if created > 2 {
		t.Fatalf("%d sends created %d goroutines, want none", 2*n, created)
	}
}

// The fast path leaves no write deadline armed; the writer goroutine must
// still give up on a peer that reads nothing, with no further sends to
// notice it (its own WriteTimeout deadline, not cleared under it).
func TestBacklogTimesOutWithoutFurtherSends(t *testing.T) {
	o := testOptions()
	o.WriteTimeout = 300 * time.Millisecond
	o.WriteQueue = 256 << 20 // never slow_peer here
	r := listen(t, Router, o)
	stalled, _ := rawHandshake(t, r, "DEALER", "stalled-quiet")
	_ = stalled.SetDeadline(time.Time{})
	if _, err := stalled.Write(rawFrame(0, []byte("hi"))); err != nil {
		t.Fatal(err)
	}
	if _, err := recvWithin(t, r, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	c := r.(*socket).st.lookup([]byte("stalled-quiet"))
	if c == nil {
		t.Fatal("peer not in the identity table")
	}
	before := dropped(ReasonWriteTimeout)
	big := make([]byte, 1<<20)
	for i := 0; ; i++ {
		if i == 200 {
			t.Fatal("200 MiB and the backlog never started")
		}
		if err := r.Send([][]byte{[]byte("stalled-quiet"), big}); err != nil {
			t.Fatalf("Send: %v", err)
		}
		c.wmu.Lock()
		writing := c.writing
		c.wmu.Unlock()
		if writing {
			break
		}
	}
	start := time.Now()
	waitFor(t, 10*o.WriteTimeout+2*time.Second, "write_timeout counted", func() bool { return dropped(ReasonWriteTimeout) > before })
	t.Logf("dropped %v after the last send (WriteTimeout %v)", time.Since(start).Round(time.Millisecond), o.WriteTimeout)
	expectClosed(t, stalled, 30*time.Second)
}

// One write(2) per message on the non-blocking fast path too (the counting
// wrapper of TestOneWritePerMessage takes the deadline path instead).
func TestDirectOneSyscallPerMessage(t *testing.T) {
	const n = 300
	msg := [][]byte{[]byte("a"), make([]byte, 300), nil, make([]byte, 5000)}
	r := listen(t, Router, testOptions())
	o := testOptions()
	o.Identity = []byte("syscalls")
	d := dial(t, Dealer, r, o)
	roundTrip(t, r, d)
	rc := r.(*socket).st.lookup([]byte("syscalls"))
	dc := d.(*socket).dconn
	if rc == nil || dc == nil || rc.rc == nil || dc.rc == nil {
		t.Fatal("no TCP fast path on these connections")
	}
	ops := func(c *conn) int {
		c.wmu.Lock()
		defer c.wmu.Unlock()
		return c.rawOps
	}
	for _, tc := range []struct {
		name     string
		from, to Socket
		c        *conn
		out      [][]byte
	}{
		{"DEALER", d, r, dc, msg},
		{"ROUTER", r, d, rc, append([][]byte{[]byte("syscalls")}, msg...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errc := make(chan error, 1)
			go func() { // the peer reads as we go: the kernel never pushes back
				for range n {
					if _, err := tc.to.Recv(); err != nil {
						errc <- err
						return
					}
				}
				errc <- nil
			}()
			before := ops(tc.c)
			for range n {
				if err := tc.from.Send(tc.out); err != nil {
					t.Fatal(err)
				}
			}
			got := ops(tc.c) - before
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if got != n {
				t.Fatalf("%d write(2) calls for %d messages, want one each", got, n)
			}
		})
	}
}

// The shapes Shoal does not use keep zmq4's writer: a ROUTER that dials, a
// DEALER that listens.
func TestZmq4WriterShapes(t *testing.T) {
	lo := testOptions()
	lo.Identity = []byte("listening-dealer")
	ld := listen(t, Dealer, lo)
	dr := dial(t, Router, ld, testOptions())
	if dr.(*socket).st.direct || ld.(*socket).st.direct {
		t.Fatal("a dialing ROUTER or a listening DEALER took the direct path")
	}
	// zmq4's DEALER Send waits until its listener has taken the connection.
	if err := ld.Send([][]byte{[]byte("back")}); err != nil {
		t.Fatal(err)
	}
	got, err := recvWithin(t, dr, 5*time.Second)
	if err != nil || len(got) != 2 || string(got[0]) != "listening-dealer" || string(got[1]) != "back" {
		t.Fatalf("dialing ROUTER got %q, %v", got, err)
	}
	if err := dr.Send([][]byte{[]byte("listening-dealer"), []byte("hello")}); err != nil {
		t.Fatal(err)
	}
	got, err = recvWithin(t, ld, 5*time.Second)
	if err != nil || len(got) != 1 || string(got[0]) != "hello" {
		t.Fatalf("listening DEALER got %q, %v", got, err)
	}
}
