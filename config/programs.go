package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Supervisor configures `shoal supervisor`, the process manager that runs
// the programs of the programs: list.
type Supervisor struct {
	// RunDir holds the control socket, the logs and whatever programs keep
	// under {run_dir}. A relative path is relative to the config file's
	// directory. Default "run".
	RunDir string `yaml:"run_dir"`
	// Socket is the path of the control socket `shoal ctl` talks to
	// (mode 0600: only the supervisor's user and root may use it). A
	// relative path is relative to the config file's directory. Default ""
	// (<run_dir>/shoal.sock).
	Socket string `yaml:"socket"`
	// LogDir receives each program instance's stdout and stderr. A
	// relative path is relative to the config file's directory. Default ""
	// (<run_dir>/log).
	LogDir string `yaml:"log_dir"`
	// LogMaxSize is the size at which a log file is rotated: whole MiB,
	// at least 1MiB. Default 10MiB.
	LogMaxSize Size `yaml:"log_max_size"`
	// LogKeep is how many rotated files of each log are kept. At least 1.
	// Default 5.
	LogKeep int `yaml:"log_keep"`
	// FatalRetry is how long a FATAL program (one that failed to start
	// startretries times in a row) waits before it is tried again.
	// Positive. Default 1m.
	FatalRetry Duration `yaml:"fatal_retry"`
	// NotifyBrokers makes the supervisor tell every broker with an admin
	// address (POST /died) the moment a child dies, so that the broker
	// re-dispatches that process's requests at once. Default true.
	NotifyBrokers bool `yaml:"notify_brokers"`
	// Env is added to the environment of every program (a program's own
	// env wins). Default none.
	Env map[string]string `yaml:"env"`
}

// Program is one entry of the programs: list: a command the supervisor
// runs as numprocs child processes (instances NAME:0, NAME:1, …). Parse
// fills in every default, so consumers read effective values.
type Program struct {
	// Line is the program's line in the file (0 if unknown), for messages
	// about it at run time. It is not read from YAML.
	Line int `yaml:"-"`
	// Name identifies the program in `shoal ctl` and logs: lower-case
	// letters, digits, '-' and '_', starting with a letter or digit;
	// unique; not "all". Required.
	Name string `yaml:"name"`
	// Group lets `shoal ctl` address several programs at once (GROUP or
	// GROUP:*). Same form as Name; it may not be the name of a program
	// outside the group. Default: Name.
	Group string `yaml:"group"`
	// Command is what runs: a string split into words as a shell would
	// (quotes and backslashes, no expansion) or a list of words. The first
	// word is an executable path or a name looked up in $PATH.
	// Placeholders (see ExpandPlaceholders) work in every word. Required.
	Command Command `yaml:"command"`
	// Env is added to the instance's environment, on top of the
	// supervisor's own and supervisor.env. Placeholders work in values.
	// SHOAL_PROGRAM and SHOAL_INSTANCE (the index) are always set.
	Env map[string]string `yaml:"env"`
	// Dir is the working directory; placeholders work. A relative path is
	// relative to the config file's directory; a directory under the run
	// dir is created when missing. Default: the config file's directory.
	Dir string `yaml:"dir"`
	// User runs the instances as this user (name or uid) and its primary
	// group. Only root can switch users. Default "" (the supervisor's).
	User string `yaml:"user"`
	// Numprocs is how many instances run. Positive. Default 1.
	Numprocs int `yaml:"numprocs"`
	// Autorestart says when an instance that exits is started again:
	// always, on-failure (exit status not 0, or killed by a signal) or
	// never. Default always.
	Autorestart string `yaml:"autorestart"`
	// StartSecs is how long an instance must stay up to count as
	// started. One that dies sooner is a failed start: it is retried after
	// a backoff, at most StartRetries times in a row, then FATAL. One that
	// dies later is replaced at once. Not negative. Default 1s.
	StartSecs Duration `yaml:"startsecs"`
	// StartRetries is how many failed starts in a row are retried before
	// the instance is FATAL. Not negative. Default 3.
	StartRetries int `yaml:"startretries"`
	// Backoff is the delay before the first retry of a failed start; each
	// further retry doubles it, up to BackoffMax, with ±20% jitter.
	// Positive. Default 100ms.
	Backoff Duration `yaml:"backoff"`
	// BackoffMax caps the retry delay. At least Backoff. Default 10s.
	BackoffMax Duration `yaml:"backoff_max"`
	// StopSignal is sent to the instance's process group to stop it: TERM,
	// INT, QUIT, HUP, KILL, USR1 or USR2 (a SIG prefix is allowed). Default
	// TERM.
	StopSignal string `yaml:"stopsignal"`
	// StopWaitSecs is how long a stopping instance may take before its
	// process group gets SIGKILL. Positive. Default 10s.
	StopWaitSecs Duration `yaml:"stopwaitsecs"`
	// DependsOn names programs that must be ready (every instance RUNNING,
	// or exited with status 0) before this one starts; stopping runs in
	// reverse order. No cycles. Default none.
	DependsOn []string `yaml:"depends_on"`
	// Ready is the check that makes a started instance RUNNING. Without
	// one, an instance is RUNNING once it has been up for StartSecs.
	Ready Ready `yaml:"ready"`
	// Tee also copies the instance's output to the supervisor's own log,
	// each line prefixed with the instance name. Default false.
	Tee bool `yaml:"tee"`
}

// Ready is a readiness check: exactly one of TCP, HTTP, ZMQ and
// BrokerService, or none.
type Ready struct {
	// TCP is a host:port that accepts connections once the instance is
	// ready. Placeholders work ({index+N} for per-instance ports). The
	// port must be free before the instance starts.
	TCP string `yaml:"tcp"`
	// HTTP is an http:// URL that answers 200 once the instance is ready.
	HTTP string `yaml:"http"`
	// ZMQ is a ZeroMQ endpoint, tcp://host:port, that answers the ZMTP
	// greeting once the instance is ready.
	ZMQ string `yaml:"zmq"`
	// BrokerService makes the instance ready once every broker with an
	// admin address lists a worker of this process (host/pid) serving
	// this service and not draining: the readiness of workers, and what a
	// rolling restart waits for.
	BrokerService string `yaml:"broker_service"`
	// Timeout bounds the wait for the check to pass; an instance that is
	// not ready by then is killed and its start counts as failed.
	// Positive. Default 60s.
	Timeout Duration `yaml:"timeout"`
}

// Kind returns which check r is ("tcp", "http", "zmq",
// "broker_service"), or "" for none.
func (r Ready) Kind() string {
	switch {
	case r.TCP != "":
		return "tcp"
	case r.HTTP != "":
		return "http"
	case r.ZMQ != "":
		return "zmq"
	case r.BrokerService != "":
		return "broker_service"
	}
	return ""
}

// Autorestart values.
const (
	RestartAlways    = "always"
	RestartOnFailure = "on-failure"
	RestartNever     = "never"
)

// StopSignals are the signal names a program's stopsignal may use.
var StopSignals = []string{"TERM", "INT", "QUIT", "HUP", "KILL", "USR1", "USR2"}

var programNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

func defaultSupervisor() Supervisor {
	return Supervisor{
		RunDir:        "run",
		LogMaxSize:    10 << 20,
		LogKeep:       5,
		FatalRetry:    Duration(time.Minute),
		NotifyBrokers: true,
	}
}

// The defaults of a program's fields, filled in by Parse.
const (
	DefaultStartSecs    = time.Second
	DefaultStartRetries = 3
	DefaultBackoff      = 100 * time.Millisecond
	DefaultBackoffMax   = 10 * time.Second
	DefaultStopWait     = 10 * time.Second
	DefaultReadyTimeout = 60 * time.Second
)

// dir is the directory relative paths of the config are relative to.
func (c *Config) dir() string {
	if c.File == "" {
		return "."
	}
	abs, err := filepath.Abs(c.File)
	if err != nil {
		return filepath.Dir(c.File)
	}
	return filepath.Dir(abs)
}

// Path resolves a path of the config: relative paths are relative to the
// config file's directory.
func (c *Config) Path(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(c.dir(), p)
}

// RunDir returns supervisor.run_dir as an absolute path.
func (c *Config) RunDir() string { return c.Path(c.Supervisor.RunDir) }

// SocketPath returns the control socket's path.
func (c *Config) SocketPath() string {
	if c.Supervisor.Socket != "" {
		return c.Path(c.Supervisor.Socket)
	}
	return filepath.Join(c.RunDir(), "shoal.sock")
}

// LogDir returns the directory of the programs' logs.
func (c *Config) LogDir() string {
	if c.Supervisor.LogDir != "" {
		return c.Path(c.Supervisor.LogDir)
	}
	return filepath.Join(c.RunDir(), "log")
}

// ControlSocket returns the control socket of the config file at path
// from its supervisor: section alone, so that `shoal ctl` reaches the
// supervisor even when the file has problems elsewhere (a reload must be
// able to say what they are). runDir, if set, replaces
// supervisor.run_dir, as `--run-dir` does.
func ControlSocket(path, runDir string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return "", fmt.Errorf("config: cannot read %s: %w", path, err)
	}
	var doc struct {
		Supervisor struct {
			RunDir string `yaml:"run_dir"`
			Socket string `yaml:"socket"`
		} `yaml:"supervisor"`
	}
	func() {
		defer func() { _ = recover() }() // problems are the supervisor's to report
		_ = yaml.Unmarshal(data, &doc)
	}()
	c := &Config{File: path, Supervisor: defaultSupervisor()}
	if doc.Supervisor.RunDir != "" {
		c.Supervisor.RunDir = doc.Supervisor.RunDir
	}
	if runDir != "" {
		abs, err := filepath.Abs(runDir)
		if err != nil {
			return "", err
		}
		c.Supervisor.RunDir = abs
	}
	c.Supervisor.Socket = doc.Supervisor.Socket
	return c.SocketPath(), nil
}

// Command is a program's command line as words. In YAML it is a string,
// split as a shell would split it (without expansions), or a list.
type Command []string

// UnmarshalYAML reads a string or a list of strings.
func (c *Command) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		words, err := SplitCommand(n.Value)
		if err != nil {
			return err
		}
		*c = words
		return nil
	case yaml.SequenceNode:
		words := make([]string, len(n.Content))
		for i, e := range n.Content {
			if e.Kind != yaml.ScalarNode {
				return fmt.Errorf("must be a string or a list of strings; item %d is %s", i, describe(e))
			}
			words[i] = e.Value
		}
		*c = words
		return nil
	}
	return fmt.Errorf("must be a string or a list of strings, got %s", describe(n))
}

// String joins the words, quoting those that need it.
func (c Command) String() string {
	q := make([]string, len(c))
	for i, w := range c {
		if w == "" || strings.ContainsAny(w, " \t\n'\"\\$`;&|<>()*?[]#~") {
			w = "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
		}
		q[i] = w
	}
	return strings.Join(q, " ")
}

// SplitCommand splits s into words as a POSIX shell does, without any
// expansion: blanks separate words, 'single quotes' keep everything,
// "double quotes" keep everything but \" \\ \$ \` escapes, a backslash
// outside quotes keeps the next character. "" is an empty word.
func SplitCommand(s string) ([]string, error) {
	var words []string
	var w strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		case c == '\\':
			inWord = true
			if i+1 < len(s) {
				i++
				w.WriteByte(s[i])
			}
		case c == '\'':
			inWord = true
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, fmt.Errorf("has a ' without its closing ', got %s", quote(s))
			}
			w.WriteString(s[i+1 : i+1+j])
			i += j + 1
		case c == '"':
			inWord = true
			closed := false
			for i++; i < len(s); i++ {
				if s[i] == '"' {
					closed = true
					break
				}
				if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\"\\$`", s[i+1]) >= 0 {
					i++
				}
				w.WriteByte(s[i])
			}
			if !closed {
				return nil, fmt.Errorf("has a \" without its closing \", got %s", quote(s))
			}
		default:
			inWord = true
			w.WriteByte(c)
		}
	}
	if inWord {
		words = append(words, w.String())
	}
	return words, nil
}

// Placeholders are the values ExpandPlaceholders substitutes.
type Placeholders struct {
	Shoal  string // {shoal}: the supervisor's own executable
	Config string // {config}: the config file, absolute
	RunDir string // {run_dir}: supervisor.run_dir, absolute
	Index  int    // {index}: the instance's index; {index+N} adds N
}

// PlaceholderNames lists the placeholders, for messages.
const PlaceholderNames = "{shoal}, {config}, {run_dir}, {index}, {index+N}"

// ExpandPlaceholders replaces {shoal}, {config}, {run_dir}, {index} and
// {index+N} (the index plus the whole number N, e.g. {index+9200} for a
// per-instance port) in s; "{{" and "}}" stand for "{" and "}". Anything
// else in braces is an error.
func ExpandPlaceholders(s string, p Placeholders) (string, error) {
	if !strings.ContainsAny(s, "{}") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '}' {
			if i+1 < len(s) && s[i+1] == '}' {
				i++
			}
			b.WriteByte('}')
			continue
		}
		if c != '{' {
			b.WriteByte(c)
			continue
		}
		if i+1 < len(s) && s[i+1] == '{' {
			b.WriteByte('{')
			i++
			continue
		}
		j := strings.IndexByte(s[i:], '}')
		if j < 0 {
			return "", fmt.Errorf("has a '{' without its '}' (write {{ for a literal brace), in %s", quote(s))
		}
		name := s[i+1 : i+j]
		switch {
		case name == "shoal":
			b.WriteString(p.Shoal)
		case name == "config":
			b.WriteString(p.Config)
		case name == "run_dir":
			b.WriteString(p.RunDir)
		case name == "index":
			b.WriteString(strconv.Itoa(p.Index))
		case strings.HasPrefix(name, "index+"):
			n, err := strconv.Atoi(name[len("index+"):])
			if err != nil || n < 0 || strings.HasPrefix(name[len("index+"):], "+") {
				return "", fmt.Errorf("has {%s}: N in {index+N} must be a whole number, in %s", name, quote(s))
			}
			b.WriteString(strconv.Itoa(p.Index + n))
		default:
			return "", fmt.Errorf("has an unknown placeholder {%s} (known: %s; {{ is a literal brace), in %s", name, PlaceholderNames, quote(s))
		}
		i += j
	}
	return b.String(), nil
}

// NormalizeSignal returns the signal name without a SIG prefix, upper
// case, and whether it is one of StopSignals.
func NormalizeSignal(s string) (string, bool) {
	n := strings.TrimPrefix(strings.ToUpper(strings.TrimSpace(s)), "SIG")
	return n, slices.Contains(StopSignals, n)
}

func programPath(i int) string { return "programs[" + strconv.Itoa(i) + "]" }

// resolvePrograms fills in the defaults of each program.
func (d *decoder) resolvePrograms(c *Config) {
	for i := range c.Programs {
		p, path := &c.Programs[i], programPath(i)
		p.Line = d.line(path)
		if p.Group == "" {
			p.Group = p.Name
		}
		if !d.isSet(path + ".numprocs") {
			p.Numprocs = 1
		}
		if p.Autorestart == "" {
			p.Autorestart = RestartAlways
		}
		if !d.isSet(path + ".startsecs") {
			p.StartSecs = Duration(DefaultStartSecs)
		}
		if !d.isSet(path + ".startretries") {
			p.StartRetries = DefaultStartRetries
		}
		if !d.isSet(path + ".backoff") {
			p.Backoff = Duration(DefaultBackoff)
		}
		if !d.isSet(path + ".backoff_max") {
			p.BackoffMax = Duration(max(DefaultBackoffMax, p.Backoff.D()))
		}
		if p.StopSignal == "" {
			p.StopSignal = "TERM"
		} else if n, ok := NormalizeSignal(p.StopSignal); ok {
			p.StopSignal = n
		}
		if !d.isSet(path + ".stopwaitsecs") {
			p.StopWaitSecs = Duration(DefaultStopWait)
		}
		if !d.isSet(path + ".ready.timeout") {
			p.Ready.Timeout = Duration(DefaultReadyTimeout)
		}
	}
}

// validateSupervisor checks the supervisor: section and the programs:
// list.
func (d *decoder) validateSupervisor(c *Config) {
	s := &c.Supervisor
	if s.RunDir == "" {
		d.problem("supervisor.run_dir", "is required (default \"run\")")
	}
	if d.positiveSize("supervisor.log_max_size", s.LogMaxSize) && s.LogMaxSize < 1<<20 {
		d.problem("supervisor.log_max_size", "must be at least 1MiB, got %s", quote(d.raw("supervisor.log_max_size", s.LogMaxSize.String())))
	}
	d.minInt("supervisor.log_keep", s.LogKeep, 1)
	d.positive("supervisor.fatal_retry", s.FatalRetry)
	d.envMap("supervisor.env", s.Env, false)

	hasAdmin := false
	for _, b := range c.Brokers {
		hasAdmin = hasAdmin || b.Admin != ""
	}
	names := make(map[string]int)
	for i := range c.Programs {
		p, path := &c.Programs[i], programPath(i)
		switch j, dup := names[p.Name]; {
		case p.Name == "":
			d.problem(path+".name", "is required")
		case !programNameRE.MatchString(p.Name):
			d.problem(path+".name", "must be lower-case letters, digits, '-' and '_', starting with a letter or digit, got %s", quote(p.Name))
		case p.Name == "all":
			d.problem(path+".name", `"all" is reserved: it means every program in shoal ctl`)
		case dup:
			d.problem(path+".name", "%s is already the name of %s%s", quote(p.Name), programPath(j), d.onLine(programPath(j)))
		default:
			names[p.Name] = i
		}
	}
	for i := range c.Programs {
		d.program(c, i, names, hasAdmin)
	}
	d.cycles(c, names)
}

func (d *decoder) program(c *Config, i int, names map[string]int, hasAdmin bool) {
	p, path := &c.Programs[i], programPath(i)
	if p.Group != p.Name {
		switch j, isProgram := names[p.Group]; {
		case !programNameRE.MatchString(p.Group) || p.Group == "all":
			d.problem(path+".group", "must be lower-case letters, digits, '-' and '_', starting with a letter or digit, and not \"all\", got %s", quote(p.Group))
		case isProgram && c.Programs[j].Group != p.Group:
			d.problem(path+".group", "%s is the name of %s, which is not in this group: shoal ctl could not tell them apart", quote(p.Group), programPath(j))
		}
	}
	if len(p.Command) == 0 || p.Command[0] == "" {
		if !d.fieldBad(path + ".command") {
			d.problem(path+".command", "is required, such as \"{shoal} worker echo -c {config}\"")
		}
	}
	ph := Placeholders{Shoal: "shoal", Config: "c", RunDir: "r"}
	for _, w := range p.Command {
		if _, err := ExpandPlaceholders(w, ph); err != nil {
			d.problem(path+".command", "%v", err)
			break
		}
	}
	d.envMap(path+".env", p.Env, true)
	if _, err := ExpandPlaceholders(p.Dir, ph); err != nil {
		d.problem(path+".dir", "%v", err)
	}
	if strings.ContainsAny(p.User, " \t\n:") {
		d.problem(path+".user", "must be a user name or uid, got %s", quote(p.User))
	}
	d.minInt(path+".numprocs", p.Numprocs, 1)
	d.oneOf(path+".autorestart", p.Autorestart, RestartAlways, RestartOnFailure, RestartNever)
	if p.StartSecs < 0 {
		d.problem(path+".startsecs", "must not be negative, got %s", quote(d.raw(path+".startsecs", p.StartSecs.String())))
	}
	if p.StartRetries < 0 {
		d.problem(path+".startretries", "must not be negative, got %d", p.StartRetries)
	}
	d.positive(path+".backoff", p.Backoff)
	if p.Backoff > 0 && p.BackoffMax < p.Backoff {
		d.problem(path+".backoff_max", "must be at least backoff (%s), got %s", p.Backoff, quote(d.raw(path+".backoff_max", p.BackoffMax.String())))
	}
	if _, ok := NormalizeSignal(p.StopSignal); !ok {
		d.problem(path+".stopsignal", "must be one of %s, got %s", strings.Join(StopSignals, ", "), quote(p.StopSignal))
	}
	d.positive(path+".stopwaitsecs", p.StopWaitSecs)
	seen := make(map[string]bool)
	for k, dep := range p.DependsOn {
		dp := path + ".depends_on[" + strconv.Itoa(k) + "]"
		_, known := names[dep]
		switch {
		case dep == p.Name:
			d.problem(dp, "a program cannot depend on itself")
		case !known:
			d.problem(dp, "no program is named %s%s", quote(dep), didYouMean(dep, names))
		case seen[dep]:
			d.problem(dp, "%s is listed twice", quote(dep))
		}
		seen[dep] = true
	}
	d.ready(path+".ready", p, hasAdmin, ph)
}

// fieldBad reports whether path failed to decode (its problem is reported).
func (d *decoder) fieldBad(path string) bool {
	f := d.fields[path]
	return f != nil && f.bad
}

func didYouMean(name string, names map[string]int) string {
	all := make([]string, 0, len(names))
	for n := range names {
		all = append(all, n)
	}
	if s := suggest(name, all); s != "" {
		return fmt.Sprintf("; did you mean %q?", s)
	}
	return ""
}

func (d *decoder) ready(path string, p *Program, hasAdmin bool, ph Placeholders) {
	r := &p.Ready
	kinds := 0
	for _, v := range []string{r.TCP, r.HTTP, r.ZMQ, r.BrokerService} {
		if v != "" {
			kinds++
		}
	}
	if kinds > 1 {
		d.problem(path, "must name one check (tcp, http, zmq or broker_service), got %d", kinds)
		return
	}
	expand := func(field, v string) (string, bool) {
		s, err := ExpandPlaceholders(v, ph)
		if err != nil {
			d.problem(path+"."+field, "%v", err)
			return "", false
		}
		return s, true
	}
	switch {
	case r.TCP != "":
		if v, ok := expand("tcp", r.TCP); ok {
			if host, port, msg := splitAddress(v); msg != "" || host == "" || port == 0 {
				d.problem(path+".tcp", "must be host:port like 127.0.0.1:6379 with a host and a port other than 0, got %s", quote(r.TCP))
			}
		}
	case r.HTTP != "":
		if v, ok := expand("http", r.HTTP); ok {
			u, err := url.Parse(v)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				d.problem(path+".http", "must be a URL like http://127.0.0.1:8080/readyz, got %s", quote(r.HTTP))
			}
		}
	case r.ZMQ != "":
		if v, ok := expand("zmq", r.ZMQ); ok {
			hp, isTCP := strings.CutPrefix(v, "tcp://")
			host, port, msg := splitAddress(hp)
			if !isTCP || msg != "" || host == "" || port == 0 {
				d.problem(path+".zmq", "must be an endpoint like tcp://127.0.0.1:5555 with a host and a port other than 0, got %s", quote(r.ZMQ))
			}
		}
	case r.BrokerService != "":
		switch {
		case len(r.BrokerService) > maxServiceName || !serviceNameRE.MatchString(r.BrokerService):
			d.problem(path+".broker_service", "must be 1-%d of a-z 0-9 . _ -, starting with a letter or digit, got %s", maxServiceName, quote(r.BrokerService))
		case !hasAdmin:
			d.problem(path+".broker_service", "needs a broker with an admin address (brokers[].admin): that is where it looks for the worker")
		}
	}
	d.positive(path+".timeout", r.Timeout)
}

var envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// envMap checks environment variable names (and placeholders in values).
func (d *decoder) envMap(path string, env map[string]string, placeholders bool) {
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !envNameRE.MatchString(k) {
			d.problem(join(path, k), "must be a variable name (letters, digits and '_', not starting with a digit)")
			continue
		}
		if placeholders {
			if _, err := ExpandPlaceholders(env[k], Placeholders{}); err != nil {
				d.problem(join(path, k), "%v", err)
			}
		}
	}
}

// cycles reports each dependency cycle once, at the first program in it.
func (d *decoder) cycles(c *Config, names map[string]int) {
	const (
		unseen = iota
		onPath
		done
	)
	state := make([]int, len(c.Programs))
	var stack []int
	var visit func(i int)
	visit = func(i int) {
		state[i] = onPath
		stack = append(stack, i)
		for _, dep := range c.Programs[i].DependsOn {
			j, ok := names[dep]
			if !ok || j == i {
				continue // reported elsewhere
			}
			switch state[j] {
			case unseen:
				visit(j)
			case onPath:
				k := slices.Index(stack, j)
				cyc := stack[k:]
				first := slices.Min(cyc)
				// Start the cycle's text at its first program in the file.
				at := slices.Index(cyc, first)
				var ns []string
				for n := range cyc {
					ns = append(ns, c.Programs[cyc[(at+n)%len(cyc)]].Name)
				}
				ns = append(ns, c.Programs[first].Name)
				d.problem(programPath(first)+".depends_on", "dependency cycle: %s", strings.Join(ns, " → "))
			}
		}
		stack = stack[:len(stack)-1]
		state[i] = done
	}
	for i := range c.Programs {
		if state[i] == unseen {
			visit(i)
		}
	}
}
