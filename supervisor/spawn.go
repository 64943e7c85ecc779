package supervisor

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"github.com/shoal-dev/shoal/config"
)

// procKey identifies what a program's processes would run: two programs
// with the same key run the same processes, so a reload leaves them be.
type procKey string

func (s *Supervisor) keyOf(c *config.Config, p *config.Program) procKey {
	var b strings.Builder
	w := func(v string) { b.WriteString(strconv.Quote(v)); b.WriteByte(' ') }
	w(s.exe)
	w(absPath(c.File))
	w(s.run)
	w(c.Path(p.Dir))
	w(p.User)
	for _, a := range p.Command {
		w(a)
	}
	b.WriteString("| ")
	for _, kv := range sortedEnv(c.Supervisor.Env) {
		w(kv)
	}
	b.WriteString("| ")
	for _, kv := range sortedEnv(p.Env) {
		w(kv)
	}
	if readsConfig(p) {
		b.WriteString("| ")
		w(sharedDigest(c))
	}
	return procKey(b.String())
}

// readsConfig reports whether p's command passes the config file on
// ({config}): such a program reads its settings from the file itself.
func readsConfig(p *config.Program) bool {
	for _, a := range p.Command {
		if strings.Contains(a, "{config}") {
			return true
		}
	}
	return false
}

// sharedDigest stands for the settings a program reads from the config
// file: every section but supervisor and programs. A reload that changes
// them (a route, the brokers, redis) restarts every program that reads
// the file, as it would otherwise run on with the old ones.
func sharedDigest(c *config.Config) string {
	shared := *c
	shared.File, shared.Supervisor, shared.Programs = "", config.Supervisor{}, nil
	b, err := json.Marshal(&shared)
	if err != nil {
		return "unknown: " + err.Error()
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:12])
}

func sortedEnv(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// cmdSpec is one instance's process, ready to start.
type cmdSpec struct {
	path string
	argv []string
	env  []string
	dir  string
	cred *syscall.Credential
}

// spec builds the process of instance in from the current config.
func (s *Supervisor) spec(in *instance) (*cmdSpec, error) {
	c, p := s.cfg, &in.prog.cfg
	ph := config.Placeholders{Shoal: s.exe, Config: absPath(c.File), RunDir: s.run, Index: in.index}
	cs := &cmdSpec{argv: make([]string, len(p.Command))}
	for i, a := range p.Command {
		v, err := config.ExpandPlaceholders(a, ph)
		if err != nil {
			return nil, fmt.Errorf("command: %w", err)
		}
		cs.argv[i] = v
	}
	dir, err := config.ExpandPlaceholders(p.Dir, ph)
	if err != nil {
		return nil, fmt.Errorf("dir: %w", err)
	}
	if dir == "" {
		dir = filepath.Dir(absPath(c.File))
	}
	cs.dir = c.Path(dir)

	env := make(map[string]string)
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	for k, v := range c.Supervisor.Env {
		env[k] = v
	}
	for k, v := range p.Env {
		v, err := config.ExpandPlaceholders(v, ph)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", k, err)
		}
		env[k] = v
	}
	env["SHOAL_PROGRAM"] = p.Name
	env["SHOAL_INSTANCE"] = strconv.Itoa(in.index)

	if p.User != "" {
		cred, u, err := credential(p.User)
		if err != nil {
			return nil, err
		}
		cs.cred = cred
		if _, set := p.Env["HOME"]; !set && u != nil {
			env["HOME"] = u.HomeDir
		}
		if u != nil {
			env["USER"], env["LOGNAME"] = u.Username, u.Username
		}
	}
	for k, v := range env {
		cs.env = append(cs.env, k+"="+v)
	}
	sort.Strings(cs.env)

	if err := s.ensureDir(cs.dir, cs.cred); err != nil {
		return nil, err
	}
	cs.path, err = lookPath(cs.argv[0], env["PATH"], cs.dir)
	if err != nil {
		return nil, err
	}
	return cs, nil
}

// credential resolves a user name or uid for SysProcAttr.Credential.
func credential(name string) (*syscall.Credential, *user.User, error) {
	u, err := user.Lookup(name)
	if err != nil {
		if _, nerr := strconv.Atoi(name); nerr == nil {
			u, err = user.LookupId(name)
		}
	}
	if err != nil {
		return nil, nil, fmt.Errorf("user %q: no such user on this host", name)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if os.Geteuid() != 0 {
		if uid == os.Geteuid() {
			return nil, u, nil // already that user
		}
		return nil, nil, fmt.Errorf("user %q: only root can run a program as another user, and the supervisor runs as uid %d", name, os.Geteuid())
	}
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	if ids, err := u.GroupIds(); err == nil {
		for _, g := range ids {
			if n, err := strconv.Atoi(g); err == nil {
				cred.Groups = append(cred.Groups, uint32(n))
			}
		}
	}
	return cred, u, nil
}

// ensureDir checks the working directory, creating it when it lies under
// the run dir.
func (s *Supervisor) ensureDir(dir string, cred *syscall.Credential) error {
	fi, err := os.Stat(dir)
	if err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("dir %s: not a directory", dir)
		}
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("dir %s: %w", dir, unwrapPath(err))
	}
	run := s.run
	if rel, rerr := filepath.Rel(run, dir); rerr != nil || strings.HasPrefix(rel, "..") {
		return fmt.Errorf("dir %s: no such directory (only directories under the run dir %s are created)", dir, run)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("dir %s: cannot create it: %w", dir, unwrapPath(err))
	}
	if cred != nil {
		_ = os.Lchown(dir, int(cred.Uid), int(cred.Gid))
	}
	return nil
}

func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// lookPath finds the executable: a name without '/' in pathEnv, a relative
// path in dir.
func lookPath(name, pathEnv, dir string) (string, error) {
	check := func(p string) error {
		fi, err := os.Stat(p)
		if err != nil {
			return unwrapPath(err)
		}
		if fi.IsDir() {
			return errors.New("is a directory")
		}
		if fi.Mode()&0o111 == 0 {
			return errors.New("permission denied (not executable)")
		}
		return nil
	}
	if name == "" {
		return "", errors.New("command: empty")
	}
	if strings.Contains(name, "/") {
		p := name
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		if err := check(p); err != nil {
			return "", fmt.Errorf("command %s: %v", p, err)
		}
		return p, nil
	}
	for _, d := range filepath.SplitList(pathEnv) {
		if d == "" {
			d = "."
		}
		p := filepath.Join(d, name)
		if check(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("command %q: not found in $PATH", name)
}

// startProcess starts cs with its output on two new pipes. It must run on
// the loop's locked OS thread: the parent-death signal fires when the
// thread that forked the child exits.
func startProcess(cs *cmdSpec, null *os.File) (p *os.Process, stdout, stderr *os.File, err error) {
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, nil, nil, fmt.Errorf("cannot make a pipe: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, nil, nil, fmt.Errorf("cannot make a pipe: %w", err)
	}
	p, err = os.StartProcess(cs.path, cs.argv, &os.ProcAttr{
		Dir:   cs.dir,
		Env:   cs.env,
		Files: []*os.File{null, outW, errW},
		Sys: &syscall.SysProcAttr{
			Setpgid:    true,            // its own process group: signals reach what it forks
			Pdeathsig:  syscall.SIGKILL, // dies with the supervisor, even on kill -9
			Credential: cs.cred,
		},
	})
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		if cs.cred != nil {
			return nil, nil, nil, fmt.Errorf("cannot start %s as uid %d in %s: %w", cs.path, cs.cred.Uid, cs.dir, unwrapPath(err))
		}
		return nil, nil, nil, fmt.Errorf("cannot start %s in %s: %w", cs.path, cs.dir, unwrapPath(err))
	}
	return p, outR, errR, nil
}

// waitid options and id type (linux).
const (
	pPID     = 1
	wEXITED  = 0x4
	wNOHANG  = 0x1
	wNOWAIT  = 0x1000000
	sigchldN = 17
)

// exitedNoReap reports whether process pid has exited, leaving it a
// zombie: its process id, and so its process group's id, stay taken until
// reap.
func exitedNoReap(pid int) bool {
	var info [128]byte // siginfo_t; si_signo first
	_, _, e := syscall.Syscall6(syscall.SYS_WAITID, pPID, uintptr(pid), uintptr(unsafe.Pointer(&info[0])), wEXITED|wNOHANG|wNOWAIT, 0, 0)
	if e != 0 {
		return e == syscall.ECHILD // not ours any more: treat as gone
	}
	return int32(info[0])|int32(info[1])<<8|int32(info[2])<<16|int32(info[3])<<24 == sigchldN
}

// reap collects the exit status of an exited child.
func reap(pid int) syscall.WaitStatus {
	var ws syscall.WaitStatus
	for {
		_, err := syscall.Wait4(pid, &ws, 0, nil)
		if err != syscall.EINTR {
			return ws
		}
	}
}

// killGroup sends sig to process group pgid (a child's pid).
func killGroup(pgid int, sig syscall.Signal) error {
	if pgid <= 0 {
		return nil
	}
	return syscall.Kill(-pgid, sig)
}
