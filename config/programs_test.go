package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestProgramDefaults(t *testing.T) {
	c := mustParse(t, minimal+`programs:
  - name: web
    command: "{shoal} frontend -c {config}"
  - name: worker
    group: workers
    command: [/bin/sh, -c, "exec sleep 1"]
    numprocs: 3
    autorestart: on-failure
    startsecs: 0s
    startretries: 0
    backoff: 20s
    stopsignal: sigint
    depends_on: [web]
    ready: {tcp: "127.0.0.1:{index+7000}", timeout: 5s}
    env: {PORT: 8080, NAME: "x{index}"}
    tee: true
`, nil)
	want := []Program{{
		Line: 6, Name: "web", Group: "web", Command: Command{"{shoal}", "frontend", "-c", "{config}"},
		Numprocs: 1, Autorestart: RestartAlways, StartSecs: Duration(time.Second), StartRetries: 3,
		Backoff: Duration(100 * time.Millisecond), BackoffMax: Duration(10 * time.Second),
		StopSignal: "TERM", StopWaitSecs: Duration(10 * time.Second), Ready: Ready{Timeout: Duration(time.Minute)},
	}, {
		Line: 8, Name: "worker", Group: "workers", Command: Command{"/bin/sh", "-c", "exec sleep 1"},
		Numprocs: 3, Autorestart: RestartOnFailure, StartSecs: 0, StartRetries: 0,
		Backoff: Duration(20 * time.Second), BackoffMax: Duration(20 * time.Second),
		StopSignal: "INT", StopWaitSecs: Duration(10 * time.Second), DependsOn: []string{"web"},
		Ready: Ready{TCP: "127.0.0.1:{index+7000}", Timeout: Duration(5 * time.Second)},
		Env:   map[string]string{"PORT": "8080", "NAME": "x{index}"}, Tee: true,
	}}
	if !reflect.DeepEqual(c.Programs, want) {
		t.Errorf("programs:\n got %+v\nwant %+v", c.Programs, want)
	}
	if c.Programs[1].Ready.Kind() != "tcp" || c.Programs[0].Ready.Kind() != "" {
		t.Errorf("Ready.Kind: %q, %q", c.Programs[1].Ready.Kind(), c.Programs[0].Ready.Kind())
	}
	d := Default().Supervisor
	if d.RunDir != "run" || d.Socket != "" || d.LogDir != "" || d.LogMaxSize != 10<<20 || d.LogKeep != 5 ||
		d.FatalRetry.D() != time.Minute || !d.NotifyBrokers || d.Env != nil {
		t.Errorf("Default().Supervisor = %+v", d)
	}
}

func TestProgramValidation(t *testing.T) {
	// Each config is minimal (lines 1-4) plus src, which starts on line 5.
	tests := []struct {
		name, src string
		want      []string
	}{
		{"missing name and command", "programs:\n  - numprocs: 2\n",
			[]string{
				"t.yaml:6:5: programs[0].name: is required",
				`t.yaml:6:5: programs[0].command: is required, such as "{shoal} worker echo -c {config}"`,
			}},
		{"names", "programs:\n  - {name: Web, command: x}\n  - {name: all, command: x}\n  - {name: a, command: x}\n  - {name: a, command: x}\n",
			[]string{
				`t.yaml:6:12: programs[0].name: must be lower-case letters, digits, '-' and '_', starting with a letter or digit, got "Web"`,
				`t.yaml:7:12: programs[1].name: "all" is reserved: it means every program in shoal ctl`,
				`t.yaml:9:12: programs[3].name: "a" is already the name of programs[2] (line 8)`,
			}},
		{"unknown dependency", "programs:\n  - {name: web, command: x, depends_on: [brokr, web]}\n  - {name: broker, command: x}\n",
			[]string{
				`t.yaml:6:42: programs[0].depends_on[0]: no program is named "brokr"; did you mean "broker"?`,
				`t.yaml:6:49: programs[0].depends_on[1]: a program cannot depend on itself`,
			}},
		{"cycle", `programs:
  - {name: a, command: x, depends_on: [b]}
  - {name: b, command: x, depends_on: [c]}
  - {name: c, command: x, depends_on: [a]}
  - {name: d, command: x, depends_on: [a]}
`, []string{`t.yaml:6:39: programs[0].depends_on: dependency cycle: a → b → c → a`}},
		{"values", `programs:
  - name: p
    command: x
    numprocs: 0
    autorestart: sometimes
    startsecs: -1s
    startretries: -1
    backoff: 0s
    stopsignal: STOP
    stopwaitsecs: 0s
    user: "a b"
`, []string{
			`t.yaml:8:15: programs[0].numprocs: must be positive, got 0`,
			`t.yaml:9:18: programs[0].autorestart: must be one of always, on-failure, never, got "sometimes"`,
			`t.yaml:10:16: programs[0].startsecs: must not be negative, got "-1s"`,
			`t.yaml:11:19: programs[0].startretries: must not be negative, got -1`,
			`t.yaml:12:14: programs[0].backoff: must be positive, got "0s"`,
			`t.yaml:13:17: programs[0].stopsignal: must be one of TERM, INT, QUIT, HUP, KILL, USR1, USR2, got "STOP"`,
			`t.yaml:14:19: programs[0].stopwaitsecs: must be positive, got "0s"`,
			`t.yaml:15:11: programs[0].user: must be a user name or uid, got "a b"`,
		}},
		{"backoff_max below backoff", "programs:\n  - {name: p, command: x, backoff: 2s, backoff_max: 1s}\n",
			[]string{`t.yaml:6:53: programs[0].backoff_max: must be at least backoff (2s), got "1s"`}},
		{"command", "programs:\n  - {name: p, command: \"x 'unterminated\"}\n  - {name: q, command: \"{shol} broker\"}\n  - {name: r, command: {a: b}}\n",
			[]string{
				`t.yaml:6:24: programs[0].command: has a ' without its closing ', got "x 'unterminated"`,
				`t.yaml:7:24: programs[1].command: has an unknown placeholder {shol} (known: {shoal}, {config}, {run_dir}, {index}, {index+N}; {{ is a literal brace), in "{shol}"`,
				`t.yaml:8:24: programs[2].command: must be a string or a list of strings, got a mapping`,
			}},
		{"ready", `programs:
  - {name: a, command: x, ready: {tcp: "127.0.0.1:0"}}
  - {name: b, command: x, ready: {http: "ftp://x/"}}
  - {name: c, command: x, ready: {zmq: "127.0.0.1:5555"}}
  - {name: d, command: x, ready: {broker_service: echo}}
  - {name: e, command: x, ready: {tcp: "h:1", http: "http://h/"}}
  - {name: f, command: x, ready: {tcp: "h:1", timeout: 0s}}
`, []string{
			`t.yaml:6:40: programs[0].ready.tcp: must be host:port like 127.0.0.1:6379 with a host and a port other than 0, got "127.0.0.1:0"`,
			`t.yaml:7:41: programs[1].ready.http: must be a URL like http://127.0.0.1:8080/readyz, got "ftp://x/"`,
			`t.yaml:8:40: programs[2].ready.zmq: must be an endpoint like tcp://127.0.0.1:5555 with a host and a port other than 0, got "127.0.0.1:5555"`,
			`t.yaml:9:51: programs[3].ready.broker_service: needs a broker with an admin address (brokers[].admin): that is where it looks for the worker`,
			`t.yaml:10:34: programs[4].ready: must name one check (tcp, http, zmq or broker_service), got 2`,
			`t.yaml:11:56: programs[5].ready.timeout: must be positive, got "0s"`,
		}},
		{"groups", "programs:\n  - {name: a, command: x, group: b}\n  - {name: b, command: x, group: c}\n  - {name: c, command: x, group: Bad}\n  - {name: d, command: x, group: d2}\n  - {name: d2, command: x}\n",
			[]string{
				`t.yaml:6:34: programs[0].group: "b" is the name of programs[1], which is not in this group: shoal ctl could not tell them apart`,
				`t.yaml:7:34: programs[1].group: "c" is the name of programs[2], which is not in this group: shoal ctl could not tell them apart`,
				`t.yaml:8:34: programs[2].group: must be lower-case letters, digits, '-' and '_', starting with a letter or digit, and not "all", got "Bad"`,
			}},
		{"env", "supervisor:\n  env: {\"1X\": a}\nprograms:\n  - {name: a, command: x, env: {OK: \"{nope}\"}}\n",
			[]string{
				`t.yaml:6:15: supervisor.env.1X: must be a variable name (letters, digits and '_', not starting with a digit)`,
				`t.yaml:8:37: programs[0].env.OK: has an unknown placeholder {nope} (known: {shoal}, {config}, {run_dir}, {index}, {index+N}; {{ is a literal brace), in "{nope}"`,
			}},
		{"supervisor", "supervisor:\n  run_dir: \"\"\n  log_max_size: 64KiB\n  log_keep: 0\n  fatal_retry: 0s\n  nope: 1\n",
			[]string{
				`t.yaml:6:12: supervisor.run_dir: is required (default "run")`,
				`t.yaml:7:17: supervisor.log_max_size: must be at least 1MiB, got "64KiB"`,
				`t.yaml:8:13: supervisor.log_keep: must be positive, got 0`,
				`t.yaml:9:16: supervisor.fatal_retry: must be positive, got "0s"`,
				`t.yaml:10:3: supervisor.nope: unknown key; expected one of: env, fatal_retry, log_dir, log_keep, log_max_size, notify_brokers, run_dir, socket`,
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := problems(t, minimal+tt.src, nil)
			if d := diff(tt.want, got); d != "" {
				t.Error(d)
			}
		})
	}
}

func TestSplitCommand(t *testing.T) {
	tests := []struct {
		in   string
		want []string
		err  string
	}{
		{"redis-server --port 6379", []string{"redis-server", "--port", "6379"}, ""},
		{`  a   b  `, []string{"a", "b"}, ""},
		{`redis-server --save ""`, []string{"redis-server", "--save", ""}, ""},
		{`sh -c 'echo "$HOME"; exit 1'`, []string{"sh", "-c", `echo "$HOME"; exit 1`}, ""},
		{`a "b \"c\" \\ \x" d\ e`, []string{"a", `b "c" \ \x`, "d e"}, ""},
		{`x'y'"z"`, []string{"xyz"}, ""},
		{"", nil, ""},
		{`a 'b`, nil, `has a ' without its closing '`},
		{`a "b`, nil, `has a " without its closing "`},
	}
	for _, tt := range tests {
		got, err := SplitCommand(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("SplitCommand(%q) error = %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("SplitCommand(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
		if len(got) > 0 {
			// String quotes so that splitting again gives the same words.
			again, err := SplitCommand(Command(got).String())
			if err != nil || !reflect.DeepEqual(again, got) {
				t.Errorf("SplitCommand(Command(%q).String()) = %q, %v", got, again, err)
			}
		}
	}
}

func TestExpandPlaceholders(t *testing.T) {
	p := Placeholders{Shoal: "/bin/shoal", Config: "/etc/shoal.yaml", RunDir: "/run/shoal", Index: 2}
	tests := []struct{ in, want, err string }{
		{"{shoal} worker echo -c {config}", "/bin/shoal worker echo -c /etc/shoal.yaml", ""},
		{"--dir {run_dir}/redis", "--dir /run/shoal/redis", ""},
		{"127.0.0.1:{index+9200}", "127.0.0.1:9202", ""},
		{"n{index}", "n2", ""},
		{`{{"json": {{}}}}`, `{"json": {}}`, ""},
		{"plain", "plain", ""},
		{"{nope}", "", "unknown placeholder {nope}"},
		{"{index+x}", "", "N in {index+N} must be a whole number"},
		{"{index", "", "'{' without its '}'"},
	}
	for _, tt := range tests {
		got, err := ExpandPlaceholders(tt.in, p)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ExpandPlaceholders(%q) error = %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ExpandPlaceholders(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestSupervisorPaths(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "shoal.yaml")
	c := mustParse(t, minimal, nil)
	c.File = file
	if got, want := c.RunDir(), filepath.Join(dir, "run"); got != want {
		t.Errorf("RunDir = %q, want %q", got, want)
	}
	if got, want := c.SocketPath(), filepath.Join(dir, "run", "shoal.sock"); got != want {
		t.Errorf("SocketPath = %q, want %q", got, want)
	}
	if got, want := c.LogDir(), filepath.Join(dir, "run", "log"); got != want {
		t.Errorf("LogDir = %q, want %q", got, want)
	}
	c.Supervisor.Socket, c.Supervisor.LogDir = "/tmp/x.sock", "logs"
	if c.SocketPath() != "/tmp/x.sock" || c.LogDir() != filepath.Join(dir, "logs") {
		t.Errorf("SocketPath, LogDir = %q, %q", c.SocketPath(), c.LogDir())
	}

	// ControlSocket reads only the supervisor section, so that shoal ctl
	// reaches a supervisor whose file is broken elsewhere.
	src := minimal + "supervisor: {run_dir: var}\nfrontend: {listen: nope}\n"
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := ControlSocket(file, ""); err != nil || got != filepath.Join(dir, "var", "shoal.sock") {
		t.Errorf("ControlSocket = %q, %v", got, err)
	}
	if got, err := ControlSocket(file, "/srv/run"); err != nil || got != "/srv/run/shoal.sock" {
		t.Errorf("ControlSocket(runDir) = %q, %v", got, err)
	}
	if _, err := ControlSocket(filepath.Join(dir, "missing.yaml"), ""); err == nil {
		t.Error("ControlSocket(missing file): no error")
	}
}

func TestNormalizeSignal(t *testing.T) {
	for in, want := range map[string]string{"TERM": "TERM", "sigterm": "TERM", "SIGUSR1": "USR1", " int ": "INT"} {
		if got, ok := NormalizeSignal(in); !ok || got != want {
			t.Errorf("NormalizeSignal(%q) = %q, %v", in, got, ok)
		}
	}
	if _, ok := NormalizeSignal("STOP"); ok {
		t.Error("STOP accepted as a stop signal")
	}
}
