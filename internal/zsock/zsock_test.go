package zsock

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var frameSizes = []int{0, 1, 255, 256, 70000}

func sizedFrames(seed byte) [][]byte {
	frames := make([][]byte, len(frameSizes))
	for i, n := range frameSizes {
		f := make([]byte, n)
		for j := range f {
			f[j] = seed + byte(i) + byte(j*7)
		}
		frames[i] = f
	}
	return frames
}

func equalFrames(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// echo serves a ROUTER: every message goes back to its sender.
func echo(t testing.TB, r Socket) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			msg, err := r.Recv()
			if err != nil {
				return
			}
			_ = r.Send(msg)
		}
	}()
	t.Cleanup(func() {
		r.Close()
		<-done
	})
}

func TestRouterDealerRoundTrip(t *testing.T) {
	r := listen(t, Router, testOptions())
	echo(t, r)
	d := dial(t, Dealer, r, testOptions())

	t.Run("frame sizes", func(t *testing.T) {
		for i := range 20 {
			want := sizedFrames(byte(i))
			if err := d.Send(want); err != nil {
				t.Fatalf("Send: %v", err)
			}
			got, err := recvWithin(t, d, 5*time.Second)
			if err != nil {
				t.Fatalf("Recv: %v", err)
			}
			if !equalFrames(got, want) {
				t.Fatalf("message %d came back different: sizes %v", i, frameLens(got))
			}
		}
	})

	t.Run("many messages", func(t *testing.T) {
		const n = 5000
		errc := make(chan error, 1)
		go func() {
			for i := range n {
				if err := d.Send([][]byte{[]byte(fmt.Sprint(i)), []byte("body")}); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
		for i := range n {
			got, err := recvWithin(t, d, 5*time.Second)
			if err != nil {
				t.Fatalf("Recv %d: %v", i, err)
			}
			if string(got[0]) != fmt.Sprint(i) {
				t.Fatalf("message %d arrived as %q: order lost", i, got[0])
			}
		}
		if err := <-errc; err != nil {
			t.Fatalf("Send: %v", err)
		}
	})

	t.Run("concurrent sends", func(t *testing.T) {
		const senders, each = 8, 300
		var wg sync.WaitGroup
		for g := range senders {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					body := bytes.Repeat([]byte{byte(g)}, 100+i)
					if err := d.Send([][]byte{[]byte(fmt.Sprintf("%d/%d", g, i)), body}); err != nil {
						t.Errorf("Send: %v", err)
						return
					}
				}
			}()
		}
		seen := make(map[string]bool)
		for range senders * each {
			got, err := recvWithin(t, d, 5*time.Second)
			if err != nil {
				t.Fatalf("Recv: %v", err)
			}
			var g, i int
			if _, err := fmt.Sscanf(string(got[0]), "%d/%d", &g, &i); err != nil || len(got) != 2 {
				t.Fatalf("corrupted message %q", got[0])
			}
			if !bytes.Equal(got[1], bytes.Repeat([]byte{byte(g)}, 100+i)) {
				t.Fatalf("message %s: body corrupted", got[0])
			}
			if seen[string(got[0])] {
				t.Fatalf("message %s twice", got[0])
			}
			seen[string(got[0])] = true
		}
		wg.Wait()
	})
}

func frameLens(f [][]byte) []int {
	n := make([]int, len(f))
	for i := range f {
		n[i] = len(f[i])
	}
	return n
}

func TestRouterSendsToRightPeer(t *testing.T) {
	r := listen(t, Router, testOptions())
	o1, o2 := testOptions(), testOptions()
	o1.Identity, o2.Identity = []byte("one"), []byte("two")
	d1 := dial(t, Dealer, r, o1)
	d2 := dial(t, Dealer, r, o2)
	for _, d := range []Socket{d1, d2} {
		if err := d.Send([][]byte{[]byte("hi")}); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		got, err := recvWithin(t, r, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if id := string(got[0]); id != "one" && id != "two" {
			t.Fatalf("identity %q", id)
		}
	}
	if err := r.Send([][]byte{[]byte("two"), []byte("for two")}); err != nil {
		t.Fatal(err)
	}
	got, err := recvWithin(t, d2, 5*time.Second)
	if err != nil || string(got[0]) != "for two" {
		t.Fatalf("d2 got %q, %v", got, err)
	}
	if err := r.Send([][]byte{[]byte("nobody"), []byte("x")}); err != nil {
		t.Fatalf("Send to an unknown identity: %v, want nil (dropped)", err)
	}
}

func TestSendValidation(t *testing.T) {
	r := listen(t, Router, testOptions())
	if err := r.Send([][]byte{[]byte("id")}); !errors.Is(err, ErrBadMessage) {
		t.Fatalf("ROUTER Send without body: %v, want ErrBadMessage", err)
	}
	if err := r.Send([][]byte{[]byte("id"), []byte("x")}); err != nil {
		t.Fatalf("ROUTER Send before any peer: %v, want nil", err)
	}
	if _, err := Listen(Router, "ipc:///tmp/x", testOptions()); err == nil {
		t.Fatal("Listen accepted an ipc:// endpoint")
	}
	o := testOptions()
	o.Identity = bytes.Repeat([]byte("x"), 256)
	if _, err := Dial(Dealer, endpoint(r), o); err == nil {
		t.Fatal("Dial accepted a 256-byte identity")
	}
}

func TestDealerRecvAfterRouterCloses(t *testing.T) {
	r, err := Listen(Router, "tcp://127.0.0.1:0", testOptions())
	if err != nil {
		t.Fatal(err)
	}
	d := dial(t, Dealer, r, testOptions())
	roundTrip(t, r, d)

	// One reply in flight when the router goes away: it must still arrive,
	// then ErrPeerGone.
	if err := d.Send([][]byte{[]byte("last")}); err != nil {
		t.Fatal(err)
	}
	msg, err := recvWithin(t, r, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Send([][]byte{msg[0], []byte("reply")}); err != nil {
		t.Fatal(err)
	}
	r.Close()

	// Two concurrent Recvs: neither may block forever.
	var wg sync.WaitGroup
	results := make(chan error, 2)
	var replies atomic.Int32
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				f, err := d.Recv()
				if err != nil {
					results <- err
					return
				}
				if string(f[0]) == "reply" {
					replies.Add(1)
				}
			}
		}()
	}
	waitDone := make(chan struct{})
	go func() { wg.Wait(); close(waitDone) }()
	select {
	case <-waitDone:
	case <-time.After(5 * time.Second):
		t.Fatal("dealer Recv still blocked 5s after the router closed")
	}
	for range 2 {
		if err := <-results; !errors.Is(err, ErrPeerGone) {
			t.Fatalf("Recv: %v, want ErrPeerGone", err)
		}
	}
	if replies.Load() != 1 {
		t.Fatalf("got %d replies, want the 1 sent before the router closed", replies.Load())
	}
	select {
	case <-d.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed")
	}
	if err := d.Send([][]byte{[]byte("x")}); !errors.Is(err, ErrPeerGone) {
		t.Fatalf("Send after loss: %v, want ErrPeerGone", err)
	}
	d.Close()
	if _, err := d.Recv(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Recv after Close: %v, want ErrClosed", err)
	}
}

func TestDoneOnPeerLossWithoutRecv(t *testing.T) {
	r, err := Listen(Router, "tcp://127.0.0.1:0", testOptions())
	if err != nil {
		t.Fatal(err)
	}
	d := dial(t, Dealer, r, testOptions())
	r.Close()
	select {
	case <-d.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after the router closed")
	}
	if _, err := recvWithin(t, d, 5*time.Second); !errors.Is(err, ErrPeerGone) {
		t.Fatalf("Recv: %v, want ErrPeerGone", err)
	}
}

func TestRecvAfterClose(t *testing.T) {
	r := listen(t, Router, testOptions())
	errc := make(chan error, 1)
	go func() {
		_, err := r.Recv()
		errc <- err
	}()
	time.Sleep(10 * time.Millisecond) // let Recv block (either order is fine)
	r.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Recv: %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Recv blocked after Close")
	}
	if _, err := r.Recv(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Recv: %v, want ErrClosed", err)
	}
	select {
	case <-r.Done():
	default:
		t.Fatal("Done open after Close")
	}
}

func TestOnDisconnect(t *testing.T) {
	gone := make(chan string, 4)
	o := testOptions()
	o.OnDisconnect = func(id []byte) { gone <- string(id) }
	r := listen(t, Router, o)

	do := testOptions()
	do.Identity = []byte("dealer-1")
	d := dial(t, Dealer, r, do)
	roundTrip(t, r, d)
	d.Close()
	select {
	case id := <-gone:
		if id != "dealer-1" {
			t.Fatalf("OnDisconnect(%q), want dealer-1", id)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("OnDisconnect not called")
	}

	// A peer without identity is not reported.
	c := rawDial(t, r)
	if _, err := c.Write(rawHello("DEALER", "")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(rawFrame(0, []byte("anon"))); err != nil {
		t.Fatal(err)
	}
	if got, err := recvWithin(t, r, 5*time.Second); err != nil || string(got[1]) != "anon" {
		t.Fatalf("got %q, %v", got, err)
	}
	c.Close()
	select {
	case id := <-gone:
		t.Fatalf("OnDisconnect(%q) for a peer without identity", id)
	case <-time.After(200 * time.Millisecond):
	}
}

func TestDuplicateIdentityRefused(t *testing.T) {
	r := listen(t, Router, testOptions())
	o := testOptions()
	o.Identity = []byte("same")
	d := dial(t, Dealer, r, o)
	roundTrip(t, r, d)
	before := dropped(ReasonDuplicateIdentity)
	if s, err := Dial(Dealer, endpoint(r), o); err == nil {
		// zmq4's handshake may complete before the router refuses: then
		// the connection is closed right after.
		select {
		case <-s.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("second connection with the same identity stayed up")
		}
		s.Close()
	}
	waitFor(t, 5*time.Second, "duplicate_identity counted", func() bool { return dropped(ReasonDuplicateIdentity) > before })
	roundTrip(t, r, d) // the first one is untouched
}

func TestDialFailsFast(t *testing.T) {
	// Nothing listening.
	ln := listen(t, Router, testOptions())
	addr := ln.Addr().String()
	ln.Close()
	start := time.Now()
	if _, err := Dial(Dealer, "tcp://"+addr, testOptions()); err == nil {
		t.Fatal("Dial to a closed port succeeded")
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("refused Dial took %v (zmq4 retries 10 x 250ms)", d)
	}

	// A listener that accepts and never answers.
	silent := rawListener(t)
	o := testOptions()
	o.HandshakeTimeout = 300 * time.Millisecond
	fds := openFDs(t)
	start = time.Now()
	_, err := Dial(Dealer, "tcp://"+silent.Addr().String(), o)
	if err == nil {
		t.Fatal("Dial to a silent server succeeded")
	}
	if d := time.Since(start); d > o.HandshakeTimeout+time.Second {
		t.Fatalf("Dial took %v, HandshakeTimeout %v", d, o.HandshakeTimeout)
	}
	waitFor(t, 5*time.Second, "dialer descriptor closed", func() bool { return openFDs(t) <= fds+1 })
}

func TestPubSub(t *testing.T) {
	p := listen(t, Pub, testOptions())
	s := dial(t, Sub, p, testOptions())
	if err := s.Subscribe("news"); err != nil {
		t.Fatal(err)
	}
	got := make(chan [][]byte, 16)
	go func() {
		for {
			f, err := s.Recv()
			if err != nil {
				close(got)
				return
			}
			got <- f
		}
	}()
	// The subscription travels asynchronously: publish until one arrives.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := p.Send([][]byte{[]byte("news"), []byte("hello")}); err != nil {
			t.Fatal(err)
		}
		if err := p.Send([][]byte{[]byte("other"), []byte("nope")}); err != nil {
			t.Fatal(err)
		}
		select {
		case f := <-got:
			if string(f[0]) != "news" || string(f[1]) != "hello" {
				t.Fatalf("SUB got %q", f)
			}
			return
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("no message on the subscribed topic")
		}
	}
}

func TestCloseReleasesGoroutines(t *testing.T) {
	r := listen(t, Router, testOptions())
	echo(t, r)
	base := runtime.NumGoroutine()
	for range 20 {
		d, err := Dial(Dealer, endpoint(r), testOptions())
		if err != nil {
			t.Fatal(err)
		}
		// Fill zmq4's 10-slot receive queue and more, never Recv.
		for i := range 30 {
			if err := d.Send([][]byte{[]byte(fmt.Sprint(i))}); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(5 * time.Millisecond)
		d.Close()
	}
	// zmq4's connection readers are gone once closed (a reader blocked on a
	// full queue would stay forever).
	waitFor(t, 10*time.Second, "goroutines back to the baseline", func() bool {
		return runtime.NumGoroutine() <= base+2
	})
}
