package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestExampleFileParses(t *testing.T) {
	data, err := os.ReadFile("../shoal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c := mustParse(t, string(data), nil)

	if b, err := c.BrokerByName("b0"); err != nil || b.Clients != "tcp://127.0.0.1:5555" ||
		b.Workers != "tcp://127.0.0.1:5556" || b.Admin != "127.0.0.1:9100" {
		t.Errorf("broker b0 = %+v, %v", b, err)
	}
	if c.Log != (Log{Level: "info", Format: "text"}) {
		t.Errorf("log = %+v", c.Log)
	}
	if c.Frontend.Listen != "127.0.0.1:8080" || c.Frontend.Admin != "127.0.0.1:9180" {
		t.Errorf("frontend listen/admin = %q, %q", c.Frontend.Listen, c.Frontend.Admin)
	}
	want := []Route{
		{Method: "GET", Path: "/echo", Service: "echo", Call: "GET /echo", Timeout: Duration(5 * time.Second), Attempts: 3, Idempotent: true},
		{Method: "POST", Path: "/echo", Service: "echo", Call: "POST /echo", Timeout: Duration(5 * time.Second), Attempts: 1, Idempotent: false},
		{Method: "GET", Path: "/hello/{name}", Service: "greeter", Call: "GET /hello/{name}", Timeout: Duration(2 * time.Second), Attempts: 3, Idempotent: true},
		{Method: "POST", Path: "/notes", Service: "notes", Call: "POST /notes", Timeout: Duration(5 * time.Second), Attempts: 1, Idempotent: false},
		{Method: "GET", Path: "/notes/{id}", Service: "notes", Call: "GET /notes/{id}", Timeout: Duration(5 * time.Second), Attempts: 3, Idempotent: true},
	}
	if !reflect.DeepEqual(c.Frontend.Routes, want) {
		t.Errorf("routes:\n got %+v\nwant %+v", c.Frontend.Routes, want)
	}

	// The example states the defaults: apart from what Default leaves empty,
	// it must equal them, so it never teaches a stale default.
	d := Default()
	d.File, d.Brokers, d.Frontend.Routes, d.Programs = c.File, c.Brokers, c.Frontend.Routes, c.Programs
	if !reflect.DeepEqual(c, d) {
		t.Errorf("shoal.yaml differs from Default():\n got %+v\nwant %+v", c, d)
	}
}

func TestLoad(t *testing.T) {
	c, err := Load("../shoal.yaml")
	if err != nil {
		t.Fatalf("Load(../shoal.yaml): %v", err)
	}
	if c.File != "../shoal.yaml" {
		t.Errorf("File = %q", c.File)
	}

	missing := filepath.Join(t.TempDir(), "nope.yaml")
	_, err = Load(missing)
	if err == nil || !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("Load(missing) = %v; want an fs.ErrNotExist error naming the file", err)
	}

	empty := filepath.Join(t.TempDir(), "empty.yaml")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = Load(empty)
	want := empty + ": the file is empty; a config needs at least a brokers: list"
	if err == nil || err.Error() != want {
		t.Errorf("Load(empty) = %v; want %q", err, want)
	}
}

func TestEmptyDocuments(t *testing.T) {
	for name, src := range map[string]string{
		"nothing":       "",
		"whitespace":    "  \n\n",
		"comments only": "# nothing here\n",
		"null document": "---\n~\n",
		"bare document": "---\n",
	} {
		t.Run(name, func(t *testing.T) {
			got := problems(t, src, nil)
			want := []string{"t.yaml: the file is empty; a config needs at least a brokers: list"}
			if d := diff(want, got); d != "" {
				t.Error(d)
			}
		})
	}
}

func TestDefaultsApplied(t *testing.T) {
	c := mustParse(t, minimal, nil)
	want := Default()
	want.File = "t.yaml"
	want.Brokers = []Broker{{Name: "b0", Clients: "tcp://127.0.0.1:5555", Workers: "tcp://127.0.0.1:5556"}}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("minimal config:\n got %+v\nwant %+v", c, want)
	}

	// The documented values, spelled out once so a change to Default is a
	// deliberate one.
	d := Default()
	checks := []struct {
		name      string
		got, want any
	}{
		{"log.level", d.Log.Level, "info"},
		{"log.format", d.Log.Format, "text"},
		{"broker.heartbeat", d.Broker.Heartbeat.D(), time.Second},
		{"broker.liveness", d.Broker.Liveness, 3},
		{"broker.queue_limit", d.Broker.QueueLimit, 1024},
		{"broker.default_timeout", d.Broker.DefaultTimeout.D(), 5 * time.Second},
		{"transport.max_frame", d.Transport.MaxFrame, Size(64 << 20)},
		{"transport.handshake_timeout", d.Transport.HandshakeTimeout.D(), 5 * time.Second},
		{"transport.write_timeout", d.Transport.WriteTimeout.D(), 5 * time.Second},
		{"frontend.listen", d.Frontend.Listen, "127.0.0.1:8080"},
		{"frontend.admin", d.Frontend.Admin, "127.0.0.1:9180"},
		{"frontend.max_body", d.Frontend.MaxBody, Size(1 << 20)},
		{"frontend.read_timeout", d.Frontend.ReadTimeout.D(), 10 * time.Second},
		{"frontend.write_timeout", d.Frontend.WriteTimeout.D(), 10 * time.Second},
		{"frontend.idle_timeout", d.Frontend.IdleTimeout.D(), 60 * time.Second},
		{"frontend.shutdown_timeout", d.Frontend.ShutdownTimeout.D(), 10 * time.Second},
		{"frontend.timeout", d.Frontend.Timeout.D(), 5 * time.Second},
		{"frontend.max_conns", d.Frontend.MaxConns, 10000},
		{"frontend.forward_headers", d.Frontend.ForwardHeaders, []string{"Content-Type", "Accept", "User-Agent", "Authorization"}},
		{"workers.concurrency", d.Workers.Concurrency, 64},
		{"workers.drain_timeout", d.Workers.DrainTimeout.D(), 10 * time.Second},
		{"workers.metrics", d.Workers.Metrics, ""},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("Default %s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if d.Brokers != nil || d.Frontend.Routes != nil {
		t.Errorf("Default has brokers or routes: %+v", d)
	}

	// Default returns a fresh value each time.
	d.Frontend.ForwardHeaders[0] = "X-Changed"
	if Default().Frontend.ForwardHeaders[0] != "Content-Type" {
		t.Error("Default shares its forward_headers slice between calls")
	}
}

func TestExplicitValuesOverrideDefaults(t *testing.T) {
	c := mustParse(t, minimal+`log: {level: debug, format: json}
broker: {heartbeat: 250ms, liveness: 5, queue_limit: 10, default_timeout: 1m}
transport: {max_frame: 1MiB, handshake_timeout: 1s, write_timeout: 2s}
frontend:
  listen: ":0"
  admin: ""
  max_body: 64KiB
  max_conns: 5
  forward_headers: []
workers: {concurrency: 1, drain_timeout: 1s, metrics: "127.0.0.1:0"}
`, nil)
	if c.Log != (Log{"debug", "json"}) {
		t.Errorf("log = %+v", c.Log)
	}
	if c.Broker != (BrokerSettings{Duration(250 * time.Millisecond), 5, 10, Duration(time.Minute)}) {
		t.Errorf("broker = %+v", c.Broker)
	}
	if c.Transport != (Transport{1 << 20, Duration(time.Second), Duration(2 * time.Second)}) {
		t.Errorf("transport = %+v", c.Transport)
	}
	f := c.Frontend
	if f.Listen != ":0" || f.Admin != "" || f.MaxBody != 64<<10 || f.MaxConns != 5 ||
		f.ForwardHeaders == nil || len(f.ForwardHeaders) != 0 || f.Timeout.D() != 5*time.Second {
		t.Errorf("frontend = %+v", f)
	}
	if c.Workers != (Workers{1, Duration(time.Second), "127.0.0.1:0"}) {
		t.Errorf("workers = %+v", c.Workers)
	}
}

func TestNullMeansDefault(t *testing.T) {
	c := mustParse(t, minimal+`log:
  level:
  format: ~
frontend:
  admin:
  forward_headers:
  routes:
broker:
workers: ~
`, nil)
	want := Default()
	want.File, want.Brokers = c.File, c.Brokers
	if !reflect.DeepEqual(c, want) {
		t.Errorf("null values:\n got %+v\nwant %+v", c, want)
	}
}

func TestRouteDefaults(t *testing.T) {
	sec := func(d time.Duration) Duration { return Duration(d * time.Second) }
	tests := []struct {
		name  string
		route string
		want  Route
	}{
		{"GET", "{method: GET, path: /a, service: s}",
			Route{"GET", "/a", "s", "GET /a", sec(7), 3, true}},
		{"HEAD", "{method: HEAD, path: /a, service: s}",
			Route{"HEAD", "/a", "s", "HEAD /a", sec(7), 3, true}},
		{"PUT", "{method: PUT, path: /a, service: s}",
			Route{"PUT", "/a", "s", "PUT /a", sec(7), 3, true}},
		{"DELETE", "{method: DELETE, path: /a, service: s}",
			Route{"DELETE", "/a", "s", "DELETE /a", sec(7), 3, true}},
		{"OPTIONS", "{method: OPTIONS, path: /a, service: s}",
			Route{"OPTIONS", "/a", "s", "OPTIONS /a", sec(7), 3, true}},
		{"POST", "{method: POST, path: /a, service: s}",
			Route{"POST", "/a", "s", "POST /a", sec(7), 1, false}},
		{"PATCH", "{method: PATCH, path: /a, service: s}",
			Route{"PATCH", "/a", "s", "PATCH /a", sec(7), 1, false}},
		{"POST made idempotent", "{method: POST, path: /a, service: s, idempotent: true}",
			Route{"POST", "/a", "s", "POST /a", sec(7), 3, true}},
		{"GET made non-idempotent", "{method: GET, path: /a, service: s, idempotent: false}",
			Route{"GET", "/a", "s", "GET /a", sec(7), 1, false}},
		{"explicit attempts", "{method: GET, path: /a, service: s, attempts: 10}",
			Route{"GET", "/a", "s", "GET /a", sec(7), 10, true}},
		{"explicit single attempt", "{method: PUT, path: /a, service: s, attempts: 1}",
			Route{"PUT", "/a", "s", "PUT /a", sec(7), 1, true}},
		{"explicit call and timeout", "{method: GET, path: '/u/{id}', service: s, call: lookup, timeout: 250ms}",
			Route{"GET", "/u/{id}", "s", "lookup", Duration(250 * time.Millisecond), 3, true}},
		{"empty call", "{method: GET, path: '/u/{id}', service: s, call: ''}",
			Route{"GET", "/u/{id}", "s", "GET /u/{id}", sec(7), 3, true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// frontend.timeout comes after the routes: order must not matter.
			c := mustParse(t, minimal+"frontend:\n  routes:\n    - "+tt.route+"\n  timeout: 7s\n", nil)
			if got := c.Frontend.Routes[0]; got != tt.want {
				t.Errorf("route:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestValidation(t *testing.T) {
	// Each config is minimal (lines 1-4) plus src, which starts on line 5,
	// unless noBrokers is set.
	tests := []struct {
		name      string
		noBrokers bool
		src       string
		want      []string
	}{
		{"no brokers section", true, "log: {level: info}\n",
			[]string{"t.yaml: brokers: at least one broker is required"}},
		{"empty brokers list", true, "brokers: []\n",
			[]string{"t.yaml:1:10: brokers: at least one broker is required"}},
		{"broker name missing", true, "brokers:\n  - clients: tcp://h:1\n    workers: tcp://h:2\n",
			[]string{"t.yaml:2:5: brokers[0].name: is required"}},
		{"broker name pattern", true, "brokers:\n  - {name: B0, clients: tcp://h:1, workers: tcp://h:2}\n  - {name: -b, clients: tcp://h:3, workers: tcp://h:4}\n  - {name: b.1, clients: tcp://h:5, workers: tcp://h:6}\n  - {name: edge-1, clients: tcp://h:7, workers: tcp://h:8}\n",
			[]string{
				`t.yaml:2:12: brokers[0].name: must be lower-case letters, digits and '-', starting with a letter or digit, got "B0"`,
				`t.yaml:3:12: brokers[1].name: must be lower-case letters, digits and '-', starting with a letter or digit, got "-b"`,
				`t.yaml:4:12: brokers[2].name: must be lower-case letters, digits and '-', starting with a letter or digit, got "b.1"`,
			}},
		{"broker names unique", false, "  - {name: b1, clients: tcp://h:1, workers: tcp://h:2}\n  - {name: b0, clients: tcp://h:3, workers: tcp://h:4}\n",
			[]string{`t.yaml:6:12: brokers[2].name: "b0" is already the name of brokers[0] (line 2)`}},
		{"endpoints", true, `brokers:
  - name: b0
    clients: 127.0.0.1:5555
    workers: ipc:///tmp/w
  - name: b1
    clients: tcp://127.0.0.1
    workers: tcp://127.0.0.1:65536
  - name: b2
    clients: tcp://:5555
    workers: tcp://127.0.0.1:-1
  - name: b3
    clients: tcp://127.0.0.1:http
    workers: "tcp://a b:1"
  - name: b4
`, []string{
			`t.yaml:3:14: brokers[0].clients: must be an endpoint like tcp://127.0.0.1:5555, got "127.0.0.1:5555"`,
			`t.yaml:4:14: brokers[0].workers: must be an endpoint like tcp://127.0.0.1:5555, got "ipc:///tmp/w"`,
			`t.yaml:6:14: brokers[1].clients: must be an endpoint like tcp://127.0.0.1:5555 (no port), got "tcp://127.0.0.1"`,
			`t.yaml:7:14: brokers[1].workers: must be an endpoint like tcp://127.0.0.1:5555 (port must be a number from 0 to 65535), got "tcp://127.0.0.1:65536"`,
			`t.yaml:9:14: brokers[2].clients: must be an endpoint like tcp://127.0.0.1:5555 (needs a host), got "tcp://:5555"`,
			`t.yaml:10:14: brokers[2].workers: must be an endpoint like tcp://127.0.0.1:5555 (port must be a number from 0 to 65535), got "tcp://127.0.0.1:-1"`,
			`t.yaml:12:14: brokers[3].clients: must be an endpoint like tcp://127.0.0.1:5555 (port must be a number from 0 to 65535), got "tcp://127.0.0.1:http"`,
			`t.yaml:13:14: brokers[3].workers: must be an endpoint like tcp://127.0.0.1:5555 (bad host), got "tcp://a b:1"`,
			`t.yaml:14:5: brokers[4].clients: is required, such as tcp://127.0.0.1:5555`,
			`t.yaml:14:5: brokers[4].workers: is required, such as tcp://127.0.0.1:5555`,
		}},
		{"endpoints unique but port 0 may repeat", false, `  - name: b1
    clients: tcp://127.0.0.1:5556
    workers: tcp://127.0.0.1:0
  - name: b2
    clients: tcp://127.0.0.1:0
    workers: tcp://[::1]:5557
`, []string{`t.yaml:6:14: brokers[1].clients: "tcp://127.0.0.1:5556" is also brokers[0].workers`}},
		{"broker admin", false, "  - {name: b1, clients: tcp://h:1, workers: tcp://h:2, admin: 'h:x'}\n  - {name: b2, clients: tcp://h:3, workers: tcp://h:4, admin: ':0'}\n  - {name: b3, clients: tcp://h:5, workers: tcp://h:6, admin: ''}\n  - {name: b4, clients: tcp://h:7, workers: tcp://h:8, admin: '[::1]:9100'}\n",
			[]string{`t.yaml:5:63: brokers[1].admin: must be host:port like 127.0.0.1:8080 (port must be a number from 0 to 65535), got "h:x"`}},
		{"broker settings", false, "broker:\n  heartbeat: 9ms\n  liveness: 1\n  queue_limit: 0\n  default_timeout: 0s\n",
			[]string{
				`t.yaml:6:14: broker.heartbeat: must be at least 10ms, got "9ms"`,
				`t.yaml:7:13: broker.liveness: must be at least 2, got 1`,
				`t.yaml:8:16: broker.queue_limit: must be positive, got 0`,
				`t.yaml:9:20: broker.default_timeout: must be positive, got "0s"`,
			}},
		{"broker settings at their minimum", false, "broker: {heartbeat: 10ms, liveness: 2, queue_limit: 1, default_timeout: 1ns}\n", nil},
		{"transport", false, "transport:\n  max_frame: -1\n  handshake_timeout: 0s\n  write_timeout: -5s\n",
			[]string{
				`t.yaml:6:14: transport.max_frame: must be positive, got -1`,
				`t.yaml:7:22: transport.handshake_timeout: must be positive, got "0s"`,
				`t.yaml:8:18: transport.write_timeout: must be positive, got "-5s"`,
			}},
		{"frontend addresses", false, "frontend:\n  listen: ''\n  admin: localhost\n",
			[]string{
				`t.yaml:6:11: frontend.listen: is required, such as 127.0.0.1:8080`,
				`t.yaml:7:10: frontend.admin: must be host:port like 127.0.0.1:8080 (no port), got "localhost"`,
			}},
		{"frontend listen bad host", false, "frontend:\n  listen: 'ex/ample:80'\n",
			[]string{`t.yaml:6:11: frontend.listen: must be host:port like 127.0.0.1:8080 (bad host), got "ex/ample:80"`}},
		{"frontend limits and timeouts", false, `frontend:
  max_body: 0
  read_timeout: 0s
  write_timeout: -1ms
  idle_timeout: 0s
  shutdown_timeout: 0s
  timeout: 0s
  max_conns: 0
`, []string{
			`t.yaml:6:13: frontend.max_body: must be positive, got 0`,
			`t.yaml:7:17: frontend.read_timeout: must be positive, got "0s"`,
			`t.yaml:8:18: frontend.write_timeout: must be positive, got "-1ms"`,
			`t.yaml:9:17: frontend.idle_timeout: must be positive, got "0s"`,
			`t.yaml:10:21: frontend.shutdown_timeout: must be positive, got "0s"`,
			`t.yaml:11:12: frontend.timeout: must be positive, got "0s"`,
			`t.yaml:12:14: frontend.max_conns: must be positive, got 0`,
		}},
		{"max_body must fit in a frame", false, "transport: {max_frame: 1MiB}\nfrontend: {max_body: 1048576}\n",
			[]string{`t.yaml:6:22: frontend.max_body: must be smaller than transport.max_frame (1MiB), since the body travels in one frame; got "1048576"`}},
		{"forward headers", false, "frontend:\n  forward_headers: [X-Ok, 'Bad Header', '', Accept, ACCEPT, 'X:Y']\n",
			[]string{
				`t.yaml:6:27: frontend.forward_headers[1]: must be a header name (letters, digits and !#$%&'*+-.^_` + "`" + `|~), got "Bad Header"`,
				`t.yaml:6:41: frontend.forward_headers[2]: must be a header name (letters, digits and !#$%&'*+-.^_` + "`" + `|~), got ""`,
				`t.yaml:6:53: frontend.forward_headers[4]: "ACCEPT" is already listed as frontend.forward_headers[3]`,
				`t.yaml:6:61: frontend.forward_headers[5]: must be a header name (letters, digits and !#$%&'*+-.^_` + "`" + `|~), got "X:Y"`,
			}},
		{"route methods", false, `frontend:
  routes:
    - {method: get, path: /a, service: s}
    - {method: CONNECT, path: /b, service: s}
    - {path: /c, service: s}
    - {method: PATCH, path: /d, service: s}
`, []string{
			`t.yaml:7:16: frontend.routes[0].method: must be one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, got "get"`,
			`t.yaml:8:16: frontend.routes[1].method: must be one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, got "CONNECT"`,
			`t.yaml:9:7: frontend.routes[2].method: is required (one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS)`,
		}},
		{"route paths", false, `frontend:
  routes:
    - {method: GET, service: s}
    - {method: GET, path: a, service: s}
    - {method: GET, path: '/a b', service: s}
    - {method: GET, path: '/a?x=1', service: s}
    - {method: GET, path: '/a/{id', service: s}
    - {method: GET, path: '/a/id}', service: s}
    - {method: GET, path: '/a/{}', service: s}
    - {method: GET, path: '/a/{:[0-9]+}', service: s}
    - {method: GET, path: '/f/{p:*}/x', service: s}
    - {method: GET, path: '/f/{p:*}', service: s}
    - {method: GET, path: '/u/{id:[0-9]{1,3}}/{opt?}', service: s}
`, []string{
			`t.yaml:7:7: frontend.routes[0].path: is required, such as /users/{id}`,
			`t.yaml:8:27: frontend.routes[1].path: must start with "/", got "a"`,
			`t.yaml:9:27: frontend.routes[2].path: must not contain spaces or control characters, got "/a b"`,
			`t.yaml:10:27: frontend.routes[3].path: must not contain '?' or '#' (the query is forwarded by itself), got "/a?x=1"`,
			`t.yaml:11:27: frontend.routes[4].path: has a '{' without its '}', got "/a/{id"`,
			`t.yaml:12:27: frontend.routes[5].path: has a '}' without its '{', got "/a/id}"`,
			`t.yaml:13:27: frontend.routes[6].path: has a parameter without a name, got "/a/{}"`,
			`t.yaml:14:27: frontend.routes[7].path: has a parameter without a name, got "/a/{:[0-9]+}"`,
			`t.yaml:15:27: frontend.routes[8].path: may have a catch-all {name:*} only as its last segment, got "/f/{p:*}/x"`,
		}},
		{"duplicate routes", false, `frontend:
  routes:
    - {method: GET, path: '/users/{id}', service: s}
    - {method: POST, path: '/users/{id}', service: s}
    - {method: GET, path: '/users/{name}', service: t}
    - {method: GET, path: /a, service: s}
    - {method: GET, path: /a, service: s}
`, []string{
			`t.yaml:9:27: frontend.routes[2].path: GET /users/{name} is already routed by frontend.routes[0] (line 7)`,
			`t.yaml:11:27: frontend.routes[4].path: GET /a is already routed by frontend.routes[3] (line 10)`,
		}},
		{"route services", false, `frontend:
  routes:
    - {method: GET, path: /a}
    - {method: GET, path: /b, service: Echo}
    - {method: GET, path: /c, service: .echo}
    - {method: GET, path: /d, service: ` + strings.Repeat("s", 129) + `}
    - {method: GET, path: /e, service: ` + strings.Repeat("s", 128) + `}
    - {method: GET, path: /f, service: users.v2_read-only}
`, []string{
			`t.yaml:7:7: frontend.routes[0].service: is required`,
			`t.yaml:8:40: frontend.routes[1].service: must be 1-128 of a-z 0-9 . _ -, starting with a letter or digit, got "Echo"`,
			`t.yaml:9:40: frontend.routes[2].service: must be 1-128 of a-z 0-9 . _ -, starting with a letter or digit, got ".echo"`,
			`t.yaml:10:40: frontend.routes[3].service: must be 1-128 of a-z 0-9 . _ -, starting with a letter or digit, got "` + strings.Repeat("s", 60) + `…"`,
		}},
		{"route attempts and timeout", false, `frontend:
  routes:
    - {method: GET, path: /a, service: s, attempts: 0}
    - {method: GET, path: /b, service: s, attempts: 11}
    - {method: POST, path: /c, service: s, attempts: 2}
    - {method: GET, path: /d, service: s, idempotent: false, attempts: 3}
    - {method: GET, path: /e, service: s, timeout: 0s}
    - {method: POST, path: /f, service: s, attempts: 2, idempotent: true}
`, []string{
			`t.yaml:7:53: frontend.routes[0].attempts: must be from 1 to 10, got 0`,
			`t.yaml:8:53: frontend.routes[1].attempts: must be from 1 to 10, got 11`,
			`t.yaml:9:54: frontend.routes[2].attempts: must be 1 on a route that is not idempotent, got 2: a retry could run the request twice (set idempotent: true if that is harmless)`,
			`t.yaml:10:72: frontend.routes[3].attempts: must be 1 on a route that is not idempotent, got 3: a retry could run the request twice (set idempotent: true if that is harmless)`,
			`t.yaml:11:52: frontend.routes[4].timeout: must be positive, got "0s"`,
		}},
		{"a bad frontend.timeout is reported once, not per route", false, "frontend:\n  timeout: -1s\n  routes: [{method: GET, path: /a, service: s}]\n",
			[]string{`t.yaml:6:12: frontend.timeout: must be positive, got "-1s"`}},
		{"workers", false, "workers:\n  concurrency: 0\n  drain_timeout: 0s\n  metrics: '9100'\n",
			[]string{
				`t.yaml:6:16: workers.concurrency: must be positive, got 0`,
				`t.yaml:7:18: workers.drain_timeout: must be positive, got "0s"`,
				`t.yaml:8:12: workers.metrics: must be host:port like 127.0.0.1:8080 (no port), got "9100"`,
			}},
		{"log", false, "log:\n  level: WARN\n  format: logfmt\n",
			[]string{
				`t.yaml:6:10: log.level: must be one of debug, info, warn, error, got "WARN"`,
				`t.yaml:7:11: log.format: must be one of text, json, got "logfmt"`,
			}},
		{"every log level and format", false, "x-levels: [debug, info, warn, error]\nlog: {level: warn, format: json}\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := tt.src
			if !tt.noBrokers {
				src = minimal + src
			}
			if tt.want == nil {
				mustParse(t, src, nil)
				return
			}
			if d := diff(tt.want, problems(t, src, nil)); d != "" {
				t.Errorf("%s\nin:\n%s", d, numbered(src))
			}
		})
	}
}

func TestUnknownKeys(t *testing.T) {
	src := minimal + `    admn: 127.0.0.1:9100
lgo:
  level: info
frontend:
  routes:
    - method: GET
      path: /a
      service: s
      retries: 2
    - method: GET
      path: /b
      service: s
      Timeout: 1s
  forward-headers: [Accept]
workers:
  concurrency: 2
  threads: 4
`
	want := []string{
		`t.yaml:5:5: brokers[0].admn: unknown key; did you mean "admin"?`,
		`t.yaml:6:1: lgo: unknown key; did you mean "log"?`,
		`t.yaml:13:7: frontend.routes[0].retries: unknown key; expected one of: attempts, call, idempotent, method, path, service, timeout`,
		`t.yaml:17:7: frontend.routes[1].Timeout: unknown key; did you mean "timeout"?`,
		`t.yaml:18:3: frontend.forward-headers: unknown key; did you mean "forward_headers"?`,
		`t.yaml:21:3: workers.threads: unknown key; expected one of: concurrency, drain_timeout, metrics`,
	}
	if d := diff(want, problems(t, src, nil)); d != "" {
		t.Errorf("%s\nin:\n%s", d, numbered(src))
	}
}

func TestTypeErrors(t *testing.T) {
	src := minimal + `log: debug
broker:
  liveness: three
  queue_limit: 1.5
  heartbeat: [1s]
  default_timeout: {s: 1}
transport:
  max_frame: lots
frontend:
  listen: [a, b]
  max_conns: 99999999999999999999999
  forward_headers: Accept
  routes:
    - {method: GET, path: /a, service: s, idempotent: yes}
    - just a string
    - {method: GET, path: /b, service: s, attempts: "3"}
workers:
  concurrency: 2.0
  drain_timeout: 10
`
	want := []string{
		`t.yaml:5:6: log: must be a mapping (key: value lines), got "debug"`,
		`t.yaml:7:13: broker.liveness: must be a whole number, got "three"`,
		`t.yaml:8:16: broker.queue_limit: must be a whole number, got "1.5"`,
		`t.yaml:9:14: broker.heartbeat: must be a duration like "250ms", "5s" or "1m", got a list`,
		`t.yaml:10:20: broker.default_timeout: must be a duration like "250ms", "5s" or "1m", got a mapping`,
		`t.yaml:12:14: transport.max_frame: must be a size like 1048576, "64KiB" or "1MiB" (units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), got "lots"`,
		`t.yaml:14:11: frontend.listen: must be a string, got a list`,
		`t.yaml:15:14: frontend.max_conns: is out of range, got "99999999999999999999999"`,
		`t.yaml:16:20: frontend.forward_headers: must be a list, got "Accept"`,
		`t.yaml:18:55: frontend.routes[0].idempotent: must be true or false, got "yes"`,
		`t.yaml:19:7: frontend.routes[1]: must be a mapping (key: value lines), got "just a string"`,
		`t.yaml:20:53: frontend.routes[2].attempts: must be a whole number, got "3"`,
		`t.yaml:22:16: workers.concurrency: must be a whole number, got "2.0"`,
		`t.yaml:23:18: workers.drain_timeout: must be a duration like "250ms", "5s" or "1m", got "10"`,
	}
	if d := diff(want, problems(t, src, nil)); d != "" {
		t.Errorf("%s\nin:\n%s", d, numbered(src))
	}
}

func TestRootMustBeMapping(t *testing.T) {
	for src, want := range map[string]string{
		"- a\n- b\n": `t.yaml:1:1: must be a mapping (key: value lines), got a list`,
		"hello\n":    `t.yaml:1:1: must be a mapping (key: value lines), got "hello"`,
	} {
		if d := diff([]string{want}, problems(t, src, nil)); d != "" {
			t.Error(d)
		}
	}
}

func TestManyProblemsInFileOrder(t *testing.T) {
	// Decode problems (unknown keys, types) and validation problems are
	// found in separate passes; the report interleaves them by position.
	src := `workers:
  concurrency: 0
frontend:
  nope: 1
  routes:
    - {method: FETCH, path: /a, service: s}
brokers:
  - name: b0
    clients: tcp://127.0.0.1:5555
    workers: tcp://127.0.0.1:5556
    extra: 1
  - name: B1
log:
  level: loud
  format: 7
  size: 2
`
	want := []string{
		`t.yaml:2:16: workers.concurrency: must be positive, got 0`,
		`t.yaml:4:3: frontend.nope: unknown key; expected one of: admin, forward_headers, idle_timeout, listen, max_body, max_conns, read_timeout, routes, shutdown_timeout, timeout, write_timeout`,
		`t.yaml:6:16: frontend.routes[0].method: must be one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, got "FETCH"`,
		`t.yaml:11:5: brokers[0].extra: unknown key; expected one of: admin, clients, events_in, events_out, name, workers`,
		`t.yaml:12:5: brokers[1].clients: is required, such as tcp://127.0.0.1:5555`,
		`t.yaml:12:5: brokers[1].workers: is required, such as tcp://127.0.0.1:5555`,
		`t.yaml:12:11: brokers[1].name: must be lower-case letters, digits and '-', starting with a letter or digit, got "B1"`,
		`t.yaml:14:10: log.level: must be one of debug, info, warn, error, got "loud"`,
		`t.yaml:15:11: log.format: must be one of text, json, got "7"`,
		`t.yaml:16:3: log.size: unknown key; expected one of: format, level`,
	}
	if d := diff(want, problems(t, src, nil)); d != "" {
		t.Errorf("%s\nin:\n%s", d, numbered(src))
	}
}

func TestDuplicateKeys(t *testing.T) {
	src := minimal + `log:
  level: info
  level: debug
frontend:
  routes:
    - {method: GET, path: /a, service: s, path: /b}
`
	want := []string{
		`t.yaml:7:3: log.level: key given twice (first on line 6)`,
		`t.yaml:10:43: frontend.routes[0].path: key given twice (first on line 10)`,
	}
	if d := diff(want, problems(t, src, nil)); d != "" {
		t.Errorf("%s\nin:\n%s", d, numbered(src))
	}
}

func TestAnchorsAndMerges(t *testing.T) {
	src := minimal + `x-route: &get
  method: GET
  service: users
  timeout: 2s
x-slow: &slow
  timeout: 30s
  attempts: 1
frontend:
  routes:
    - <<: *get
      path: /users/{id}
    - <<: [*slow, *get]
      path: /users/{id}/report
    - <<: *get
      path: /users
      service: lister
  forward_headers: &hdrs [Accept]
workers:
  metrics: &m "127.0.0.1:9200"
log: {level: *m}
`
	// log.level is an alias to a bad value: the problem points at the alias.
	want := []string{`t.yaml:24:14: log.level: must be one of debug, info, warn, error, got "127.0.0.1:9200"`}
	if d := diff(want, problems(t, src, nil)); d != "" {
		t.Errorf("%s\nin:\n%s", d, numbered(src))
	}

	c := mustParse(t, strings.Replace(src, "log: {level: *m}\n", "", 1), nil)
	wantRoutes := []Route{
		{"GET", "/users/{id}", "users", "GET /users/{id}", Duration(2 * time.Second), 3, true},
		{"GET", "/users/{id}/report", "users", "GET /users/{id}/report", Duration(30 * time.Second), 1, true},
		{"GET", "/users", "lister", "GET /users", Duration(2 * time.Second), 3, true},
	}
	if !reflect.DeepEqual(c.Frontend.Routes, wantRoutes) {
		t.Errorf("routes:\n got %+v\nwant %+v", c.Frontend.Routes, wantRoutes)
	}
	if c.Workers.Metrics != "127.0.0.1:9200" {
		t.Errorf("metrics = %q", c.Workers.Metrics)
	}

	bad := minimal + "frontend:\n  routes:\n    - <<: 5\n      path: /a\n    - {<<: [{oops: 1}], method: GET, path: /b, service: s}\n"
	want = []string{
		`t.yaml:7:7: frontend.routes[0].method: is required (one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS)`,
		`t.yaml:7:7: frontend.routes[0].service: is required`,
		`t.yaml:7:11: frontend.routes[0]: << must merge a mapping or a list of mappings, got "5"`,
		`t.yaml:9:14: frontend.routes[1].oops: unknown key; expected one of: attempts, call, idempotent, method, path, service, timeout`,
	}
	if d := diff(want, problems(t, bad, nil)); d != "" {
		t.Errorf("%s\nin:\n%s", d, numbered(bad))
	}
}

func TestSelfReferencingMergeTerminates(t *testing.T) {
	src := minimal + "frontend:\n  routes:\n    - &r {method: GET, path: /a, service: s, <<: *r}\n"
	mustParse(t, src, nil)
}

func TestSyntaxErrors(t *testing.T) {
	// The line is the one yaml.v3 reports: for some errors it is the line
	// where the construct that failed began.
	tests := []struct{ name, src, want string }{
		{"mapping in a scalar", "log:\n  level: info: debug\n", "t.yaml:2: invalid YAML: mapping values are not allowed in this context"},
		{"bad indentation", "log:\n  level: info\n format: text\n", "t.yaml:2: invalid YAML: did not find expected key"},
		{"unclosed flow mapping", "brokers: [\n  {name: b0\n", "t.yaml:1: invalid YAML: did not find expected ',' or '}'"},
		{"tab indentation", "log:\n\tlevel: info\n", "t.yaml:2: invalid YAML: found character that cannot start any token"},
		{"unterminated quote", minimal + "log: {level: \"info}\n", "t.yaml:5: invalid YAML: found unexpected end of stream"},
		{"unknown anchor", "log: *nope\n", "t.yaml: invalid YAML: unknown anchor 'nope' referenced"},
		{"second document", minimal + "---\nlog: {}\n", "t.yaml:5:1: holds a second YAML document (after ---); a config is one document"},
		{"error in second document", minimal + "---\n[\n", "t.yaml:6: invalid YAML: did not find expected node content"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if d := diff([]string{tt.want}, problems(t, tt.src, nil)); d != "" {
				t.Errorf("%s\nin:\n%s", d, numbered(tt.src))
			}
		})
	}
}

func TestProblemString(t *testing.T) {
	tests := []struct {
		p    Problem
		want string
	}{
		{Problem{"shoal.yaml", 14, 5, "frontend.routes[2].timeout", `must be positive, got "-1s"`},
			`shoal.yaml:14:5: frontend.routes[2].timeout: must be positive, got "-1s"`},
		{Problem{"shoal.yaml", 3, 0, "", "invalid YAML: x"}, "shoal.yaml:3: invalid YAML: x"},
		{Problem{"shoal.yaml", 0, 0, "brokers", "at least one broker is required"}, "shoal.yaml: brokers: at least one broker is required"},
		{Problem{"$SHOAL_LOG_LEVEL", 0, 0, "log.level", "bad"}, "$SHOAL_LOG_LEVEL: log.level: bad"},
	}
	for _, tt := range tests {
		if got := tt.p.String(); got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
		}
		if got := tt.p.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
	errs := Errors{tests[0].p, tests[1].p}
	if got, want := errs.Error(), tests[0].want+"\n"+tests[1].want; got != want {
		t.Errorf("Errors.Error() = %q, want %q", got, want)
	}
}

func TestProblemFields(t *testing.T) {
	_, err := Parse("t.yaml", []byte(minimal+"frontend:\n  timeout: -1s\n"), nil)
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("error %T is not Errors", err)
	}
	want := Errors{{File: "t.yaml", Line: 6, Column: 12, Field: "frontend.timeout", Msg: `must be positive, got "-1s"`}}
	if !reflect.DeepEqual(errs, want) {
		t.Errorf("got %#v\nwant %#v", errs, want)
	}
}

func TestBrokers(t *testing.T) {
	c := mustParse(t, `brokers:
  - {name: b0, clients: tcp://10.0.0.1:5555, workers: tcp://10.0.0.1:5556}
  - {name: edge-1, clients: tcp://10.0.0.2:5555, workers: tcp://10.0.0.2:5556, admin: ":9100"}
`, nil)
	b, err := c.BrokerByName("edge-1")
	if want := (Broker{Name: "edge-1", Clients: "tcp://10.0.0.2:5555", Workers: "tcp://10.0.0.2:5556", Admin: ":9100"}); err != nil || b != want {
		t.Errorf("BrokerByName(edge-1) = %+v, %v; want %+v", b, err, want)
	}
	_, err = c.BrokerByName("b9")
	if want := `config: t.yaml has no broker named "b9" (brokers: b0, edge-1)`; err == nil || err.Error() != want {
		t.Errorf("BrokerByName(b9) error = %v, want %q", err, want)
	}
	if got, want := c.ClientEndpoints(), []string{"tcp://10.0.0.1:5555", "tcp://10.0.0.2:5555"}; !reflect.DeepEqual(got, want) {
		t.Errorf("ClientEndpoints = %q, want %q", got, want)
	}
	if got, want := c.WorkerEndpoints(), []string{"tcp://10.0.0.1:5556", "tcp://10.0.0.2:5556"}; !reflect.DeepEqual(got, want) {
		t.Errorf("WorkerEndpoints = %q, want %q", got, want)
	}
}

func TestParseDoesNotShareState(t *testing.T) {
	a := mustParse(t, minimal, nil)
	a.Frontend.ForwardHeaders[0] = "X-Mutated"
	b := mustParse(t, minimal, nil)
	if b.Frontend.ForwardHeaders[0] != "Content-Type" {
		t.Error("configs from two Parse calls share memory")
	}
}
