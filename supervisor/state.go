package supervisor

import (
	"math/rand/v2"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/shoal-dev/shoal/config"
)

// State is an instance's state, as `shoal ctl status` shows it.
type State string

// The states of an instance (see the package doc).
const (
	Stopped  State = "STOPPED"
	Starting State = "STARTING"
	Running  State = "RUNNING"
	Backoff  State = "BACKOFF"
	Stopping State = "STOPPING"
	Exited   State = "EXITED"
	Fatal    State = "FATAL"
)

// hasProcess reports whether an instance in state st has a live child.
func (st State) hasProcess() bool { return st == Starting || st == Running || st == Stopping }

// program is one entry of the config's programs: list and its instances.
type program struct {
	cfg       config.Program
	instances []*instance
	removed   bool // dropped by a reload: stop, then forget
}

// instance is one child process slot, NAME:INDEX. Only the loop touches
// it.
type instance struct {
	prog  *program
	index int
	name  string // NAME:INDEX

	state State
	want  bool // should run: set by start, cleared by stop and shutdown
	info  string

	proc      *os.Process
	pid       int
	gen       uint64    // incremented at every spawn; stale events carry an older one
	started   time.Time // when the current (or last) process started
	exitedAt  time.Time
	readyAt   time.Time
	retries   int // failed starts in a row
	restarts  int // starts after the first
	spawns    int
	lastExit  string
	exitCode  int // of the last exit; -1 when killed by a signal
	lastGap   time.Duration
	stopReq   bool   // we asked the running process to stop
	notReady  string // the readiness check timed out: why the start failed
	drop      bool   // a reload removed this instance: forget it once down
	restart   bool   // start again once the requested stop completes
	fresh     bool   // the next start is a fresh one: reset retries
	timer     *time.Timer
	cancelRdy func()
	pipes     chan struct{} // closed when the current process's output pipes hit EOF
	logs      *instanceLogs
	// spec is the process spec of the current process, to detect changes.
	spec procKey
	// stopSent is when the stop signal was sent: SIGKILL follows after
	// stopwaitsecs.
	stopSent time.Time
}

func instanceName(prog string, i int) string { return prog + ":" + strconv.Itoa(i) }

// exitText describes a wait status: "exit 0", "exit 3", "signal KILL".
func exitText(ws syscall.WaitStatus) (string, int) {
	switch {
	case ws.Exited():
		return "exit " + strconv.Itoa(ws.ExitStatus()), ws.ExitStatus()
	case ws.Signaled():
		return "signal " + signalName(ws.Signal()), -1
	}
	return "status " + strconv.Itoa(int(ws)), -1
}

var signalNames = map[syscall.Signal]string{
	syscall.SIGHUP: "HUP", syscall.SIGINT: "INT", syscall.SIGQUIT: "QUIT", syscall.SIGILL: "ILL",
	syscall.SIGTRAP: "TRAP", syscall.SIGABRT: "ABRT", syscall.SIGBUS: "BUS", syscall.SIGFPE: "FPE",
	syscall.SIGKILL: "KILL", syscall.SIGUSR1: "USR1", syscall.SIGSEGV: "SEGV", syscall.SIGUSR2: "USR2",
	syscall.SIGPIPE: "PIPE", syscall.SIGALRM: "ALRM", syscall.SIGTERM: "TERM", syscall.SIGSTOP: "STOP",
	syscall.SIGTSTP: "TSTP", syscall.SIGCONT: "CONT", syscall.SIGWINCH: "WINCH", syscall.SIGXCPU: "XCPU",
}

func signalName(s syscall.Signal) string {
	if n, ok := signalNames[s]; ok {
		return n
	}
	return strconv.Itoa(int(s))
}

// ParseSignal maps a name (TERM, SIGTERM, term) or number to a signal.
func ParseSignal(name string) (syscall.Signal, bool) {
	if n, err := strconv.Atoi(name); err == nil && n > 0 && n < 65 {
		return syscall.Signal(n), true
	}
	n, _ := config.NormalizeSignal(name)
	for s, v := range signalNames {
		if v == n {
			return s, true
		}
	}
	return 0, false
}

// backoffDelay is the wait before retry n (1-based) of a failed start:
// exponential from backoff, capped at backoff_max, with ±20% jitter.
func backoffDelay(p *config.Program, n int) time.Duration {
	d := p.Backoff.D()
	for i := 1; i < n && d < p.BackoffMax.D(); i++ {
		d *= 2
	}
	d = min(d, p.BackoffMax.D())
	jitter := 0.8 + 0.4*rand.Float64()
	return time.Duration(float64(d) * jitter)
}
