//go:build deploy

package deploytest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Every docker object the test makes carries labelRun=<run id> and
// labelPID=<pid of the test binary>: t.Cleanup removes the run's objects,
// the next run removes those of runs whose process is gone, and
// cleanup.sh (called by `make test-deploy` whatever happens to go test)
// removes a run's objects by its id.
const (
	labelRun = "shoal-deploytest"
	labelPID = "shoal-deploytest.pid"
)

// Environment variables the test reads.
const (
	// envRun: the run id (a-z 0-9 '-'); `make test-deploy` sets it so
	// that it can clean up after a go test that was killed.
	envRun = "SHOAL_DEPLOYTEST_RUN"
	// envBin: the shoal binary to deploy (`make test-deploy`: bin/shoal);
	// without it the test builds one.
	envBin = "SHOAL_BIN"
	// envImage: use this existing image instead of building one (to
	// iterate on the test; the test does not remove it).
	envImage = "SHOAL_DEPLOYTEST_IMAGE"
	// envKeep=1: keep the containers, network, image and temp dir (to
	// look at a failure); the log says how to remove them.
	envKeep = "SHOAL_DEPLOYTEST_KEEP"
)

var runIDRe = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,30}$`)

// newRunID is the run id: $SHOAL_DEPLOYTEST_RUN or a random one.
func newRunID(t *testing.T) string {
	if id := os.Getenv(envRun); id != "" {
		if !runIDRe.MatchString(id) {
			t.Fatalf("%s=%q: want a-z 0-9 '-' (at most 31)", envRun, id)
		}
		return id
	}
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// requireTools fails the test, naming what is missing, when a tool the
// deploy test needs is not there. It never skips: the deploy test is part
// of `make test`, and a machine that cannot run it must say so.
func requireTools(t *testing.T) {
	t.Helper()
	var missing []string
	for _, tool := range []struct{ name, pkg string }{
		{"docker", "docker.io (and a running Docker engine)"},
		{"debootstrap", "debootstrap"},
		{"ansible-playbook", "ansible"},
		{"ansible-vault", "ansible"},
		{"ssh", "openssh-client"},
		{"ssh-keygen", "openssh-client"},
		{"chroot", "coreutils"},
	} {
		if _, err := lookPath(tool.name); err != nil {
			missing = append(missing, fmt.Sprintf("%s (Debian package %s)", tool.name, tool.pkg))
		}
	}
	if len(missing) > 0 {
		t.Fatalf("the deploy test needs: %s; `make test` installs the Debian packages (TEST_DEBS)", strings.Join(missing, ", "))
	}
	if os.Geteuid() != 0 {
		t.Fatalf("the deploy test runs debootstrap and needs root (uid %d)", os.Geteuid())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := run(ctx, "", nil, nil, "docker", "version", "--format", "{{.Server.Version}}"); err != nil {
		t.Fatalf("the deploy test needs a Docker engine it can reach: %v", err)
	} else {
		t.Logf("docker engine %s", strings.TrimSpace(out))
	}
}

// lookPath is exec.LookPath that also searches the sbin directories, which
// a non-login root shell may lack in PATH (debootstrap, chroot).
func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found", name)
}

// run runs a command and returns its combined output; the error carries
// the output's tail. The command and every process it starts (ssh under
// ansible-playbook) are killed when ctx ends.
func run(ctx context.Context, dir string, env []string, stdin []byte, name string, args ...string) (string, error) {
	cmd := command(ctx, dir, env, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, tail(out.String(), 40))
	}
	return out.String(), err
}

// command is exec.CommandContext in its own process group, the group
// killed when ctx ends.
func command(ctx context.Context, dir string, env []string, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("[… %d lines before]", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// poll calls f until it returns nil or the deadline passes; then it
// returns f's last error.
func poll(ctx context.Context, timeout, every time.Duration, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		err := f()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not within %v: %w", timeout, err)
		case <-time.After(every):
		}
	}
}

// processAlive reports whether pid is a running process.
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
