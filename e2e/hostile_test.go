package e2e

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/testenv"
	"github.com/shoal-dev/shoal/internal/zsock"
	"github.com/shoal-dev/shoal/wire"
)

var quietLog = slog.New(slog.DiscardHandler)

// openFDs counts the open file descriptors of a process (-1 if unknown).
func openFDs(pid int) int {
	ents, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
	if err != nil {
		return -1
	}
	return len(ents)
}

// spray connects to addr, writes b, and closes. Only a failed connect is
// an error: the peer may well close before it read everything.
func spray(addr string, b []byte) error {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	_, _ = c.Write(b)
	return c.Close()
}

// randomBytes returns n bytes from a generator seeded with seed.
func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x5eed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// sendJunk dials endpoint with a DEALER and sends each message as is.
func sendJunk(t *testing.T, endpoint string, msgs [][][]byte) {
	t.Helper()
	d, err := zsock.Dial(zsock.Dealer, endpoint, zsock.Options{HandshakeTimeout: 3 * time.Second, Logger: quietLog})
	if err != nil {
		t.Fatalf("dial %s: %v", endpoint, err)
	}
	defer d.Close()
	for i, m := range msgs {
		if err := d.Send(m); err != nil {
			t.Fatalf("send junk message %d to %s: %v (the broker dropped a peer for a malformed message)", i, endpoint, err)
		}
	}
}

func frames(f ...[]byte) [][]byte { return f }

var shl1 = []byte(wire.Version)

// TestGarbageOnEveryPort (fault 7c): random bytes and malformed messages on
// every port of a broker and a frontend — the broker's clients and workers
// endpoints (raw TCP and well-framed ZeroMQ messages that break the Shoal
// protocol), the broker's admin port, the frontend's HTTP and admin ports.
// Afterwards every process is alive, requests are served, the broker counted
// what it dropped, and no descriptors leaked.
func TestGarbageOnEveryPort(t *testing.T) {
	t.Parallel()
	s := newStack(t, settings{})
	b := s.startBroker(0)
	fe := s.startFrontend()
	w := s.startWorker("echo")
	s.waitWorkers(0, "echo", 1, 10*time.Second)
	if st, body, _ := s.get(s.url("/echo")); st != 200 {
		t.Fatalf("GET /echo before: %d %s", st, body)
	}
	before := s.mustMetrics(0)
	fdsBefore := map[*proc]int{b: openFDs(b.Pid()), fe: openFDs(fe.Pid())}
	br := s.brokers[0]

	// 1. Raw bytes. On ZeroMQ ports: pure noise, noise after a valid
	// greeting, and noise after a complete handshake (greeting + READY).
	// On HTTP ports: noise, and noise after a request line.
	seeds := []uint64{1, 2, 3, 4, 5, 6}
	sizes := []int{1, 9, 63, 64, 200, 4096, 65536}
	type target struct {
		name     string
		addr     string
		prefixes [][]byte
	}
	targets := []target{
		{"broker clients", br.ClientsAddr(), [][]byte{nil, zmtpGreeting(), zmtpHello()}},
		{"broker workers", br.WorkersAddr(), [][]byte{nil, zmtpGreeting(), zmtpHello()}},
		{"broker admin", br.Admin, [][]byte{nil, []byte("GET /stats HTTP/1.1\r\n")}},
		{"frontend", s.frontend, [][]byte{nil, []byte("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n")}},
		{"frontend admin", s.feAdmin, [][]byte{nil, []byte("GET /metrics HTTP/1.1\r\n")}},
	}
	var wg sync.WaitGroup
	conns := 0
	for _, tg := range targets {
		conns += len(seeds) * len(sizes) * len(tg.prefixes)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, seed := range seeds {
				for _, n := range sizes {
					for _, pre := range tg.prefixes {
						b := append(append([]byte(nil), pre...), randomBytes(seed*1000+uint64(n), n)...)
						if err := spray(tg.addr, b); err != nil {
							t.Errorf("%s: cannot connect (seed %d, %d bytes): %v", tg.name, seed, n, err)
							return
						}
					}
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("sprayed random bytes over %d connections", conns)

	// 2. Well-framed ZeroMQ messages that are not the Shoal protocol.
	env := (&wire.Request{ID: 1, Service: "echo"}).AppendMsgpack(nil)
	rep := (&wire.Reply{ID: 1}).AppendMsgpack(nil)
	readyOK := (&wire.Ready{Services: []string{"junk.worker"}, Credit: 1, Heartbeat: 200, Name: "junk", Process: "e2e/junk"}).AppendMsgpack(nil)
	readyBadName := (&wire.Ready{Services: []string{"Bad Name"}, Credit: 1}).AppendMsgpack(nil)
	readyNoCredit := (&wire.Ready{Services: []string{"ok"}, Credit: 0}).AppendMsgpack(nil)
	tooMany := frames(shl1, []byte{byte(wire.CmdRequest)})
	for range wire.MaxBatch + 1 {
		tooMany = append(tooMany, env)
	}
	framing := [][][]byte{
		frames([]byte{}),
		frames(shl1),
		frames([]byte("SHL0"), []byte{byte(wire.CmdRequest)}, env),
		frames(shl1, []byte{0x09}),
		frames(shl1, []byte{}),
		frames(shl1, []byte{2, 2}, env),
		frames(shl1, []byte{byte(wire.CmdHeartbeat)}, []byte("x")),
		frames(shl1, []byte{byte(wire.CmdDisconnect)}, []byte("a"), []byte("b")),
		frames(shl1, []byte{byte(wire.CmdReady)}),
		frames(shl1, []byte{byte(wire.CmdRequest)}),
		tooMany,
	}
	for _, seed := range seeds {
		r := rand.New(rand.NewPCG(seed, 7))
		m := make([][]byte, 1+r.IntN(5))
		for i := range m {
			m[i] = randomBytes(seed*31+uint64(i), r.IntN(300))
		}
		framing = append(framing, m)
		// Version and command right, envelope noise.
		framing = append(framing, frames(shl1, []byte{byte(wire.CmdRequest)}, randomBytes(seed, 50), []byte{0xc0}, []byte{0x80}))
	}
	sendJunk(t, br.Clients, append(framing,
		frames(shl1, []byte{byte(wire.CmdReady)}, readyOK), // READY on the clients endpoint
		frames(shl1, []byte{byte(wire.CmdReply)}, rep),     // REPLY from a client
		frames(shl1, []byte{byte(wire.CmdDisconnect)}),
	))
	sendJunk(t, br.Workers, append(framing,
		frames(shl1, []byte{byte(wire.CmdReady)}, randomBytes(9, 40)),
		frames(shl1, []byte{byte(wire.CmdReady)}, readyBadName),
		frames(shl1, []byte{byte(wire.CmdReady)}, readyNoCredit),
		frames(shl1, []byte{byte(wire.CmdRequest)}, env), // REQUEST from a worker
		// A registered worker replying noise.
		frames(shl1, []byte{byte(wire.CmdReady)}, readyOK),
		frames(shl1, []byte{byte(wire.CmdReply)}, randomBytes(3, 30), []byte{0x80}, rep),
		frames(shl1, []byte{byte(wire.CmdDisconnect)}, []byte("bye")),
	))

	// The broker counted each kind of malformed input.
	want := []string{"frames", "client_command", "worker_command", "ready", "envelope"}
	testenv.Eventually(t, 5*time.Second, fmt.Sprintf("malformed counters %v > 0", want), func() bool {
		st, err := s.stats(0)
		if err != nil {
			return false
		}
		for _, k := range want {
			if st.Malformed[k] == 0 {
				return false
			}
		}
		return true
	})
	st := s.mustStats(0)
	t.Logf("broker malformed counters: %v; unknown peers %d", st.Malformed, st.Unknown)

	after := s.mustMetrics(0)
	for _, r := range zsock.Reasons() {
		if d := dropped(after, r) - dropped(before, r); d > 0 {
			t.Logf("broker dropped %v connections: %s", d, r)
		}
	}
	if dropped(after, zsock.ReasonBadGreeting) <= dropped(before, zsock.ReasonBadGreeting) {
		t.Errorf("shoal_zmtp_conns_dropped_total{reason=bad_greeting} did not grow")
	}

	requireAlive(t, b, fe, w)
	for _, path := range []string{"/echo?after=garbage"} {
		if code, body, _ := s.get(s.url(path)); code != 200 {
			t.Errorf("GET %s after the garbage: %d %s", path, code, body)
		}
	}
	if code, body, _ := s.get(s.url("/readyz")); code != 200 {
		t.Errorf("frontend /readyz after the garbage: %d %s", code, body)
	}
	if code, _, _ := s.get("http://" + br.Admin + "/healthz"); code != 200 {
		t.Errorf("broker /healthz after the garbage: %d", code)
	}
	// Every connection was closed: no descriptor grows with the garbage.
	for p, n := range fdsBefore {
		if n < 0 {
			continue
		}
		testenv.Eventually(t, 5*time.Second, fmt.Sprintf("%s back to ~%d open descriptors", p.name, n), func() bool {
			return openFDs(p.Pid()) <= n+8
		})
	}
}

// TestHugeFrameHeader (fault 8a): a frame header announcing 2^40 bytes —
// the 9 bytes that make go-zeromq/zmq4 allocate a terabyte and die — sent to
// both ZeroMQ endpoints of a broker after a valid greeting, after a whole
// handshake, and bare. The broker closes each such connection at once,
// counts it in shoal_zmtp_conns_dropped_total, and keeps serving.
func TestHugeFrameHeader(t *testing.T) {
	t.Parallel()
	s := newStack(t, settings{})
	b := s.startBroker(0)
	fe := s.startFrontend()
	w := s.startWorker("echo")
	s.waitWorkers(0, "echo", 1, 10*time.Second)
	before := s.mustMetrics(0)

	huge := longFrameHeader(1 << 40)
	attacks := []struct {
		name      string
		bytes     []byte
		oversized bool // dropped as oversized_frame (else bad_greeting)
	}{
		{"greeting then 2^40 header", append(zmtpGreeting(), huge...), true},
		{"greeting and READY then 2^40 header", append(zmtpHello(), huge...), true},
		{"2^40 header without greeting", huge, false},
	}
	br := s.brokers[0]
	n, oversized := 0, 0
	for _, ep := range []struct{ name, addr string }{{"clients", br.ClientsAddr()}, {"workers", br.WorkersAddr()}} {
		for _, a := range attacks {
			start := time.Now()
			c := rawSend(t, ep.addr, a.bytes)
			if !closedByPeer(c, 2*time.Second) {
				t.Errorf("%s endpoint, %s: connection still open after 2s", ep.name, a.name)
			} else {
				t.Logf("%s endpoint, %s: closed by the broker after %v", ep.name, a.name, time.Since(start).Round(time.Microsecond))
			}
			c.Close()
			n++
			if a.oversized {
				oversized++
			}
			if !b.Alive() {
				t.Fatalf("broker died after %s on its %s endpoint: %v", a.name, ep.name, b.exitErr())
			}
		}
	}

	var after map[string]float64
	testenv.Eventually(t, 5*time.Second, "shoal_zmtp_conns_dropped_total to count every attack", func() bool {
		after = s.mustMetrics(0)
		return dropped(after, zsock.ReasonOversizedFrame)-dropped(before, zsock.ReasonOversizedFrame) >= float64(oversized) &&
			sumMetric(after, "shoal_zmtp_conns_dropped_total")-sumMetric(before, "shoal_zmtp_conns_dropped_total") >= float64(n)
	})
	t.Logf("shoal_zmtp_conns_dropped_total: oversized_frame %v → %v, bad_greeting %v → %v",
		dropped(before, zsock.ReasonOversizedFrame), dropped(after, zsock.ReasonOversizedFrame),
		dropped(before, zsock.ReasonBadGreeting), dropped(after, zsock.ReasonBadGreeting))

	requireAlive(t, b, fe, w)
	if code, body, _ := s.get(s.url("/echo")); code != 200 {
		t.Errorf("GET /echo after the attacks: %d %s", code, body)
	}
}

// TestSilentClientDoesNotBlock (fault 8b): 20 TCP connections that never
// say anything on each ZeroMQ endpoint of the broker do not hold up new
// peers: a new echo worker process registers and serves, and a new
// frontend process connects and serves, each within 2s — well before the
// 5s handshake timeout, which then closes the silent connections.
func TestSilentClientDoesNotBlock(t *testing.T) {
	t.Parallel()
	s := newStack(t, settings{HandshakeTimeout: 5 * time.Second})
	b := s.startBroker(0)
	fe := s.startFrontend()
	old := s.startWorker("echo")
	s.waitWorkers(0, "echo", 1, 10*time.Second)
	if code, body, _ := s.get(s.url("/echo")); code != 200 {
		t.Fatalf("GET /echo before: %d %s", code, body)
	}
	before := s.mustMetrics(0)

	br := s.brokers[0]
	var silent []net.Conn
	for _, addr := range []string{br.WorkersAddr(), br.ClientsAddr()} {
		for range 20 {
			silent = append(silent, rawSend(t, addr, nil))
		}
	}
	openedAt := time.Now()

	old.Term(t, 5*time.Second)
	s.waitWorkers(0, "echo", 0, 5*time.Second)

	start := time.Now()
	nw := s.startWorker("echo")
	s.waitWorkers(0, "echo", 1, 2*time.Second)
	registered := time.Since(start)
	testenv.Eventually(t, 2*time.Second-registered, "GET /echo 200 through the new worker", func() bool {
		code, _, _ := s.get(s.url("/echo"))
		return code == 200
	})
	served := time.Since(start)
	t.Logf("new worker: registered %v and served %v after its start, next to %d silent connections",
		registered.Round(time.Millisecond), served.Round(time.Millisecond), len(silent))
	if served > 2*time.Second {
		t.Errorf("new worker took %v to serve, want < 2s", served)
	}

	// A second frontend, started now, connects through the clients endpoint.
	listen2, admin2 := hostPort(testenv.FreePort(t)), hostPort(testenv.FreePort(t))
	cfg2 := s.writeConfig("shoal-frontend2.yaml", listen2, admin2)
	start = time.Now()
	fe2 := s.start("frontend2", shoalBin, "frontend", "-c", cfg2)
	s.waitReady(fe2, listen2)
	code, body, _ := s.get("http://" + listen2 + "/echo")
	ready := time.Since(start)
	t.Logf("second frontend: ready and served (%d) %v after its start", code, ready.Round(time.Millisecond))
	if code != 200 || ready > 2*time.Second {
		t.Errorf("second frontend: GET /echo %d %s after %v, want 200 within 2s", code, body, ready)
	}

	// The handshake timeout closes the silent connections, not earlier.
	var wg sync.WaitGroup
	var mu sync.Mutex
	early, open := 0, 0
	for _, c := range silent {
		wg.Add(1)
		go func() {
			defer wg.Done()
			closed := closedByPeer(c, time.Until(openedAt.Add(5*time.Second+2*time.Second)))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case !closed:
				open++
			case time.Since(openedAt) < 5*time.Second-100*time.Millisecond:
				early++
			}
		}()
	}
	wg.Wait()
	if open > 0 || early > 0 {
		t.Errorf("silent connections: %d still open 2s after the 5s handshake timeout, %d closed before it", open, early)
	}
	after := s.mustMetrics(0)
	if d := dropped(after, zsock.ReasonHandshakeTimeout) - dropped(before, zsock.ReasonHandshakeTimeout); d < float64(len(silent)) {
		t.Errorf("handshake_timeout drops grew by %v, want %d", d, len(silent))
	}
	requireAlive(t, b, fe, nw, fe2)
}

// TestStuckWorkerDoesNotFreezeBroker (fault 8c): a worker that registers,
// heartbeats, and never reads (here a DEALER in the test process whose
// Recv is never called) is flooded with 1 MiB requests until its TCP
// buffers are full. The broker's sends to it never block (zsock queues
// what the peer's socket does not take, bounded); the peer is dropped when
// that queue overflows or write_timeout passes, and meanwhile requests to a
// healthy echo worker keep succeeding with latency below write_timeout + 1s.
func TestStuckWorkerDoesNotFreezeBroker(t *testing.T) {
	// Not parallel: CPU-heavy, and latencies are asserted.
	// Heartbeat and liveness in the ratio of the shipped defaults: peers
	// give up on a silent broker after 3 intervals (3s by default, 600ms
	// here), before write_timeout (5s by default, 1s here) ends a write to
	// a peer that does not read.
	const writeTimeout = time.Second
	s := newStack(t, settings{Heartbeat: 200 * time.Millisecond, Liveness: 3, WriteTimeout: writeTimeout, MaxBody: "2MiB", Routes: []route{
		{Method: "GET", Path: "/echo", Service: "echo", Timeout: 5 * time.Second, Attempts: 3},
		{Method: "POST", Path: "/stuck", Service: "stuck", Timeout: 500 * time.Millisecond},
	}})
	b := s.startBroker(0)
	fe := s.startFrontend()
	w := s.startWorker("echo")
	s.waitWorkers(0, "echo", 1, 10*time.Second)
	before := s.mustMetrics(0)

	// The stuck worker: READY, HEARTBEAT every interval, never Recv.
	d, err := zsock.Dial(zsock.Dealer, s.brokers[0].Workers, zsock.Options{Logger: quietLog})
	if err != nil {
		t.Fatal(err)
	}
	ready := wire.Ready{Services: []string{"stuck"}, Credit: 1000, Heartbeat: int(s.set.Heartbeat.Milliseconds()),
		Name: "stuck:e2e", Process: "e2e/stuck"}
	if err := d.Send(wire.Frames(wire.CmdReady, ready.AppendMsgpack(nil))); err != nil {
		t.Fatal(err)
	}
	hbDone := make(chan struct{})
	var hbWG sync.WaitGroup
	hbWG.Add(1)
	go func() {
		defer hbWG.Done()
		tick := time.NewTicker(s.set.Heartbeat)
		defer tick.Stop()
		for {
			select {
			case <-hbDone:
				return
			case <-tick.C:
				if d.Send(wire.Frames(wire.CmdHeartbeat)) != nil {
					return // the broker dropped us
				}
			}
		}
	}()
	t.Cleanup(func() { close(hbDone); hbWG.Wait(); d.Close() })
	s.waitWorkers(0, "stuck", 1, 5*time.Second)

	stopEcho, stopFlood := make(chan struct{}), make(chan struct{})
	haltEcho, haltFlood := sync.OnceFunc(func() { close(stopEcho) }), sync.OnceFunc(func() { close(stopFlood) })
	echo := startLoad(t, load{Name: "GET /echo (healthy worker)", Method: "GET", URL: s.url("/echo"),
		Deadline: 5 * time.Second, Clients: 4, Duration: 30 * time.Second, Max: 50000, Stop: stopEcho})
	body := randomBytes(42, 1<<20)
	flood := startLoad(t, load{Name: "POST /stuck 1 MiB", Method: "POST", URL: s.url("/stuck"), Body: body,
		Deadline: 500 * time.Millisecond, Clients: 32, Duration: 25 * time.Second, Max: 1000, Stop: stopFlood})
	defer func() { haltFlood(); haltEcho(); flood(); echo() }()

	start := time.Now()
	testenv.Eventually(t, 20*time.Second, "the broker to drop the stuck worker", func() bool {
		st, err := s.stats(0)
		return err == nil && service(st, "stuck").Workers == 0
	})
	t.Logf("stuck worker dropped %v after the flood began", time.Since(start).Round(time.Millisecond))
	haltFlood()
	fl := flood()
	time.Sleep(500 * time.Millisecond) // the echo load carries on past the drop
	haltEcho()
	ec := echo()
	t.Log(fl.summary())
	t.Log(ec.summary())

	var bad []result
	for _, x := range ec.Results {
		if x.Status != 200 {
			bad = append(bad, x)
		}
	}
	if len(bad) > 0 {
		t.Errorf("GET /echo: %d of %d requests not 200 while a worker was stuck:%s", len(bad), len(ec.Results), describe(bad))
		// What the healthy peers thought of the broker meanwhile.
		for _, p := range []*proc{b, fe, w} {
			for _, what := range []string{"broker silent", "missed heartbeats", "write_timeout"} {
				for _, l := range p.grep(what) {
					t.Logf("%s: %s", p.name, l)
				}
			}
		}
	}
	if m := ec.maxLatency(); m >= writeTimeout+time.Second {
		t.Errorf("GET /echo: max latency %v, want < write_timeout + 1s = %v", m, writeTimeout+time.Second)
	}
	if len(ec.Results) == 0 {
		t.Errorf("GET /echo: no requests ran")
	}

	requireAlive(t, b, fe, w)
	after := s.mustMetrics(0)
	// The stuck peer leaves either way: its write backlog overflows
	// (slow_peer) or its writer gives up after write_timeout.
	gone := func(m map[string]float64) float64 {
		return dropped(m, zsock.ReasonWriteTimeout) + dropped(m, zsock.ReasonSlowPeer)
	}
	if gone(after) <= gone(before) {
		t.Errorf("shoal_zmtp_conns_dropped_total{reason=write_timeout|slow_peer} did not grow (%v)", gone(after))
	}
	st := s.mustStats(0)
	t.Logf("broker after: stuck %+v, echo %+v, workers_died %d", service(st, "stuck"), service(st, "echo"), st.WorkersDied)
	if service(st, "echo").Workers != 1 {
		t.Errorf("echo has %d workers, want 1", service(st, "echo").Workers)
	}
}
