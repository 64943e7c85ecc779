package queue_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/testenv"
	"github.com/shoal-dev/shoal/queue"
	"github.com/shoal-dev/shoal/workers/example"
)

// builtIn is the temporary directory shoalBin built the binary in, if any.
var builtIn string

// The shoal binary the process tests run: $SHOAL_BIN (make test builds
// bin/shoal), or built once into a temporary directory.
var shoalBin = sync.OnceValues(func() (string, error) {
	if bin := os.Getenv("SHOAL_BIN"); bin != "" {
		return filepath.Abs(bin)
	}
	dir, err := os.MkdirTemp("", "shoal-queue-e2e-")
	if err != nil {
		return "", err
	}
	builtIn = dir // TestMain removes it
	bin := filepath.Join(dir, "shoal")
	_, file, _, _ := runtime.Caller(0)
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/shoal")
	cmd.Dir = filepath.Join(filepath.Dir(file), "..")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/shoal: %v\n%s", err, out)
	}
	return bin, nil
})

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// proc is a shoal process started by a test.
type proc struct {
	name   string
	cmd    *exec.Cmd
	log    string
	exited chan struct{}
}

func startProc(t *testing.T, dir, name string, args ...string) *proc {
	t.Helper()
	bin, err := shoalBin()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{name: name, log: filepath.Join(dir, name+".log"), exited: make(chan struct{})}
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	p.cmd.Dir = dir
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); f.Close(); close(p.exited) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			b, _ := os.ReadFile(p.log)
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			if len(lines) > 25 {
				lines = lines[len(lines)-25:]
			}
			t.Logf("--- last lines of %s:\n%s", name, strings.Join(lines, "\n"))
		}
	})
	return p
}

// stop sends sig and waits for the process to exit.
func (p *proc) stop(t *testing.T, sig syscall.Signal) {
	t.Helper()
	p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s did not exit after %v", p.name, sig)
	}
}

// Item 9: 1,000 writes go through the frontend to the notes worker, which
// answers 202 with a task id; the consumer writing them into the store is
// killed halfway and started again; all 1,000 rows are in the store, each
// carrying the request id of its POST.
func TestNotesEndToEnd(t *testing.T) {
	srv := newEnv(t).srv
	dir := t.TempDir()
	listen := freeAddr(t)
	cfg := filepath.Join(dir, "shoal.yaml")
	yaml := fmt.Sprintf(`log: {level: info}
brokers:
  - {name: b0, clients: "tcp://%s", workers: "tcp://%s"}
broker: {heartbeat: 100ms}
frontend:
  listen: "%s"
  admin: ""
  forward_headers: [Content-Type, Idempotency-Key]
  routes:
    - {method: POST, path: /notes, service: notes}
    - {method: GET, path: "/notes/{id}", service: notes}
redis: {addr: "%s"}
queue:
  concurrency: 10
  lease: 2s
  poll: 100ms
  shutdown_timeout: 5s
`, freeAddr(t), freeAddr(t), listen, srv.Addr)
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	startProc(t, dir, "broker", "broker", "-c", cfg)
	startProc(t, dir, "frontend", "frontend", "-c", cfg)
	startProc(t, dir, "notes-worker", "worker", "notes", "-c", cfg)
	consumer := startProc(t, dir, "consumer-1", "consumer", "notes", "-c", cfg, "-data", data)

	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 32}}
	post := func(rid, text, idem string) (int, map[string]any) {
		req, _ := http.NewRequest("POST", "http://"+listen+"/notes", strings.NewReader(`{"text":`+strconv.Quote(text)+`}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Request-Id", rid)
		if idem != "" {
			req.Header.Set("Idempotency-Key", idem)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return 0, nil
		}
		defer resp.Body.Close()
		var body map[string]any
		b, _ := io.ReadAll(resp.Body)
		json.Unmarshal(b, &body)
		return resp.StatusCode, body
	}
	testenv.Eventually(t, 20*time.Second, "the stack to answer POST /notes", func() bool {
		code, _ := post("warmup", "warm up", "warmup")
		return code == http.StatusAccepted
	})

	const n = 1000
	ids := make([]string, n)
	send := func(from, to int) {
		var wg sync.WaitGroup
		next := make(chan int)
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					code, body := post(fmt.Sprintf("note-%d", i), fmt.Sprintf("note number %d", i), "")
					id, _ := body["task_id"].(string)
					if code != http.StatusAccepted || !queue.ValidID(id) {
						t.Errorf("POST %d: status %d, body %v", i, code, body)
						continue
					}
					ids[i] = id
				}
			}()
		}
		for i := from; i < to; i++ {
			next <- i
		}
		close(next)
		wg.Wait()
	}
	start := time.Now()
	send(0, n/2)
	// Halfway: the consumer dies with tasks in hand (kill -9, no drain),
	// while the other half of the writes arrives.
	consumer.stop(t, syscall.SIGKILL)
	send(n/2, n)
	t.Logf("1000 POSTs answered 202 in %v", time.Since(start).Round(time.Millisecond))
	if t.Failed() {
		t.FailNow()
	}
	insp := queue.NewInspector(queue.NewRedis(queue.RedisOptions{Addr: srv.Addr}))
	ctx := context.Background()
	st, _ := insp.Stats(ctx)
	t.Logf("with the consumer dead: %+v", st)

	consumer = startProc(t, dir, "consumer-2", "consumer", "notes", "-c", cfg, "-data", data)
	testenv.Eventually(t, 60*time.Second, "every note written", func() bool {
		st, err := insp.Stats(ctx)
		if err != nil || len(st) != 1 {
			return false
		}
		s := st[0]
		return s.Pending == 0 && s.Active == 0 && s.Retry == 0 && s.Scheduled == 0 && s.Processed >= n+1
	})
	st, _ = insp.Stats(ctx)
	t.Logf("after the restart: %+v", st)
	if st[0].Dead != 0 {
		t.Errorf("%d dead tasks", st[0].Dead)
	}

	// The worker reports a task's state.
	resp, err := hc.Get("http://" + listen + "/notes/" + ids[7])
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(b, []byte(`"state":"done"`)) || !bytes.Contains(b, []byte(`"request_id":"note-7"`)) {
		t.Errorf("GET /notes/%s: %d %s", ids[7], resp.StatusCode, b)
	}
	// A retried POST with the same Idempotency-Key gets the first task.
	_, first := post("again-1", "idempotent", "key-1")
	_, second := post("again-2", "idempotent", "key-1")
	if first["task_id"] != second["task_id"] || second["existing"] != true {
		t.Errorf("idempotent POSTs: %v then %v", first, second)
	}
	testenv.Eventually(t, 20*time.Second, "the idempotent note", func() bool {
		info, err := insp.Get(ctx, first["task_id"].(string))
		return err == nil && info.State == queue.Done
	})

	// Stop the consumer (SIGTERM: it drains and closes the store) and
	// count the rows.
	consumer.stop(t, syscall.SIGTERM)
	rows, err := example.ReadNotes(filepath.Join(data, example.NotesDB))
	if err != nil {
		t.Fatal(err)
	}
	byID := make(map[string]example.StoredNote, len(rows))
	for _, r := range rows {
		byID[r.ID] = r
	}
	missing := 0
	for i, id := range ids {
		r, ok := byID[id]
		if !ok {
			missing++
			continue
		}
		if r.RequestID != fmt.Sprintf("note-%d", i) || r.Text != fmt.Sprintf("note number %d", i) {
			t.Errorf("row %s: %+v, want request note-%d", id, r, i)
		}
	}
	t.Logf("%d rows (1000 notes + the warm-up + the idempotent one); %d tasks recovered from the killed consumer",
		len(rows), st[0].Recovered)
	if missing != 0 || len(rows) != n+2 {
		t.Errorf("%d of %d notes missing; %d rows", missing, n, len(rows))
	}
}
