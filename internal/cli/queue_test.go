package cli

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/queue/redistest"
	"github.com/shoal-dev/shoal/queue"
	"github.com/shoal-dev/shoal/wire"
)

// queueConfig writes a config whose redis is srv.
func queueConfig(t *testing.T, srv *redistest.Server) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "shoal.yaml")
	cfg := "brokers:\n  - {name: b0, clients: tcp://127.0.0.1:0, workers: tcp://127.0.0.1:0}\nredis: {addr: \"" + srv.Addr + "\"}\n"
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// Item 8: shoal queue stats | ls | show | replay | delete | pause | resume.
func TestQueueCommands(t *testing.T) {
	srv := redistest.Start(t)
	cfg := queueConfig(t, srv)
	rdb := queue.NewRedis(queue.RedisOptions{Addr: srv.Addr})
	defer rdb.Close()
	ctx := context.Background()
	client := queue.NewClient(rdb, queue.ClientOptions{})
	task, _ := queue.NewTask("email:send", map[string]any{"to": "ann@example.com"})
	var ids []string
	for range 3 {
		info, err := client.Enqueue(ctx, task, queue.MaxRetries(0), queue.WithTrace("req-77", []wire.Hop{{Service: "signup", Process: "w/1"}}))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, info.ID)
	}
	// Run them to death.
	mux := queue.NewServeMux()
	mux.HandleFunc("email:send", func(ctx context.Context, t *queue.Task) error { return errors.New("smtp: connection refused") })
	c, err := queue.NewConsumer(rdb, queue.ConsumerOptions{Poll: 20 * time.Millisecond}, mux)
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	stopped := make(chan struct{})
	go func() { c.Run(cctx); close(stopped) }()
	insp := queue.NewInspector(rdb)
	for deadline := time.Now().Add(10 * time.Second); ; {
		st, _ := insp.Stats(ctx)
		if len(st) == 1 && st[0].Dead == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tasks did not die: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-stopped

	run := func(args ...string) (int, string) {
		return capture(t, func() int { return Main(append([]string{"queue"}, append(args, "-c", cfg)...)) })
	}
	expect := func(code int, out string, wantCode int, wants ...string) {
		t.Helper()
		if code != wantCode {
			t.Errorf("exit %d, want %d; output:\n%s", code, wantCode, out)
		}
		for _, w := range wants {
			if !strings.Contains(out, w) {
				t.Errorf("output lacks %q:\n%s", w, out)
			}
		}
	}

	code, out := run("stats")
	expect(code, out, exitOK, "QUEUE", "default", "DEAD")
	code, out = run("stats", "-json")
	expect(code, out, exitOK, `"dead": 3`, `"dead_total": 3`)

	code, out = run("ls")
	expect(code, out, exitOK, ids[0], "email:send", "dead", "smtp: connection refused", "req-77")

	code, out = run("show", ids[1])
	expect(code, out, exitOK, "state:", "dead", "request id:", "req-77", `{"to":"ann@example.com"}`, "trace[0]: signup on w/1")

	code, out = run("show", "01jd8x3k5qg7w2c9v4m6r8t0ya")
	expect(code, out, exitFailure, "no such task")

	code, out = run("replay", ids[0])
	expect(code, out, exitOK, ids[0]+": replayed")
	if info, _ := insp.Get(ctx, ids[0]); info.State != queue.Pending {
		t.Errorf("replayed task is %s", info.State)
	}
	code, out = run("delete", ids[0])
	expect(code, out, exitOK, ids[0]+": deleted")
	code, out = run("replay", "-all")
	expect(code, out, exitOK, "replayed 2 tasks")
	code, out = run("delete", "-all", "-state", "pending")
	expect(code, out, exitFailure, "not \"pending\"")
	code, out = run("delete", ids[1], ids[2])
	expect(code, out, exitOK, ids[1]+": deleted", ids[2]+": deleted")

	code, out = run("pause", "default")
	expect(code, out, exitOK, "default: paused")
	code, out = run("stats")
	expect(code, out, exitOK, "paused")
	code, out = run("resume", "default")
	expect(code, out, exitOK, "default: resumed")

	code, out = run("frobnicate")
	expect(code, out, exitUsage, "unknown command")
	code, out = run("show")
	expect(code, out, exitUsage, "want one task id")

	// Redis down: a clear error naming the address, exit 1.
	srv.Kill()
	code, out = run("stats")
	expect(code, out, exitFailure, "redis "+srv.Addr)
}

func TestConsumerCommandUsage(t *testing.T) {
	code, out := capture(t, func() int { return Main([]string{"consumer", "nosuch", "-c", "../../shoal.yaml"}) })
	if code != exitUsage || !strings.Contains(out, "known: notes") {
		t.Errorf("unknown consumer: exit %d, %q", code, out)
	}
	for args, want := range map[string]string{
		"worker notes -c x.yaml":        "x.yaml",
		"worker notes -c=y.yaml":        "y.yaml",
		"worker notes --c z.yaml":       "z.yaml",
		"worker notes":                  "shoal.yaml",
		"worker notes -- -c never.yaml": "shoal.yaml",
	} {
		if got := configPathFromArgs(strings.Fields(args)); got != want {
			t.Errorf("configPathFromArgs(%q) = %q, want %q", args, got, want)
		}
	}
}
