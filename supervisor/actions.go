package supervisor

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/shoal-dev/shoal/config"
)

// Status is one instance as `shoal ctl status` shows it.
type Status struct {
	Name    string `json:"name"` // NAME:INDEX
	Program string `json:"program"`
	Group   string `json:"group"`
	Index   int    `json:"index"`
	State   State  `json:"state"`
	PID     int    `json:"pid,omitempty"`
	// Started is when the current process (or the last one) started.
	Started time.Time `json:"started,omitzero"`
	// Ready is when the current process became RUNNING.
	Ready time.Time `json:"ready,omitzero"`
	// Exited is when the last process exited.
	Exited time.Time `json:"exited,omitzero"`
	// UptimeMS is how long the current process has run; 0 without one.
	UptimeMS int64 `json:"uptime_ms"`
	// Restarts counts starts after the first.
	Restarts int `json:"restarts"`
	// LastExit is how the last process ended: "exit 1", "signal KILL".
	LastExit string `json:"last_exit,omitempty"`
	// Info says why the instance is in its state: waiting for a
	// dependency, the backoff, the cause of FATAL.
	Info string `json:"info,omitempty"`
	// LastOutput is the last line the instance wrote, when it has no
	// process: usually why it died.
	LastOutput string `json:"last_output,omitempty"`
	// RestartGapUS is the time from the last unexpected death to the
	// replacement's start, in microseconds.
	RestartGapUS int64 `json:"restart_gap_us,omitempty"`
}

func (s *Supervisor) status(in *instance) Status {
	st := Status{Name: in.name, Program: in.prog.cfg.Name, Group: in.prog.cfg.Group, Index: in.index,
		State: in.state, PID: in.pid, Started: in.started, Ready: in.readyAt, Exited: in.exitedAt,
		Restarts: in.restarts, LastExit: in.lastExit,
		Info: in.info, RestartGapUS: in.lastGap.Microseconds()}
	if in.pid > 0 {
		st.UptimeMS = time.Since(in.started).Milliseconds()
	} else if in.state != Stopped || in.lastExit != "" {
		st.LastOutput = in.logs.lastLine()
	}
	return st
}

// Statuses returns the status of the named instances (every instance
// when names is empty), in config order.
func (s *Supervisor) Statuses(ctx context.Context, names ...string) ([]Status, error) {
	var out []Status
	var rerr error
	err := s.call(ctx, func() {
		ins, err := s.resolve(names)
		if err != nil {
			rerr = err
			return
		}
		for _, in := range ins {
			out = append(out, s.status(in))
		}
	})
	if err != nil {
		return nil, err
	}
	return out, rerr
}

// NameError is a name that matches no program, instance or group.
type NameError struct {
	Name  string
	Known []string
}

func (e *NameError) Error() string {
	return fmt.Sprintf("no program, instance or group is named %q (known: %s)", e.Name, strings.Join(e.Known, ", "))
}

// resolve maps names to instances, in config order, without duplicates:
// "all", "GROUP:*", "NAME:INDEX", "NAME" (a program, else a group).
func (s *Supervisor) resolve(names []string) ([]*instance, error) {
	if len(names) == 0 {
		names = []string{"all"}
	}
	picked := make(map[*instance]bool)
	for _, n := range names {
		matched := false
		group, isGroup := strings.CutSuffix(n, ":*")
		prog, idx, isInst := strings.Cut(n, ":")
		for _, p := range s.progs {
			if p.removed {
				continue
			}
			for _, in := range p.instances {
				ok := false
				switch {
				case n == "all":
					ok = true
				case isGroup:
					ok = p.cfg.Group == group
				case isInst:
					ok = p.cfg.Name == prog && strconv.Itoa(in.index) == idx
				default:
					ok = p.cfg.Name == n || (s.programNamed(n) == nil && p.cfg.Group == n)
				}
				if ok && !in.drop {
					picked[in] = true
					matched = true
				}
			}
		}
		if !matched {
			if s.knows(n) {
				continue // a program being resized or the like: nothing to do
			}
			return nil, &NameError{Name: n, Known: s.knownNames()}
		}
	}
	var out []*instance
	for _, p := range s.progs {
		for _, in := range p.instances {
			if picked[in] {
				out = append(out, in)
			}
		}
	}
	return out, nil
}

func (s *Supervisor) knows(n string) bool {
	return n == "all" || s.programNamed(strings.TrimSuffix(n, ":*")) != nil
}

func (s *Supervisor) knownNames() []string {
	seen := map[string]bool{"all": true}
	out := []string{"all"}
	for _, p := range s.progs {
		if p.removed {
			continue
		}
		for _, n := range []string{p.cfg.Name, p.cfg.Group + ":*"} {
			if !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	sort.Strings(out[1:])
	return out
}

// Result is the outcome of an action on one instance.
type Result struct {
	Name  string `json:"name"`
	State State  `json:"state"`
	PID   int    `json:"pid,omitempty"`
	Error string `json:"error,omitempty"`
}

// Start starts the named instances (and resets FATAL ones) and waits until
// each is RUNNING, EXITED or FATAL.
func (s *Supervisor) Start(ctx context.Context, names []string) ([]Result, error) {
	var ins []*instance
	gens := make(map[*instance]uint64)
	err := s.act(ctx, names, &ins, func(in *instance) {
		gens[in] = in.gen
		in.want = true
		switch in.state {
		case Exited, Fatal, Backoff:
			s.cancelTimer(in)
			in.state, in.fresh, in.info = Stopped, true, ""
			s.dirty = true
		case Stopped:
			in.fresh = true
		case Stopping:
			in.restart = true
		}
	})
	if err != nil {
		return nil, err
	}
	return s.wait(ctx, ins, func(in *instance) (bool, string) {
		switch in.state {
		case Running:
			return true, ""
		case Exited:
			if in.gen > gens[in] {
				if in.exitCode != 0 {
					return true, "exited: " + in.lastExit
				}
				return true, ""
			}
		case Fatal:
			return true, in.info // it was reset to STOPPED: this FATAL is new
		}
		return false, ""
	})
}

// Stop stops the named instances, in reverse dependency order, and waits
// until none has a process.
func (s *Supervisor) Stop(ctx context.Context, names []string) ([]Result, error) {
	var ins []*instance
	err := s.act(ctx, names, &ins, func(in *instance) {
		in.want, in.restart = false, false
		s.dirty = true
	})
	if err != nil {
		return nil, err
	}
	return s.wait(ctx, ins, func(in *instance) (bool, string) {
		return !in.state.hasProcess() && in.state != Backoff, ""
	})
}

// Restart stops and starts the named instances, all at once, and waits
// until each runs again. Rolling restarts go one at a time (see
// RollingRestart).
func (s *Supervisor) Restart(ctx context.Context, names []string) ([]Result, error) {
	var ins []*instance
	gens := make(map[*instance]uint64)
	err := s.act(ctx, names, &ins, func(in *instance) {
		gens[in] = in.gen
		s.restartOne(in)
	})
	if err != nil {
		return nil, err
	}
	return s.wait(ctx, ins, restarted(gens))
}

func restarted(gens map[*instance]uint64) func(in *instance) (bool, string) {
	return func(in *instance) (bool, string) {
		if in.state == Fatal {
			return true, in.info // a FATAL one was reset to STOPPED: this FATAL is new
		}
		if in.gen <= gens[in] {
			return false, ""
		}
		switch in.state {
		case Running:
			return true, ""
		case Exited:
			if in.exitCode != 0 {
				return true, "exited: " + in.lastExit
			}
			return true, ""
		}
		return false, ""
	}
}

// restartOne asks in to restart: stop it if it runs, then start it.
func (s *Supervisor) restartOne(in *instance) {
	in.want = true
	s.dirty = true
	switch in.state {
	case Starting, Running:
		s.stop(in)
		in.restart = true
	case Stopping:
		in.restart = true
	default:
		s.cancelTimer(in)
		in.state, in.fresh, in.info = Stopped, true, ""
		s.start(in) // no waiting for dependencies: asked for explicitly
	}
}

// RollingRestart restarts the named instances one at a time, each once
// its replacement is RUNNING (for a worker: registered with every broker):
// with two or more instances serving, no request fails. It stops at the
// first instance that does not come back.
func (s *Supervisor) RollingRestart(ctx context.Context, names []string) ([]Result, error) {
	var ins []*instance
	var rerr error
	if err := s.call(ctx, func() { ins, rerr = s.resolve(names) }); err != nil {
		return nil, err
	}
	if rerr != nil {
		return nil, rerr
	}
	var results []Result
	for i, in := range ins {
		gens := make(map[*instance]uint64)
		err := s.call(ctx, func() {
			if s.shutdown {
				return
			}
			gens[in] = in.gen
			s.log.Info("rolling restart", "name", in.name, "step", i+1, "of", len(ins), "pid", in.pid)
			s.restartOne(in)
		})
		if err != nil {
			return results, err
		}
		r, err := s.wait(ctx, []*instance{in}, restarted(gens))
		results = append(results, r...)
		if err != nil {
			return results, err
		}
		if r[0].Error != "" || r[0].State != Running {
			for _, rest := range ins[i+1:] {
				results = append(results, Result{Name: rest.name, Error: "not restarted: " + in.name + " did not come back"})
			}
			return results, nil
		}
	}
	return results, nil
}

// Signal sends sig to the main process of each named instance.
func (s *Supervisor) Signal(ctx context.Context, sig syscall.Signal, names []string) ([]Result, error) {
	var results []Result
	var rerr error
	err := s.call(ctx, func() {
		ins, err := s.resolve(names)
		if err != nil {
			rerr = err
			return
		}
		for _, in := range ins {
			r := Result{Name: in.name, State: in.state, PID: in.pid}
			switch {
			case in.pid <= 0:
				r.Error = "not running"
			default:
				if err := syscall.Kill(in.pid, sig); err != nil {
					r.Error = err.Error()
				}
			}
			results = append(results, r)
		}
	})
	if err != nil {
		return nil, err
	}
	return results, rerr
}

// act resolves names and applies f to each instance, on the loop.
func (s *Supervisor) act(ctx context.Context, names []string, ins *[]*instance, f func(*instance)) error {
	var rerr error
	err := s.call(ctx, func() {
		if s.shutdown {
			rerr = ErrShutdown
			return
		}
		found, err := s.resolve(names)
		if err != nil {
			rerr = err
			return
		}
		*ins = found
		for _, in := range found {
			f(in)
		}
	})
	if err != nil {
		return err
	}
	return rerr
}

// wait blocks until done holds for every instance (checked on the loop at
// each change), or ctx ends. The results say where each one ended up.
func (s *Supervisor) wait(ctx context.Context, ins []*instance, done func(*instance) (bool, string)) ([]Result, error) {
	for {
		var results []Result
		var ok []bool
		var changed chan struct{}
		all := true
		err := s.call(ctx, func() {
			for _, in := range ins {
				k, why := done(in)
				all = all && k
				ok = append(ok, k)
				results = append(results, Result{Name: in.name, State: in.state, PID: in.pid, Error: why})
			}
			changed = s.changed
		})
		if err != nil {
			return results, err
		}
		if all {
			return results, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			for i := range results {
				if !ok[i] && results[i].Error == "" {
					results[i].Error = fmt.Sprintf("still %s", results[i].State)
				}
			}
			return results, fmt.Errorf("timed out: %w", ctx.Err())
		case <-s.done:
			return results, ErrShutdown
		}
	}
}

// ReloadResult says what a reload changed.
type ReloadResult struct {
	Added     []string `json:"added,omitempty"`
	Removed   []string `json:"removed,omitempty"`
	Changed   []string `json:"changed,omitempty"`
	Resized   []string `json:"resized,omitempty"`
	Unchanged []string `json:"unchanged,omitempty"`
}

// Reload reads the config file again and applies it. A file with
// problems is refused whole: the error lists them (file:line:col: field:
// message) and nothing changes.
func (s *Supervisor) Reload(ctx context.Context) (ReloadResult, error) {
	s.reload.Lock()
	defer s.reload.Unlock()
	c, err := config.Load(s.file)
	if err != nil {
		s.log.Error("reload refused: the config has problems; nothing changed", "file", s.file, "problems", err.Error())
		return ReloadResult{}, err
	}
	var res ReloadResult
	var rerr error
	if err := s.call(ctx, func() {
		if s.shutdown {
			rerr = ErrShutdown
			return
		}
		res = s.apply(c)
	}); err != nil {
		return res, err
	}
	if rerr == nil {
		s.log.Info("reloaded", "file", s.file, "added", res.Added, "removed", res.Removed, "changed", res.Changed, "resized", res.Resized, "unchanged", len(res.Unchanged))
	}
	return res, rerr
}

// apply switches to config c, on the loop.
func (s *Supervisor) apply(c *config.Config) ReloadResult {
	var res ReloadResult
	old := s.cfg
	if c.RunDir() != old.RunDir() || c.SocketPath() != old.SocketPath() || c.LogDir() != old.LogDir() {
		s.log.Warn("run_dir, socket and log_dir changes take effect at the next start of the supervisor")
	}
	s.cfg = c
	s.dirty = true
	s.notify.setBrokers(c, s.host)
	s.logs.configure(int64(c.Supervisor.LogMaxSize), c.Supervisor.LogKeep)
	wanted := make(map[string]bool)
	for _, pc := range c.Programs {
		wanted[pc.Name] = true
	}
	for _, p := range s.progs {
		if !p.removed && !wanted[p.cfg.Name] {
			p.removed = true
			for _, in := range p.instances {
				in.want, in.drop, in.restart = false, true, false
			}
			res.Removed = append(res.Removed, p.cfg.Name)
		}
	}
	var order []*program
	for _, pc := range c.Programs {
		p := s.programNamed(pc.Name)
		if p == nil {
			p = s.newProgram(pc)
			order = append(order, p)
			res.Added = append(res.Added, pc.Name)
			continue
		}
		oldKey, newKey := s.keyOf(old, &p.cfg), s.keyOf(c, &pc)
		resized := pc.Numprocs != p.cfg.Numprocs
		p.cfg = pc
		order = append(order, p)
		for _, in := range p.instances {
			in.logs.tee.Store(pc.Tee)
		}
		if resized {
			res.Resized = append(res.Resized, pc.Name)
			s.resize(p)
		}
		if oldKey != newKey {
			res.Changed = append(res.Changed, pc.Name)
			for _, in := range p.instances {
				if in.drop || !in.want {
					continue
				}
				if in.state.hasProcess() || in.state == Backoff || in.state == Fatal || in.state == Exited {
					s.restartOne(in)
				}
			}
		} else if !resized {
			res.Unchanged = append(res.Unchanged, pc.Name)
		}
	}
	for _, p := range s.progs {
		if p.removed {
			order = append(order, p)
		}
	}
	s.progs = order
	return res
}

// resize adds instances up to numprocs, or stops and drops those above.
func (s *Supervisor) resize(p *program) {
	n := p.cfg.Numprocs
	for i, in := range p.instances {
		if i >= n {
			in.want, in.drop, in.restart = false, true, false
		} else if in.drop { // shrunk, then grown back before it stopped
			in.drop, in.want = false, true
		}
	}
	for i := len(p.instances); i < n; i++ {
		p.instances = append(p.instances, s.newInstance(p, i))
	}
}

// Gaps returns the recent death-to-restart gaps of instances that died
// after startsecs, oldest first.
func (s *Supervisor) Gaps() []time.Duration { return s.gaps.all() }
