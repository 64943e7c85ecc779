package supervisor

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/testenv"
)

// Item 4: stdout and stderr go to files rotated by size with a kept
// count; tee copies lines to the supervisor's log with the instance's
// name; tail shows the last lines and, following, what comes next.
func TestLogsRotateTeeAndTail(t *testing.T) {
	h := start(t, `supervisor:
  socket: @SOCKET@
  log_max_size: 1MiB
  log_keep: 2
programs:
  - name: chatty
    command: [/bin/sh, -c, 'i=0; while [ $i -lt 40 ]; do head -c 100000 /dev/zero | tr "\0" x; echo; i=$((i+1)); done; echo done >&2; exec sleep 1000']
    startsecs: 0s
  - name: teed
    command: [/bin/sh, -c, 'trap "echo got hup" HUP; echo hello out; echo hello err >&2; while :; do sleep 0.02; done']
    startsecs: 0s
    tee: true
brokers:
  - {name: b0, clients: "tcp://127.0.0.1:0", workers: "tcp://127.0.0.1:0"}
`)
	logDir := filepath.Join(h.sup.RunDir(), "log")
	errLog := File(logDir, "chatty", 0, Stderr)
	testenv.Eventually(t, 20*time.Second, "chatty to finish writing", func() bool {
		b, _ := os.ReadFile(errLog)
		return string(b) == "done\n"
	})
	// 4 MB written, 1 MiB files, 2 kept: the current one and 2 rotated.
	testenv.Eventually(t, 5*time.Second, "rotation to keep 2 old files", func() bool {
		files, _ := filepath.Glob(filepath.Join(logDir, "chatty.0.stdout*.log"))
		return len(files) == 3
	})
	files, _ := filepath.Glob(filepath.Join(logDir, "chatty.0.stdout*.log"))
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil || fi.Size() > 1<<20 || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, %v", f, fi.Size(), err)
		}
	}

	tee := func() string { return h.tee.String() }
	testenv.Eventually(t, 5*time.Second, "tee lines", func() bool {
		return strings.Contains(tee(), "teed:0 | hello out\n") && strings.Contains(tee(), "teed:0 | hello err\n")
	}, func() string { return "tee: " + tee() })
	if strings.Contains(tee(), "chatty") {
		t.Error("chatty's output went to the supervisor's log without tee")
	}

	var out strings.Builder
	if err := h.c.Tail(h.ctx(), &out, TailOptions{Names: []string{"teed"}, Lines: 5, Stream: Stderr}); err != nil {
		t.Fatal(err)
	}
	if out.String() != "hello err\n" {
		t.Errorf("tail teed --stderr: %q", out.String())
	}
	out.Reset()
	if err := h.c.Tail(h.ctx(), &out, TailOptions{Names: []string{"teed:0"}}); err != nil {
		t.Fatal(err)
	}
	if want := "==> teed:0 stdout <==\nhello out\n\n==> teed:0 stderr <==\nhello err\n"; out.String() != want {
		t.Errorf("tail teed:\n%s\nwant:\n%s", out.String(), want)
	}

	// tail -f: what the instance writes from now on.
	follow := &testenv.SyncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- h.c.Tail(ctx, follow, TailOptions{Names: []string{"teed"}, Lines: -1, Stream: Stdout, Follow: true})
	}()
	testenv.Eventually(t, 5*time.Second, "the follower to subscribe", func() bool {
		var il *instanceLogs
		_ = h.sup.call(context.Background(), func() { il = h.sup.progs[1].instances[0].logs })
		il.mu.Lock()
		defer il.mu.Unlock()
		return len(il.followers) == 1
	})
	if _, err := h.c.Signal(h.ctx(), "HUP", []string{"teed"}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "the followed line", func() bool { return strings.Contains(follow.String(), "got hup\n") },
		func() string { return "followed: " + follow.String() })
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Tail -f: %v", err)
	}
	if strings.Contains(follow.String(), "hello") {
		t.Errorf("tail -f -n 0 showed history: %q", follow.String())
	}
}

func TestLastLines(t *testing.T) {
	f := filepath.Join(t.TempDir(), "x.log")
	if b, err := lastLines(f, 3); err != nil || b != nil {
		t.Errorf("missing file: %q, %v", b, err)
	}
	os.WriteFile(f, []byte("a\nb\nc\nd\n"), 0o600)
	for n, want := range map[int]string{0: "", 1: "d\n", 3: "b\nc\nd\n", 9: "a\nb\nc\nd\n"} {
		if b, err := lastLines(f, n); err != nil || string(b) != want {
			t.Errorf("lastLines(%d) = %q, %v; want %q", n, b, err, want)
		}
	}
	os.WriteFile(f, []byte("a\nno newline"), 0o600)
	if b, _ := lastLines(f, 1); string(b) != "no newline" {
		t.Errorf("unterminated last line: %q", b)
	}
	big := strings.Repeat("0123456789\n", 20000)
	os.WriteFile(f, []byte(big), 0o600)
	if b, _ := lastLines(f, 2); string(b) != "0123456789\n0123456789\n" {
		t.Errorf("big file: %q", b)
	}
}
