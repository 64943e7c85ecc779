package e2e

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/queue/redistest"
	"github.com/shoal-dev/shoal/internal/testenv"
	"github.com/shoal-dev/shoal/supervisor"
)

// Item 11: make run's script starts the supervisor with the config's
// programs (redis-server, broker, workers, frontend), waits until they
// are ready, prints the URL to curl and the shoal ctl status command, and
// on Ctrl-C stops everything; it writes nothing outside the run dir it
// names.
func TestMakeRunScript(t *testing.T) {
	redistest.Binary(t)
	s := newStack(t, "")
	// The default socket, under the run dir, as make run has it.
	s.writeConfig(strings.Replace(brokerHead, "socket: {{Socket}}", `socket: ""`, 1) + standardPrograms)
	runDir := filepath.Join(s.dir, "run")
	s.c = supervisor.NewClient(filepath.Join(runDir, "shoal.sock"))
	listen := "127.0.0.1:" + strconv.Itoa(s.p.Listen)

	cmd := exec.Command(filepath.Join(repoRoot, "scripts", "run.sh"))
	cmd.Env = append(os.Environ(), "CFG="+s.file, "BIN="+shoalBin, "RUN_DIR="+runDir, "SHOAL_FRONTEND_LISTEN="+listen)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // a terminal's foreground group: Ctrl-C reaches all of it
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &testenv.SyncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if t.Failed() {
			t.Logf("run.sh stderr:\n%s", stderr.String())
		}
	})

	out := lines(stdout)
	var printed []string
	curl, status := "curl 'http://"+listen+"/echo?hello=world'", ""
	deadline := time.After(60 * time.Second)
	for status == "" {
		select {
		case l, ok := <-out:
			if !ok {
				t.Fatalf("run.sh ended its output early:\n%s", strings.Join(printed, "\n"))
			}
			printed = append(printed, l)
			if f := strings.Fields(l); len(f) > 2 && f[1] == "ctl" && f[2] == "status" {
				status = strings.TrimSpace(strings.Split(l, "#")[0])
			}
		case <-deadline:
			t.Fatalf("run.sh printed no ctl status command in 60s:\n%s", strings.Join(printed, "\n"))
		}
	}
	go io.Copy(io.Discard, stdout)
	text := strings.Join(printed, "\n")
	if !strings.Contains(text, curl) || !strings.Contains(text, "logs in "+runDir+"/log") {
		t.Errorf("run.sh did not print the URL and the run dir:\n%s", text)
	}
	resp, err := http.Get("http://" + listen + "/echo?hello=world")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("the printed URL: %v %v", resp, err)
	}
	resp.Body.Close()
	// The printed status command works as printed.
	f := strings.Fields(status)
	st, err := exec.Command(f[0], f[1:]...).CombinedOutput()
	if err != nil || !strings.Contains(string(st), "frontend:0  RUNNING") {
		t.Errorf("%s: %v\n%s", status, err, st)
	}
	all, err := s.c.Status(context.Background())
	if err != nil || len(all) != 5 {
		t.Fatalf("status: %v %v", all, err)
	}

	// Ctrl-C.
	syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("run.sh after Ctrl-C: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run.sh still runs 30s after Ctrl-C")
	}
	s.checkNoLeftovers()
	for _, x := range all {
		if alive(x.PID) {
			t.Errorf("%s (pid %d) survived Ctrl-C", x.Name, x.PID)
		}
	}
	// Nothing outside the run dir: the config's directory holds the
	// config and the run dir, which holds the logs and redis's data.
	var top, inRun []string
	ents, _ := os.ReadDir(s.dir)
	for _, e := range ents {
		top = append(top, e.Name())
	}
	ents, _ = os.ReadDir(runDir)
	for _, e := range ents {
		inRun = append(inRun, e.Name())
	}
	if !slices.Equal(top, []string{"run", "shoal.yaml"}) || !slices.Equal(inRun, []string{"log", "redis"}) {
		t.Errorf("files: %v, run/: %v", top, inRun)
	}
}
