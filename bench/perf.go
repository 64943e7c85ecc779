package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The syscalls counted by -syscalls, besides the total. Those the kernel
// has no tracepoint for are skipped.
var tracedSyscalls = []string{
	"read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg",
	"epoll_pwait", "epoll_wait", "futex", "nanosleep", "sched_yield", "tgkill",
	"getpid", "rt_sigreturn", "madvise", "mmap", "accept4", "close",
}

const totalSyscalls = "raw_syscalls:sys_enter"

// syscallEvents returns the perf events to count, checking tracefs for
// which exist.
func syscallEvents() []string {
	ev := []string{totalSyscalls}
	for _, root := range []string{"/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"} {
		if _, err := os.Stat(root); err != nil {
			continue
		}
		for _, s := range tracedSyscalls {
			if _, err := os.Stat(filepath.Join(root, "syscalls", "sys_enter_"+s)); err == nil {
				ev = append(ev, "syscalls:sys_enter_"+s)
			}
		}
		break
	}
	return ev
}

// perfRun is one perf process attached to one process of a stack.
type perfRun struct {
	proc string // the stack process's name
	cmd  *exec.Cmd
	out  string // perf stat's output file, or perf record's data file
	errb bytes.Buffer
}

// startPerf attaches `perf stat` (counting syscalls) or `perf record`
// (sampling CPU with call graphs) to pid.
func startPerf(ctx context.Context, kind, dir, name string, pid int) (*perfRun, error) {
	r := &perfRun{proc: name}
	var args []string
	switch kind {
	case "stat":
		r.out = filepath.Join(dir, name+".perfstat")
		args = []string{"stat", "-x", ",", "-o", r.out, "-e", strings.Join(syscallEvents(), ","), "-p", strconv.Itoa(pid)}
	case "record":
		r.out = filepath.Join(dir, name+".perf.data")
		args = []string{"record", "-q", "-e", "cpu-clock", "-F", "997", "-g", "-o", r.out, "-p", strconv.Itoa(pid)}
	default:
		return nil, fmt.Errorf("unknown perf kind %q", kind)
	}
	r.cmd = exec.CommandContext(ctx, "perf", args...)
	r.cmd.Stderr = &r.errb
	r.cmd.Stdout = &r.errb
	r.cmd.WaitDelay = 10 * time.Second
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGINT}
	if err := r.cmd.Start(); err != nil {
		return nil, fmt.Errorf("perf %s: %w", kind, err)
	}
	return r, nil
}

// stop ends perf with SIGINT, which makes it write its results.
func (r *perfRun) stop() error {
	_ = r.cmd.Process.Signal(syscall.SIGINT)
	err := r.cmd.Wait()
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && r.fileOK()) {
		return fmt.Errorf("perf for %s: %v: %s", r.proc, err, bytes.TrimSpace(r.errb.Bytes()))
	}
	return nil
}

func (r *perfRun) fileOK() bool {
	st, err := os.Stat(r.out)
	return err == nil && st.Size() > 0
}

// syscallCounts reads a `perf stat -x ,` output file: event → count.
func syscallCounts(path string) (map[string]int64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	counts := make(map[string]int64)
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ",")
		if len(f) < 3 || strings.HasPrefix(f[0], "#") {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue // "<not counted>", "<not supported>"
		}
		name := f[2]
		if name != totalSyscalls {
			name = strings.TrimPrefix(name, "syscalls:sys_enter_")
		} else {
			name = "total"
		}
		counts[name] = n
	}
	if len(counts) == 0 {
		return nil, fmt.Errorf("%s: no counts (perf said: %s)", path, bytes.TrimSpace(data))
	}
	return counts, nil
}

// topSymbols runs perf report on a data file and returns its n hottest
// functions (self time) as "12.3%  symbol" lines.
func topSymbols(ctx context.Context, data string, n int) ([]string, error) {
	out, err := exec.CommandContext(ctx, "perf", "report", "-i", data, "--stdio", "--no-children",
		"--sort", "dso,symbol", "-g", "none", "--percent-limit", "0.5").Output()
	if err != nil {
		return nil, fmt.Errorf("perf report %s: %w", data, err)
	}
	var top []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() && len(top) < n {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || !strings.Contains(line, "%") {
			continue
		}
		// "12.34%  shoal  [.] runtime.mallocgc  -  -" (IPC columns last)
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasSuffix(f[0], "%") {
			continue
		}
		sym := f[3]
		if f[2] == "[k]" {
			sym += " [kernel]"
		}
		top = append(top, fmt.Sprintf("%7s  %s", f[0], sym))
	}
	return top, nil
}
