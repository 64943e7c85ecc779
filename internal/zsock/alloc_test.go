//go:build !race

package zsock

import (
	"net"
	"testing"
	"time"
)

// discard reads c into a fixed buffer until it fails: a peer that
// allocates nothing, so that AllocsPerRun counts the sender alone.
func discard(c net.Conn) {
	buf := make([]byte, 64<<10)
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

// A direct Send allocates nothing in the steady state: the identity lookup
// converts without copying, the message is framed into the connection's
// reused buffer and written with one write(2).
func TestDirectSendAllocs(t *testing.T) {
	msg := [][]byte{[]byte("a"), []byte("some-service"), make([]byte, 300)}

	t.Run("ROUTER", func(t *testing.T) {
		r := listen(t, Router, testOptions())
		c, _ := rawHandshake(t, r, "DEALER", "allocs")
		if _, err := c.Write(rawFrame(0, []byte("hi"))); err != nil {
			t.Fatal(err)
		}
		if _, err := recvWithin(t, r, 5*time.Second); err != nil { // the peer is live
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Time{})
		go discard(c)
		out := append([][]byte{[]byte("allocs")}, msg...)
		allocs := testing.AllocsPerRun(1000, func() {
			if err := r.Send(out); err != nil {
				t.Fatal(err)
			}
		})
		t.Logf("ROUTER Send of a %d-frame message: %.2f allocs", len(msg), allocs)
		if allocs > 0.1 {
			t.Fatalf("ROUTER Send: %.2f allocations per message, want 0", allocs)
		}
	})

	t.Run("DEALER", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			_, _ = c.Write(append(append([]byte(nil), ourGreeting[:]...), rawCommand("READY", props("Socket-Type", "ROUTER"))...))
			discard(c)
		}()
		d, err := Dial(Dealer, "tcp://"+ln.Addr().String(), testOptions())
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		allocs := testing.AllocsPerRun(1000, func() {
			if err := d.Send(msg); err != nil {
				t.Fatal(err)
			}
		})
		t.Logf("DEALER Send of a %d-frame message: %.2f allocs", len(msg), allocs)
		if allocs > 0.1 {
			t.Fatalf("DEALER Send: %.2f allocations per message, want 0", allocs)
		}
	})
}
