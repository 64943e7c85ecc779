package e2e

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

// Raw ZMTP 3.0 bytes, written by hand so that the tests do not trust the
// code they attack.

// zmtpGreeting is a valid 64-byte ZMTP 3.0 greeting: signature (0xFF, 8
// bytes, 0x7F), version 3.0, mechanism "NULL" padded to 20 bytes, as-server
// 0, 31 bytes of filler.
func zmtpGreeting() []byte {
	g := make([]byte, 64)
	g[0] = 0xFF
	g[9] = 0x7F
	g[10], g[11] = 3, 0
	copy(g[12:32], "NULL")
	return g
}

// zmtpReady is a READY command frame announcing a DEALER.
func zmtpReady() []byte {
	body := append([]byte{5}, "READY"...)
	body = append(body, byte(len("Socket-Type")))
	body = append(body, "Socket-Type"...)
	body = binary.BigEndian.AppendUint32(body, uint32(len("DEALER")))
	body = append(body, "DEALER"...)
	return append([]byte{0x04, byte(len(body))}, body...) // short command frame
}

// zmtpHello is what a DEALER sends to complete a handshake.
func zmtpHello() []byte { return append(zmtpGreeting(), zmtpReady()...) }

// longFrameHeader is a 9-byte long message-frame header announcing size
// bytes: flags 0x02 (LONG), then the size as uint64 big-endian.
func longFrameHeader(size uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{0x02}, size)
}

// rawSend connects to addr, writes b and returns the connection.
func rawSend(t testing.TB, addr string, b []byte) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	if len(b) > 0 {
		c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		// The peer may close the connection before it read everything we
		// sent: a failed write is part of what we test, not an error.
		_, _ = c.Write(b)
	}
	return c
}

// closedByPeer reads (and discards) until the peer closes the connection
// and reports whether that happened within d.
func closedByPeer(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 4096)
	for {
		_, err := c.Read(buf)
		if err == nil {
			continue
		}
		return !errors.Is(err, os.ErrDeadlineExceeded) // EOF or reset: closed
	}
}
