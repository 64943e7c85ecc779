package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/shoal-dev/shoal/config"
)

// Options configure a Supervisor.
type Options struct {
	// Config is the validated config to run. Reload reads Config.File
	// again.
	Config *config.Config
	// RunDir, if set, replaces supervisor.run_dir (`shoal supervisor
	// --run-dir`), for this run and every reload.
	RunDir string
	// Executable is what {shoal} expands to. Default: os.Executable().
	Executable string
	// Logger receives the supervisor's own log. Default slog.Default().
	Logger *slog.Logger
	// Tee receives the output of programs with tee: true, each line
	// prefixed with the instance's name. Default os.Stderr.
	Tee io.Writer
	// Hostname is this host's name in the process ids workers give the
	// broker ("host/pid"). Default os.Hostname().
	Hostname string
	// TrimMemory returns memory the supervisor no longer uses to the OS
	// 2s after start-up, control requests and deaths: the free heap and
	// the clean pages of its own executable (see trim.go). For the
	// supervisor's own process, not for a program that embeds one.
	TrimMemory bool
}

// ErrShutdown is returned by calls made while, or after, the supervisor
// stops.
var ErrShutdown = errors.New("supervisor: shutting down")

// Supervisor runs the programs of a config. Create it with New, run it
// with Run; Reload and the control API work while Run runs.
type Supervisor struct {
	o    Options
	log  *slog.Logger
	exe  string
	host string
	file string // the config file Reload reads

	// Fixed at New: a reload cannot move them.
	run, logDir, socket string

	null   *os.File // every child's stdin
	logs   *logSet
	notify *notifier
	gaps   gapRing

	trim    *time.Timer // TrimMemory's debounce
	trimMu  sync.Mutex
	events  chan func()   // closures the loop runs: timers, checks, control calls
	killNow chan struct{} // Kill: SIGKILL everything
	kill    sync.Once
	done    chan struct{} // closed when the loop has ended
	reload  sync.Mutex    // one reload at a time
	wg      sync.WaitGroup

	// Owned by the loop.
	cfg      *config.Config
	progs    []*program // config order; removed programs stay until down
	byPid    map[int]*instance
	shutdown bool
	killing  bool
	dirty    bool          // a state changed this turn: close changed
	changed  chan struct{} // closed and replaced at every change
}

// New prepares a supervisor for cfg: it creates the run and log
// directories. No process starts before Run.
func New(o Options) (*Supervisor, error) {
	if o.Config == nil {
		return nil, errors.New("supervisor: no config")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Tee == nil {
		o.Tee = os.Stderr
	}
	if o.Executable == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("supervisor: cannot find its own executable for {shoal}: %w", err)
		}
		o.Executable = exe
	}
	if o.Hostname == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("supervisor: cannot read the host name: %w", err)
		}
		o.Hostname = h
	}
	c := o.Config
	s := &Supervisor{
		o: o, log: o.Logger, exe: o.Executable, host: o.Hostname, file: c.File,
		events: make(chan func(), 64), killNow: make(chan struct{}),
		done: make(chan struct{}),
		cfg:  c, byPid: make(map[int]*instance), changed: make(chan struct{}),
	}
	s.run = c.RunDir()
	if o.RunDir != "" {
		s.run = absPath(o.RunDir)
	}
	s.logDir, s.socket = c.LogDir(), c.SocketPath()
	if c.Supervisor.LogDir == "" {
		s.logDir = filepath.Join(s.run, "log")
	}
	if c.Supervisor.Socket == "" {
		s.socket = filepath.Join(s.run, "shoal.sock")
	}
	for _, d := range []string{s.run, s.logDir} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("supervisor: cannot create %s: %w", d, unwrapPath(err))
		}
	}
	null, err := os.Open(os.DevNull)
	if err != nil {
		return nil, fmt.Errorf("supervisor: cannot open %s: %w", os.DevNull, err)
	}
	s.null = null
	s.logs = newLogSet(s.logDir, o.Tee)
	s.logs.configure(int64(c.Supervisor.LogMaxSize), c.Supervisor.LogKeep)
	s.notify = newNotifier(s.log)
	s.notify.setBrokers(c, s.host)
	for i := range c.Programs {
		s.progs = append(s.progs, s.newProgram(c.Programs[i]))
	}
	return s, nil
}

// Socket returns the control socket's path.
func (s *Supervisor) Socket() string { return s.socket }

// RunDir returns the run directory.
func (s *Supervisor) RunDir() string { return s.run }

func (s *Supervisor) newProgram(pc config.Program) *program {
	p := &program{cfg: pc}
	for i := range pc.Numprocs {
		p.instances = append(p.instances, s.newInstance(p, i))
	}
	return p
}

func (s *Supervisor) newInstance(p *program, i int) *instance {
	in := &instance{prog: p, index: i, name: instanceName(p.cfg.Name, i), state: Stopped, want: true, fresh: true}
	in.logs = s.logs.instance(p.cfg.Name, i, in.name, p.cfg.Tee)
	return in
}

// Run listens on the control socket, starts the programs in dependency
// order and keeps them up until ctx ends; then it stops them in reverse
// order and returns once every child has exited. A second cancellation is
// Kill's job.
func (s *Supervisor) Run(ctx context.Context) error {
	ln, err := s.listen()
	if err != nil {
		return err
	}
	srv := s.controlServer()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		_ = srv.Serve(ln)
	}()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.notify.run()
	}()

	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, syscall.SIGCHLD)
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		s.loop(ctx, sigchld)
	}()
	<-loopDone
	signal.Stop(sigchld)
	close(s.done)

	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_ = srv.Shutdown(sctx)
	cancel()
	ln.Close()
	os.Remove(s.socket)
	s.notify.close()
	s.wg.Wait()
	s.logs.close()
	s.null.Close()
	s.log.Info("supervisor stopped")
	return nil
}

// Kill stops every child now with SIGKILL (the second Ctrl-C); Run
// returns once they are reaped.
func (s *Supervisor) Kill() {
	s.kill.Do(func() { close(s.killNow) })
}

// loop owns every instance. It runs on one locked OS thread, which forks
// every child: their parent-death signal is tied to this thread.
func (s *Supervisor) loop(ctx context.Context, sigchld chan os.Signal) {
	runtime.LockOSThread()                    // never unlocked: if this goroutine ends, the thread ends and the children get SIGKILL
	safety := time.NewTicker(5 * time.Second) // a lost SIGCHLD costs at most this
	defer safety.Stop()
	stop, killNow := ctx.Done(), s.killNow
	s.log.Info("supervisor running", "programs", len(s.progs), "socket", s.socket, "logs", s.logDir)
	s.schedule()
	s.trimSoon()
	for {
		select {
		case <-sigchld:
			s.safely(s.reapAll)
		case f := <-s.events:
			s.safely(f)
		case <-stop:
			stop = nil
			s.beginShutdown()
		case <-killNow:
			killNow = nil
			s.killAll()
		case <-safety.C:
			s.safely(s.reapAll)
		}
		s.safely(s.schedule)
		if s.dirty {
			close(s.changed)
			s.changed = make(chan struct{})
			s.dirty = false
		}
		if s.shutdown && s.allDown() {
			return
		}
	}
}

// safely runs f, turning a panic (a bug of ours) into an error in the
// log: the supervisor must outlive its own mistakes, since its children
// die with it.
func (s *Supervisor) safely(f func()) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("supervisor: internal error, recovered; please report it", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		}
	}()
	f()
}

// post runs f on the loop, unless the loop has ended.
func (s *Supervisor) post(f func()) {
	select {
	case s.events <- f:
	case <-s.done:
	}
}

// call runs f on the loop and waits for it.
func (s *Supervisor) call(ctx context.Context, f func()) error {
	ran := make(chan struct{})
	select {
	case s.events <- func() { defer close(ran); f() }:
	case <-ctx.Done():
		return ctx.Err()
	case <-s.done:
		return ErrShutdown
	}
	<-ran // the loop runs what it receives at once
	return nil
}

func (s *Supervisor) beginShutdown() {
	s.log.Info("stopping every program, in reverse dependency order")
	s.shutdown = true
	for _, p := range s.progs {
		for _, in := range p.instances {
			in.want = false
		}
	}
	s.dirty = true
}

func (s *Supervisor) killAll() {
	s.log.Warn("killing every program now")
	s.shutdown, s.killing = true, true
	for _, p := range s.progs {
		for _, in := range p.instances {
			in.want = false
			s.cancelTimer(in)
			s.cancelReady(in)
			if in.pid > 0 {
				_ = killGroup(in.pid, syscall.SIGKILL)
			} else {
				in.state = Stopped
			}
		}
	}
	s.dirty = true
}

func (s *Supervisor) allDown() bool {
	for _, p := range s.progs {
		for _, in := range p.instances {
			if in.pid > 0 {
				return false
			}
		}
	}
	return true
}

// reapAll collects every child that has exited.
func (s *Supervisor) reapAll() {
	for pid, in := range s.byPid {
		if !exitedNoReap(pid) {
			continue
		}
		t := time.Now()
		// The dead leader still holds its group's id: nothing can reuse it
		// before the reap, so this reaches only what the child left behind.
		_ = killGroup(pid, syscall.SIGKILL)
		ws := reap(pid)
		delete(s.byPid, pid)
		s.exited(in, ws, t)
	}
}

// ---- transitions ----

// start starts a process for in; in ends STARTING, RUNNING (startsecs 0,
// no check), BACKOFF or FATAL.
func (s *Supervisor) start(in *instance) {
	s.dirty = true
	s.cancelTimer(in)
	in.gen++ // whatever is pending for an earlier attempt is stale now
	if in.fresh {
		in.retries, in.fresh = 0, false
	}
	p := &in.prog.cfg
	cs, err := s.spec(in)
	if err != nil {
		s.fatal(in, "cannot start: "+err.Error())
		return
	}
	if addr := s.ownPort(in); addr != "" && portInUse(addr) {
		s.failedStart(in, fmt.Sprintf("cannot start: %s is already in use by another process", addr))
		return
	}
	proc, outR, errR, err := startProcess(cs, s.null)
	if err != nil {
		s.fatal(in, err.Error())
		return
	}
	in.proc, in.pid, in.started = proc, proc.Pid, time.Now()
	in.state, in.info, in.readyAt = Starting, "", time.Time{}
	in.stopReq, in.notReady = false, ""
	in.spawns++
	if in.spawns > 1 {
		in.restarts++
	}
	in.spec = s.keyOf(s.cfg, p)
	s.byPid[in.pid] = in
	in.pipes = in.logs.attach(outR, errR)
	gen := in.gen
	if chk := s.readiness(in); chk != nil {
		ctx, cancel := context.WithCancel(context.Background())
		in.cancelRdy = cancel
		timeout := p.Ready.Timeout.D()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			err := waitReady(ctx, chk, timeout)
			s.post(func() { s.readyResult(in, gen, err) })
		}()
		return
	}
	if p.StartSecs <= 0 {
		s.running(in)
		return
	}
	s.after(in, p.StartSecs.D(), func() {
		if in.gen == gen && in.state == Starting {
			s.running(in)
		}
	})
}

func (s *Supervisor) running(in *instance) {
	in.state, in.readyAt, in.info = Running, time.Now(), ""
	s.dirty = true
	s.log.Info("program running", "name", in.name, "pid", in.pid, "after", time.Since(in.started).Round(time.Millisecond))
}

func (s *Supervisor) readyResult(in *instance, gen uint64, err error) {
	if in.gen != gen || in.state != Starting {
		return
	}
	in.cancelRdy = nil
	if err == nil {
		s.running(in)
		return
	}
	if errors.Is(err, context.Canceled) {
		return
	}
	// Not ready in time: the start failed. Kill it; its exit goes down
	// the failed-start path.
	in.notReady = err.Error()
	s.log.Warn("program not ready in time; killing it", "name", in.name, "pid", in.pid, "err", err)
	_ = killGroup(in.pid, syscall.SIGKILL)
}

// exited handles the death of in's process at t.
func (s *Supervisor) exited(in *instance, ws syscall.WaitStatus, t time.Time) {
	s.dirty = true
	pid := in.pid
	text, code := exitText(ws)
	in.lastExit, in.exitCode, in.exitedAt = text, code, t
	if in.proc != nil {
		in.proc.Release()
	}
	in.proc, in.pid = nil, 0
	s.cancelTimer(in)
	s.cancelReady(in)
	s.notify.died(pid) // first: the broker re-dispatches while the replacement starts
	defer s.trimSoon()
	uptime := t.Sub(in.started)
	p := &in.prog.cfg

	switch {
	case in.stopReq:
		in.stopReq = false
		in.state, in.info = Stopped, ""
		s.log.Info("program stopped", "name", in.name, "pid", pid, "status", text, "took", t.Sub(in.stopSent).Round(time.Millisecond))
		if in.want && in.restart {
			in.restart, in.fresh = false, true
			s.start(in)
		}
		return
	case !in.want:
		in.state, in.info = Stopped, ""
		return
	}
	if p.Autorestart == config.RestartNever || (p.Autorestart == config.RestartOnFailure && code == 0) {
		in.state, in.info = Exited, ""
		s.log.Info("program exited", "name", in.name, "pid", pid, "status", text, "autorestart", p.Autorestart)
		return
	}
	if in.state == Running && uptime >= p.StartSecs.D() {
		// The fast path: up long enough to count as started, so replace
		// it now, with no backoff and no polling interval.
		in.retries = 0
		s.start(in)
		if in.state == Starting || in.state == Running {
			in.lastGap = time.Since(t)
			s.gaps.add(in.lastGap)
		}
		s.log.Warn("program died; restarted", "name", in.name, "pid", pid, "status", text,
			"uptime", uptime.Round(time.Millisecond), "new_pid", in.pid, "gap", in.lastGap)
		return
	}
	why := fmt.Sprintf("exited too quickly (%s after %s)", text, uptime.Round(time.Millisecond))
	if in.notReady != "" {
		why = "not ready: " + in.notReady
	}
	s.failedStart(in, why)
}

// failedStart counts a failed start: BACKOFF, or FATAL after startretries.
func (s *Supervisor) failedStart(in *instance, why string) {
	s.dirty = true
	in.retries++
	p := &in.prog.cfg
	if in.retries > p.StartRetries {
		s.fatal(in, fmt.Sprintf("%s; gave up after %d failed starts in a row", why, in.retries))
		return
	}
	d := backoffDelay(p, in.retries)
	in.state = Backoff
	in.info = fmt.Sprintf("%s; retry %d of %d in %s", why, in.retries, p.StartRetries, d.Round(time.Millisecond))
	s.logAfterOutput(in, slog.LevelWarn, "program failed to start", "name", in.name, "why", in.info)
	s.after(in, d, func() {
		if in.state == Backoff && in.want {
			s.start(in)
		}
	})
}

// fatal gives up on in until supervisor.fatal_retry has passed.
func (s *Supervisor) fatal(in *instance, why string) {
	s.dirty = true
	in.state, in.info = Fatal, why
	retry := s.cfg.Supervisor.FatalRetry.D()
	s.logAfterOutput(in, slog.LevelError, "program FATAL", "name", in.name, "line", in.prog.cfg.Line, "why", why, "retry_in", retry)
	s.after(in, retry, func() {
		if in.state == Fatal && in.want {
			in.fresh = true
			s.start(in)
		}
	})
}

// logAfterOutput logs once the dead process's output has been read (or
// 250ms), with its last line: usually the reason it died.
func (s *Supervisor) logAfterOutput(in *instance, level slog.Level, msg string, args ...any) {
	pipes := in.pipes
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if pipes != nil {
			select {
			case <-pipes:
			case <-time.After(250 * time.Millisecond):
			}
		}
		if last := in.logs.lastLine(); last != "" {
			args = append(args, "last_output", last)
		}
		s.log.Log(context.Background(), level, msg, args...)
	}()
}

// stop asks in to stop: the stop signal to its process group, SIGKILL
// after stopwaitsecs.
func (s *Supervisor) stop(in *instance) {
	s.dirty = true
	switch in.state {
	case Starting, Running:
		p := &in.prog.cfg
		sig, _ := ParseSignal(p.StopSignal)
		s.cancelReady(in)
		s.cancelTimer(in)
		in.state, in.stopReq, in.stopSent, in.info = Stopping, true, time.Now(), ""
		if err := killGroup(in.pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			s.log.Warn("cannot signal program", "name", in.name, "pid", in.pid, "err", err)
		}
		gen, wait := in.gen, p.StopWaitSecs.D()
		s.after(in, wait, func() {
			if in.gen == gen && in.state == Stopping && in.pid > 0 {
				s.log.Warn("program did not stop in time; SIGKILL", "name", in.name, "pid", in.pid, "stopwaitsecs", wait)
				in.info = fmt.Sprintf("did not stop within %s: killed", wait)
				_ = killGroup(in.pid, syscall.SIGKILL)
			}
		})
	case Backoff, Fatal:
		s.cancelTimer(in)
		in.state, in.info = Stopped, ""
	}
}

// after runs f on the loop after d, unless in's timer is reset first.
func (s *Supervisor) after(in *instance, d time.Duration, f func()) {
	s.cancelTimer(in)
	var t *time.Timer
	t = time.AfterFunc(d, func() {
		s.post(func() {
			if in.timer == t {
				in.timer = nil
				f()
			}
		})
	})
	in.timer = t
}

func (s *Supervisor) cancelTimer(in *instance) {
	if in.timer != nil {
		in.timer.Stop()
		in.timer = nil
	}
}

func (s *Supervisor) cancelReady(in *instance) {
	if in.cancelRdy != nil {
		in.cancelRdy()
		in.cancelRdy = nil
	}
}

// ---- order ----

// schedule starts what should run and whose dependencies are ready, and
// stops what should not run once nothing that depends on it (and is
// stopping too) still runs.
func (s *Supervisor) schedule() {
	if s.killing {
		return
	}
	for _, p := range s.progs {
		for _, in := range p.instances {
			switch {
			case in.want && in.state == Stopped:
				if dep := s.unreadyDep(p); dep != "" {
					s.setInfo(in, "waiting for "+dep)
					continue
				}
				s.start(in)
			case !in.want && (in.state == Starting || in.state == Running):
				if dep := s.runningDependent(p); dep != "" {
					s.setInfo(in, "stops after "+dep)
					continue
				}
				s.stop(in)
			case !in.want && (in.state == Backoff || in.state == Fatal):
				s.stop(in)
			}
		}
	}
	s.forget()
}

func (s *Supervisor) setInfo(in *instance, info string) {
	if in.info != info {
		in.info = info
		s.dirty = true
	}
}

func (s *Supervisor) programNamed(name string) *program {
	for _, p := range s.progs {
		if p.cfg.Name == name && !p.removed {
			return p
		}
	}
	return nil
}

// unreadyDep returns the first dependency of p that is not ready: every
// instance RUNNING, or EXITED with status 0 (a one-shot job that is done).
func (s *Supervisor) unreadyDep(p *program) string {
	for _, name := range p.cfg.DependsOn {
		q := s.programNamed(name)
		if q == nil {
			continue
		}
		for _, in := range q.instances {
			if in.drop {
				continue
			}
			if !(in.state == Running || (in.state == Exited && in.exitCode == 0)) {
				return name
			}
		}
	}
	return ""
}

// runningDependent returns a program that depends on p, is being stopped
// and still has a process: p stops after it.
func (s *Supervisor) runningDependent(p *program) string {
	for _, q := range s.progs {
		if !slices.Contains(q.cfg.DependsOn, p.cfg.Name) {
			continue
		}
		for _, in := range q.instances {
			if !in.want && in.state.hasProcess() {
				return q.cfg.Name
			}
		}
	}
	return ""
}

// forget drops instances and programs that a reload removed, once down.
func (s *Supervisor) forget() {
	progs := s.progs[:0]
	for _, p := range s.progs {
		kept := p.instances[:0]
		for _, in := range p.instances {
			if in.drop && !in.state.hasProcess() && in.pid == 0 {
				s.cancelTimer(in)
				s.dirty = true
				continue
			}
			kept = append(kept, in)
		}
		p.instances = kept
		if p.removed && len(p.instances) == 0 {
			continue
		}
		progs = append(progs, p)
	}
	s.progs = progs
}
