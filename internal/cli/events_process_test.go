package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/broker"
	"github.com/shoal-dev/shoal/config"
	"github.com/shoal-dev/shoal/internal/queue/redistest"
	"github.com/shoal-dev/shoal/internal/testenv"
	"github.com/shoal-dev/shoal/internal/zsock"
	"github.com/shoal-dev/shoal/wire"
	"github.com/shoal-dev/shoal/workers"
	"github.com/vmihailenco/msgpack/v5"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// proc is one shoal process of a test.
type proc struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when it exited, with err set
	err  error
}

// startProc runs `shoal ARGS -c cfg`: $SHOAL_BIN when set (make test
// builds it), else this test binary playing the shoal command.
func startProc(t *testing.T, cfg string, args ...string) *proc {
	t.Helper()
	logf, err := os.CreateTemp(t.TempDir(), args[0]+"-*.log")
	if err != nil {
		t.Fatal(err)
	}
	args = append(args, "-c", cfg)
	var cmd *exec.Cmd
	if bin := os.Getenv("SHOAL_BIN"); bin != "" {
		cmd = exec.Command(bin, args...)
	} else {
		cmd = exec.Command(os.Args[0], append([]string{"-test.run=^TestEventsHelperProcess$", "--"}, args...)...)
		cmd.Env = append(os.Environ(), helperEnv+"=cli")
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, log: logf.Name(), done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); logf.Close(); close(p.done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			b, _ := os.ReadFile(p.log)
			if len(b) > 4000 {
				b = b[len(b)-4000:]
			}
			t.Logf("%s log (tail):\n%s", args[0], b)
		}
	})
	return p
}

func (p *proc) rssKiB(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

func getOK(url string) bool {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}

func getBody(t *testing.T, url string) string {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func brokerPrefixes(t *testing.T, admin string) []string {
	t.Helper()
	var st broker.Stats
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + admin + "/stats")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	if json.NewDecoder(resp.Body).Decode(&st) != nil || st.Events == nil {
		return nil
	}
	return st.Events.Prefixes
}

// Items 1, 3 and 4 across real processes: a broker and a frontend run as
// `shoal broker` and `shoal frontend`; HTTP clients read /events; events
// are published to the broker from this process. The broker is killed and
// restarted under the stream, a client stops reading, a raw subscriber
// stalls at the broker, and the frontend is stopped with SIGTERM.
func TestEventsAcrossProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	dir := t.TempDir()
	ports := map[string]string{}
	for _, k := range []string{"clients", "workers", "admin", "in", "out", "listen", "fadmin"} {
		ports[k] = freeAddr(t)
	}
	cfg := filepath.Join(dir, "shoal.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`log: {level: debug}
brokers:
  - {name: b0, clients: tcp://%s, workers: tcp://%s, admin: %q, events_in: tcp://%s, events_out: tcp://%s}
broker: {heartbeat: 100ms, liveness: 3}
frontend: {listen: %q, admin: %q, shutdown_timeout: 5s}
events: {heartbeat: 200ms, client_buffer: 32, queue: 512, queue_bytes: 2MiB}
`, ports["clients"], ports["workers"], ports["admin"], ports["in"], ports["out"], ports["listen"], ports["fadmin"])), 0o644)

	br := startProc(t, cfg, "broker")
	testenv.Eventually(t, 10*time.Second, "broker healthy", func() bool { return getOK("http://" + ports["admin"] + "/healthz") })
	fe := startProc(t, cfg, "frontend")
	url := "http://" + ports["listen"]
	testenv.Eventually(t, 10*time.Second, "frontend ready", func() bool { return getOK(url + "/readyz") })

	pub, err := broker.NewPublisher(broker.PublisherOptions{Endpoints: []string{"tcp://" + ports["in"]}, Heartbeat: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	publish := func(topic string, v any) {
		t.Helper()
		body, _ := msgpack.Marshal(v)
		testenv.Eventually(t, 5*time.Second, "publisher link", pub.Ready)
		if err := pub.Publish(&wire.Event{Topic: topic, Body: body}); err != nil {
			t.Fatalf("publish: %v", err)
		}
	}

	a := openSSE(t, url+"/events?topic=news")
	testenv.Eventually(t, 5*time.Second, "news subscribed at the broker", func() bool {
		return slices.Equal(brokerPrefixes(t, ports["admin"]), []string{"news"})
	})
	publish("news.one", map[string]any{"n": 1})
	if name, data := a.next(t, 5*time.Second); name != "news.one" || data != `{"n":1}` {
		t.Fatalf("first event %s %s", name, data)
	}

	// Item 1: kill -9 the broker and start it again on the same ports.
	// The frontend's subscription comes back by itself, and the client,
	// whose stream never broke, gets events again.
	br.cmd.Process.Kill()
	<-br.done
	br = startProc(t, cfg, "broker")
	testenv.Eventually(t, 10*time.Second, "news subscribed at the restarted broker", func() bool {
		return slices.Equal(brokerPrefixes(t, ports["admin"]), []string{"news"})
	})
	testenv.Eventually(t, 5*time.Second, "publisher reconnected", pub.Ready)
	publish("news.two", map[string]any{"n": 2})
	if name, data := a.next(t, 5*time.Second); name != "news.two" || data != `{"n":2}` {
		t.Fatalf("event after the broker restart %s %s", name, data)
	}

	// Item 4: a client that stops reading is dropped; the one that reads
	// gets everything. Item 1: a subscriber that stalls at the broker does
	// not grow the broker's memory without bound.
	slow := dialSlow(t, ports["listen"], "/events?topic=news")
	stalled, err := zsock.Dial(zsock.Dealer, "tcp://"+ports["out"], zsock.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	stalled.Send(wire.Frames(wire.CmdSubscribe, []byte("news")))
	// It heartbeats (so the broker keeps it) but never reads.
	stopHB := make(chan struct{})
	defer close(stopHB)
	go func() {
		for {
			select {
			case <-stopHB:
				return
			case <-time.After(100 * time.Millisecond):
				stalled.Send(wire.Frames(wire.CmdHeartbeat))
			}
		}
	}()
	testenv.Eventually(t, 5*time.Second, "the frontend and the stalled subscriber on news", func() bool {
		var st broker.Stats
		json.Unmarshal([]byte(getBody(t, "http://"+ports["admin"]+"/stats")), &st)
		return st.Events != nil && st.Events.Subscriptions == 2 // the frontend's and the stalled one
	})
	rss0 := br.rssKiB(t)
	var got atomic.Int64
	readErr := make(chan error, 1)
	const total = 10_000
	go func() {
		for got.Load() < total {
			name, _, err := a.nextErr(20 * time.Second)
			if err != nil || name != "news.load" {
				readErr <- fmt.Errorf("after %d events: %q %v", got.Load(), name, err)
				return
			}
			got.Add(1)
		}
		readErr <- nil
	}()
	pad := strings.Repeat("x", 4000)
	start := time.Now()
	for i := range total {
		publish("news.load", map[string]any{"i": i, "pad": pad})
		if i%20 == 19 {
			testenv.Eventually(t, 10*time.Second, "reader keeps up", func() bool { return got.Load() >= int64(i+1) })
		}
	}
	if err := <-readErr; err != nil {
		t.Fatal(err)
	}
	rss1 := br.rssKiB(t)
	t.Logf("%d events of 4 KB (%d MB) to the reading client in %v; broker RSS %d → %d MiB", total, total*4/1000,
		time.Since(start).Round(time.Millisecond), rss0>>10, rss1>>10)
	var st broker.Stats
	json.Unmarshal([]byte(getBody(t, "http://"+ports["admin"]+"/stats")), &st)
	news := st.Events.Topic("news")
	t.Logf("broker: %+v; queued %d (%d B)", news, st.Events.Queued, st.Events.QueuedBytes)
	if st.Events.Queued > 512 || st.Events.QueuedBytes > 2<<20 || news.Dropped < total-600 {
		t.Errorf("stalled subscriber: queued %d (%d B), dropped %d", st.Events.Queued, st.Events.QueuedBytes, news.Dropped)
	}
	// 40 MB went through; the stalled subscriber may pin its queue (2 MiB)
	// and window, and the heap breathes.
	if grown := rss1 - rss0; grown > 48<<10 {
		t.Errorf("broker RSS grew %d MiB with a stalled subscriber", grown>>10)
	}
	if m := getBody(t, "http://"+ports["fadmin"]+"/metrics"); !strings.Contains(m, `shoal_frontend_event_clients_dropped_total{reason="slow_client"} 1`) {
		t.Errorf("frontend metrics lack the slow client drop")
	}
	if last := slow.drain(t); !strings.Contains(last, "event: dropped\ndata: {\"reason\":\"slow_client\",\"buffer\":32}") {
		t.Errorf("the slow client's stream did not end with the drop notice; its tail:\n%s", last)
	}

	// Item 3: SIGTERM: the stream ends cleanly with a final event and the
	// frontend exits 0.
	fe.cmd.Process.Signal(syscall.SIGTERM)
	if name, data := a.next(t, 5*time.Second); name != "shutdown" || data != `{"reason":"server_shutdown"}` {
		t.Errorf("final event %s %s", name, data)
	}
	if _, _, err := a.nextErr(5 * time.Second); !errors.Is(err, io.EOF) {
		t.Errorf("after the final event: %v, want a clean EOF", err)
	}
	select {
	case <-fe.done:
		if fe.err != nil {
			t.Errorf("frontend exit: %v", fe.err)
		}
	case <-time.After(10 * time.Second):
		t.Error("frontend did not exit after SIGTERM")
	}
}

// slowClient is a raw HTTP client with a small receive buffer that does
// not read until drain.
type slowClient struct{ conn net.Conn }

func dialSlow(t *testing.T, addr, path string) *slowClient {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path)
	return &slowClient{conn: c}
}

// drain reads everything up to the end of the stream and returns its
// last 300 bytes, with chunk framing removed.
func (s *slowClient) drain(t *testing.T) string {
	t.Helper()
	s.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(s.conn), nil)
	if err != nil {
		t.Fatalf("slow client: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Errorf("slow client's stream did not end cleanly after %d bytes: %v", len(b), err)
	}
	return string(b[max(0, len(b)-300):])
}

// helperEnv names the role a re-executed test binary plays: "cli" (the
// shoal command with the arguments after "--", when $SHOAL_BIN is not
// set) or "sdk" (workers that publish and subscribe with the SDK, which
// read the config file named by helperConfig).
const (
	helperEnv    = "SHOAL_EVENTS_HELPER"
	helperConfig = "SHOAL_EVENTS_HELPER_CONFIG"
)

// TestEventsHelperProcess is not a test: it is the body of the helper
// processes (the os/exec helper-process pattern).
func TestEventsHelperProcess(t *testing.T) {
	role := os.Getenv(helperEnv)
	if role == "" {
		t.Skip("helper process only")
	}
	if role == "cli" {
		// The command line after "--", as the shoal binary would see it.
		os.Args = append([]string{"shoal"}, flag.Args()...)
		os.Exit(Main(os.Args[1:]))
	}
	cfg, err := config.Load(os.Getenv(helperConfig))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	ctx, stop := signalContext()
	defer stop()
	if role == "sdk" {
		os.Exit(runSDKHelper(ctx, cfg))
	}
	os.Exit(2)
}

// runSDKHelper serves "hr", which publishes employee.created, and runs a
// worker with no services that answers each employee event with a
// mail.welcome event telling the request id and the hops it saw.
func runSDKHelper(ctx context.Context, cfg *config.Config) int {
	hb := cfg.Broker.Heartbeat.D()
	mux := workers.NewServeMux()
	mux.HandleFunc("hr", func(ctx context.Context, r *workers.Request) (workers.Response, error) {
		if err := workers.Publish(ctx, "employee.created", map[string]any{"name": string(r.Body)}); err != nil {
			return workers.Response{}, err
		}
		return workers.Response{Status: 201}, nil
	})
	hr, err := workers.NewServer(workers.Options{Brokers: cfg.WorkerEndpoints(), EventsIn: cfg.EventsInEndpoints(), Heartbeat: hb}, mux)
	if err != nil {
		return fail(err)
	}
	welcomer, err := workers.NewServer(workers.Options{Brokers: cfg.WorkerEndpoints(), EventsIn: cfg.EventsInEndpoints(),
		EventsOut: cfg.EventsOutEndpoints(), Heartbeat: hb, Name: "welcomer"}, workers.NewServeMux())
	if err != nil {
		return fail(err)
	}
	welcomer.Subscribe("employee", func(ctx context.Context, ev *workers.Event) error {
		var e map[string]any
		if err := ev.Decode(&e); err != nil {
			return err
		}
		hops := make([]string, len(ev.Trace))
		for i, h := range ev.Trace {
			hops[i] = h.Service
		}
		return workers.Publish(ctx, "mail.welcome", map[string]any{"to": e["name"], "rid": ev.RID, "hops": hops})
	})
	var wg sync.WaitGroup
	for _, s := range []*workers.Server{hr, welcomer} {
		wg.Add(1)
		go func() { defer wg.Done(); s.Run(ctx) }()
	}
	wg.Wait()
	return exitOK
}

// startHelper runs this test binary as a helper process.
func startHelper(t *testing.T, cfg, role string) *proc {
	t.Helper()
	logf, err := os.CreateTemp(t.TempDir(), role+"-*.log")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestEventsHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"="+role, helperConfig+"="+cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, log: logf.Name(), done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); logf.Close(); close(p.done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			b, _ := os.ReadFile(p.log)
			t.Logf("%s helper log (tail):\n%s", role, b[max(0, len(b)-4000):])
		}
	})
	return p
}

// Items 2 and 5 across real processes: a broker, a frontend, the notes
// worker and `shoal consumer notes` from the shoal binary; SDK workers in a
// helper process; Redis; real HTTP clients on /events.
func TestSDKAndTaskEventsAcrossProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	rs := redistest.Start(t)
	dir := t.TempDir()
	ports := map[string]string{}
	for _, k := range []string{"clients", "workers", "admin", "in", "out", "listen", "fadmin"} {
		ports[k] = freeAddr(t)
	}
	cfg := filepath.Join(dir, "shoal.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`brokers:
  - {name: b0, clients: tcp://%s, workers: tcp://%s, admin: %q, events_in: tcp://%s, events_out: tcp://%s}
broker: {heartbeat: 100ms}
frontend:
  listen: %q
  admin: %q
  forward_headers: [Content-Type]
  routes:
    - {method: POST, path: /hr, service: hr}
    - {method: POST, path: /notes, service: notes}
redis: {addr: %q}
queue: {poll: 50ms}
`, ports["clients"], ports["workers"], ports["admin"], ports["in"], ports["out"], ports["listen"], ports["fadmin"], rs.Addr)), 0o644)

	startProc(t, cfg, "broker")
	testenv.Eventually(t, 10*time.Second, "broker healthy", func() bool { return getOK("http://" + ports["admin"] + "/healthz") })
	startProc(t, cfg, "frontend")
	startProc(t, cfg, "worker", "notes")
	startHelper(t, cfg, "sdk")
	url := "http://" + ports["listen"]
	testenv.Eventually(t, 10*time.Second, "frontend ready", func() bool { return getOK(url + "/readyz") })
	testenv.Eventually(t, 10*time.Second, "hr, notes and the welcomer's subscription", func() bool {
		var st broker.Stats
		if json.Unmarshal([]byte(getBody(t, "http://"+ports["admin"]+"/stats")), &st) != nil || st.Events == nil {
			return false
		}
		return len(st.Services) == 2 && slices.Contains(st.Events.Prefixes, "employee")
	})

	// Item 2: a request makes hr publish; the welcomer (another process)
	// reacts with an event of its own that carries the request's id and
	// trace; an HTTP client sees both.
	s := openSSE(t, url+"/events?topic=employee&topic=mail")
	testenv.Eventually(t, 5*time.Second, "the stream's subscriptions", func() bool {
		return slices.Equal(brokerPrefixes(t, ports["admin"]), []string{"employee", "mail"})
	})
	req, _ := http.NewRequest("POST", url+"/hr", strings.NewReader("Ada"))
	req.Header.Set("X-Request-Id", "rid-ada")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 201 {
		t.Fatalf("POST /hr: %v %v", resp, err)
	}
	resp.Body.Close()
	got := map[string]string{}
	for range 2 {
		name, data := s.next(t, 5*time.Second)
		got[name] = data
	}
	if got["employee.created"] != `{"name":"Ada"}` {
		t.Errorf("employee.created: %q", got["employee.created"])
	}
	var mail struct {
		To   string   `json:"to"`
		RID  string   `json:"rid"`
		Hops []string `json:"hops"`
	}
	if err := json.Unmarshal([]byte(got["mail.welcome"]), &mail); err != nil || mail.To != "Ada" || mail.RID != "rid-ada" ||
		!slices.Equal(mail.Hops, []string{"frontend", "hr"}) {
		t.Errorf("mail.welcome %q: %+v %v", got["mail.welcome"], mail, err)
	}

	// Item 5: 202 and a task id; the client watches task.<id>; the
	// consumer (started once the stream is subscribed) runs the task and
	// its hook publishes the outcome.
	resp, err = http.Post(url+"/notes", "application/json", strings.NewReader(`{"text":"hello"}`))
	if err != nil {
		t.Fatal(err)
	}
	var accepted struct {
		TaskID string `json:"task_id"`
	}
	json.NewDecoder(resp.Body).Decode(&accepted)
	resp.Body.Close()
	if resp.StatusCode != 202 || accepted.TaskID == "" {
		t.Fatalf("POST /notes: %d %+v", resp.StatusCode, accepted)
	}
	task := openSSE(t, url+"/events?topic=task."+accepted.TaskID)
	testenv.Eventually(t, 5*time.Second, "the task stream's subscription", func() bool {
		return slices.Contains(brokerPrefixes(t, ports["admin"]), "task."+accepted.TaskID)
	})
	startProc(t, cfg, "consumer", "notes", "-data", filepath.Join(dir, "notes"))
	name, data := task.next(t, 15*time.Second)
	if name != "task."+accepted.TaskID+".done" || !strings.Contains(data, `"state":"done"`) || !strings.Contains(data, `"type":"notes.write"`) {
		t.Errorf("task event %s %s", name, data)
	}
}
