// Package testenv holds what the project's tests share: the rule for a
// missing dependency (fail under CI=true, skip elsewhere), polling for a
// condition, free loopback ports, and a buffer safe for concurrent writers.
// Only tests import it.
package testenv

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Missing reports a dependency the test cannot run without: under CI=true
// (where `make test` installs everything) it fails the test, elsewhere it
// skips it. msg says what is missing and how to install it.
func Missing(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " (required under CI=true)")
	}
	t.Skip(msg)
}

// Eventually polls cond every 10ms until it holds, and fails the test if
// it does not within timeout. Each of more adds a detail to the failure.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool, more ...func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("timed out after %v waiting for %s", timeout, what)
			for _, m := range more {
				msg += "; " + m()
			}
			t.Fatal(msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Ports handed out by FreePort, so that parallel tests never share one.
var ports struct {
	sync.Mutex
	used map[int]bool
}

// ephemeralLow is the start of the kernel's ephemeral port range: ports
// below it are never picked for outgoing connections, so a port FreePort
// returns stays free while a test restarts the process that owns it (load
// tests open thousands of outgoing connections meanwhile).
var ephemeralLow = sync.OnceValue(func() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				return n
			}
		}
	}
	return 32768
})

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago,
// below the ephemeral range when it can, and never the same twice in a
// test process.
func FreePort(t testing.TB) int {
	t.Helper()
	ports.Lock()
	defer ports.Unlock()
	if ports.used == nil {
		ports.used = make(map[int]bool)
	}
	const lowest = 20000
	if lo := ephemeralLow(); lo-lowest >= 2000 {
		for range 200 {
			p := lowest + rand.IntN(lo-lowest)
			if ports.used[p] {
				continue
			}
			ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
			if err != nil {
				continue
			}
			ln.Close()
			ports.used[p] = true
			return p
		}
	}
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("cannot find a free port: %v", err)
		}
		p := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !ports.used[p] {
			ports.used[p] = true
			return p
		}
	}
	t.Fatal("cannot find a free port")
	return 0
}

// SyncBuffer is a bytes.Buffer for a process's output or a logger that
// several goroutines write while the test reads it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
