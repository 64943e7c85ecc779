package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/testenv"
)

// lossyProxy forwards TCP connections to target. While silent is set, a
// connection whose client side closes stays open on the target's side, as
// when a host dies or the network drops the FIN: the broker then learns
// of the worker's death from missed heartbeats only.
type lossyProxy struct {
	ln     net.Listener
	target string
	silent atomic.Bool
	mu     sync.Mutex
	held   []net.Conn
}

func newLossyProxy(t *testing.T, target string) *lossyProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &lossyProxy{ln: ln, target: target}
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.held {
			c.Close()
		}
		p.mu.Unlock()
	})
	return p
}

func (p *lossyProxy) port() int { return p.ln.Addr().(*net.TCPAddr).Port }

func (p *lossyProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			u, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				return
			}
			p.mu.Lock()
			p.held = append(p.held, c, u)
			p.mu.Unlock()
			go func() {
				io.Copy(c, u) // broker → worker
				c.Close()
			}()
			io.Copy(u, c) // worker → broker, until the worker's side closes
			if !p.silent.Load() {
				u.Close()
			}
		}()
	}
}

// Item 8: the supervisor tells the broker the moment a worker dies, so the
// broker re-dispatches that worker's requests at once instead of after
// missed heartbeats. Measured from kill -9 to the last held request's
// answer (via the other worker), with and without the notice, both when
// the broker also sees the worker's connection close (one host: the
// kernel closes it) and when it does not (a lost FIN, a dead host).
func TestBrokerNoticeSpeedsRedispatch(t *testing.T) {
	s := newStack(t, "")
	proxy := newLossyProxy(t, fmt.Sprintf("127.0.0.1:%d", s.p.Workers))
	config := func(notify bool) string {
		// heartbeat 100ms × liveness 10: a silent worker is dead after 1s.
		return brokerHead + fmt.Sprintf(`  notify_brokers: %v
programs:
  - name: broker
    command: "{shoal} broker -c {config}"
    ready: {http: "http://127.0.0.1:{{Admin}}/healthz"}
  - name: echo
    command: "{shoal} worker echo -c {config}"
    numprocs: 2
    startsecs: 100ms
    env: {SHOAL_BROKER_B0_WORKERS: "tcp://127.0.0.1:%d"}   # through the proxy
    depends_on: [broker]
    ready: {broker_service: echo}
  - name: frontend
    command: "{shoal} frontend -c {config}"
    depends_on: [echo]
    ready: {http: "http://127.0.0.1:{{Listen}}/readyz"}
`, notify, proxy.port())
	}
	s.writeConfig(config(true))
	s.start()
	s.waitRunning(30 * time.Second)
	host, _ := os.Hostname()

	measure := func(name string) time.Duration {
		t.Helper()
		st := s.waitRunning(10 * time.Second)
		victim := st["echo:0"]
		victimProc := fmt.Sprintf("%s/%d", host, victim.PID)
		// Freeze the victim so that it holds requests it cannot answer.
		syscall.Kill(victim.PID, syscall.SIGSTOP)
		const n = 24
		var wg sync.WaitGroup
		var mu sync.Mutex
		var last time.Time
		failed := 0
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := http.Get(s.url("/echo?held=1"))
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					failed++
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed++
				}
				last = time.Now()
			}()
		}
		holding := 0
		testenv.Eventually(t, 5*time.Second, "the frozen worker to hold requests", func() bool {
			bs, err := s.brokerStats()
			if err != nil {
				return false
			}
			for _, w := range bs.Workers {
				if w.Process == victimProc {
					holding = w.InFlight
				}
			}
			return holding > 0
		})
		time.Sleep(50 * time.Millisecond) // the rest are answered by the other worker meanwhile
		killed := time.Now()
		syscall.Kill(victim.PID, syscall.SIGKILL)
		wg.Wait()
		took := last.Sub(killed)
		if failed > 0 {
			t.Errorf("%s: %d of %d requests failed", name, failed, n)
		}
		t.Logf("%-38s kill -9 → last held request answered: %7.1fms (%d held)", name+":", float64(took.Microseconds())/1000, holding)
		return took
	}
	setNotify := func(on bool) {
		s.writeConfig(config(on))
		if res, err := s.c.Reload(context.Background()); err != nil || len(res.Changed) != 0 {
			t.Fatalf("reload: %+v, %v", res, err)
		}
	}

	directNotice := measure("connection closes, with the notice")
	setNotify(false)
	directNone := measure("connection closes, without the notice")
	proxy.silent.Store(true)
	lostNone := measure("connection stays open, without the notice")
	setNotify(true)
	lostNotice := measure("connection stays open, with the notice")

	if lostNotice > 500*time.Millisecond {
		t.Errorf("with the notice, re-dispatch took %v; want it at once", lostNotice)
	}
	if lostNone < 500*time.Millisecond {
		t.Errorf("without the notice and with the connection open, re-dispatch took only %v: the test did not hold the connection open", lostNone)
	}
	if directNotice > 500*time.Millisecond || directNone > 500*time.Millisecond {
		t.Errorf("with the connection closing, re-dispatch took %v / %v", directNotice, directNone)
	}
	if !strings.Contains(s.tail(1000), "told the broker a process died") {
		t.Error("the supervisor's log does not show a notice")
	}
}
