package cli

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// capture runs f with os.Stdout and os.Stderr sent to one pipe.
func capture(t *testing.T, f func() int) (int, string) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	oldOut, oldErr := os.Stdout, os.Stderr
	os.Stdout, os.Stderr = w, w
	out := make(chan string)
	go func() { b, _ := io.ReadAll(r); out <- string(b) }()
	code := f()
	os.Stdout, os.Stderr = oldOut, oldErr
	w.Close()
	return code, <-out
}

func TestCheck(t *testing.T) {
	code, out := capture(t, func() int { return Main([]string{"check", "-c", "../../shoal.yaml"}) })
	if code != exitOK || !strings.Contains(out, "ok") {
		t.Fatalf("check of the example config: exit %d, output %q", code, out)
	}

	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("brokers:\n  - name: b0\n    clients: udp://x\n    workers: tcp://127.0.0.1:1\nfrontend:\n  listn: x\n"), 0o644)
	code, out = capture(t, func() int { return Main([]string{"check", "-c", bad}) })
	if code != exitConfig {
		t.Errorf("exit %d for a broken config, want %d", code, exitConfig)
	}
	for _, want := range []string{"bad.yaml:3:", "brokers[0].clients", "bad.yaml:6:", "listn"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestUsage(t *testing.T) {
	if code, _ := capture(t, func() int { return Main(nil) }); code != exitUsage {
		t.Errorf("no command: exit %d", code)
	}
	if code, out := capture(t, func() int { return Main([]string{"frobnicate"}) }); code != exitUsage || !strings.Contains(out, "unknown command") {
		t.Errorf("unknown command: exit %d, %q", code, out)
	}
	if code, out := capture(t, func() int { return Main([]string{"worker", "nosuch", "-c", "../../shoal.yaml"}) }); code != exitUsage || !strings.Contains(out, "known: echo, greeter") {
		t.Errorf("unknown worker: exit %d, %q", code, out)
	}
	if code, out := capture(t, func() int { return Main([]string{"version"}) }); code != exitOK || !strings.HasPrefix(out, "shoal ") {
		t.Errorf("version: exit %d, %q", code, out)
	}
}
