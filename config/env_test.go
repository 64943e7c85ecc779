package config

import (
	"os"
	"strings"
	"testing"
)

const twoBrokers = `brokers:
  - {name: b0, clients: tcp://127.0.0.1:5555, workers: tcp://127.0.0.1:5556}
  - {name: edge-1, clients: tcp://127.0.0.1:5565, workers: tcp://127.0.0.1:5566, admin: 127.0.0.1:9101}
log: {level: info}
`

func TestEnvOverrides(t *testing.T) {
	c := mustParse(t, twoBrokers, env(map[string]string{
		"SHOAL_LOG_LEVEL":               "debug",
		"SHOAL_LOG_FORMAT":              "json",
		"SHOAL_FRONTEND_LISTEN":         "0.0.0.0:80",
		"SHOAL_FRONTEND_ADMIN":          "", // set but empty: turns the admin listener off
		"SHOAL_BROKER_B0_CLIENTS":       "tcp://10.0.0.1:6000",
		"SHOAL_BROKER_B0_WORKERS":       "tcp://10.0.0.1:6001",
		"SHOAL_BROKER_EDGE_1_ADMIN":     "127.0.0.1:0",
		"SHOAL_BROKER_edge-1_CLIENTS":   "tcp://wrong:1", // not how names are spelled
		"SHOAL_BROKER_NOPE_CLIENTS":     "tcp://wrong:1", // no such broker
		"SHOAL_FRONTEND_MAX_BODY":       "1",             // not an override
		"SHOAL_BROKER_EDGE_1_UNRELATED": "x",
	}))
	if c.Log != (Log{"debug", "json"}) {
		t.Errorf("log = %+v", c.Log)
	}
	if c.Frontend.Listen != "0.0.0.0:80" || c.Frontend.Admin != "" {
		t.Errorf("frontend listen/admin = %q, %q", c.Frontend.Listen, c.Frontend.Admin)
	}
	want := []Broker{
		{Name: "b0", Clients: "tcp://10.0.0.1:6000", Workers: "tcp://10.0.0.1:6001"},
		{Name: "edge-1", Clients: "tcp://127.0.0.1:5565", Workers: "tcp://127.0.0.1:5566", Admin: "127.0.0.1:0"},
	}
	for i := range want {
		if c.Brokers[i] != want[i] {
			t.Errorf("brokers[%d] = %+v, want %+v", i, c.Brokers[i], want[i])
		}
	}
	if c.Frontend.MaxBody != 1<<20 {
		t.Errorf("max_body = %v", c.Frontend.MaxBody)
	}
}

func TestEnvNilLookup(t *testing.T) {
	c := mustParse(t, twoBrokers, nil)
	if c.Log.Level != "info" {
		t.Errorf("level = %q", c.Log.Level)
	}
}

func TestEnvBadValuesNameTheVariable(t *testing.T) {
	src := twoBrokers + "frontend:\n  nope: 1\n"
	got := problems(t, src, env(map[string]string{
		"SHOAL_LOG_LEVEL":             "verbose",
		"SHOAL_FRONTEND_LISTEN":       "",
		"SHOAL_FRONTEND_ADMIN":        "localhost",
		"SHOAL_BROKER_EDGE_1_WORKERS": "tcp://127.0.0.1:5555", // same as b0's clients
		"SHOAL_BROKER_B0_ADMIN":       "127.0.0.1:99999",
	}))
	// File problems first, in file order; then the variables, in the order
	// of the table.
	want := []string{
		`t.yaml:6:3: frontend.nope: unknown key; expected one of: admin, forward_headers, idle_timeout, listen, max_body, max_conns, read_timeout, routes, shutdown_timeout, timeout, write_timeout`,
		`$SHOAL_LOG_LEVEL: log.level: must be one of debug, info, warn, error, got "verbose"`,
		`$SHOAL_BROKER_B0_ADMIN: brokers[0].admin: must be host:port like 127.0.0.1:8080 (port must be a number from 0 to 65535), got "127.0.0.1:99999"`,
		`$SHOAL_BROKER_EDGE_1_WORKERS: brokers[1].workers: "tcp://127.0.0.1:5555" is also brokers[0].clients`,
		`$SHOAL_FRONTEND_LISTEN: frontend.listen: is required, such as 127.0.0.1:8080`,
		`$SHOAL_FRONTEND_ADMIN: frontend.admin: must be host:port like 127.0.0.1:8080 (no port), got "localhost"`,
	}
	if d := diff(want, got); d != "" {
		t.Error(d)
	}
}

func TestEnvSetterError(t *testing.T) {
	// Today's variables are strings, which cannot fail to parse; a later
	// numeric one can. Its error must name the variable.
	saved := envVars
	t.Cleanup(func() { envVars = saved })
	envVars = append(envVars[:len(envVars):len(envVars)], envVar{"SHOAL_TEST_NUMBER", "workers.concurrency",
		func(c *Config, _ int, v string) error { return errString("must be a whole number, got " + quote(v)) }})

	got := problems(t, minimal, env(map[string]string{"SHOAL_TEST_NUMBER": "many"}))
	want := []string{`$SHOAL_TEST_NUMBER: workers.concurrency: must be a whole number, got "many"`}
	if d := diff(want, got); d != "" {
		t.Error(d)
	}
}

type errString string

func (e errString) Error() string { return string(e) }

func TestEnvFixesNothingInTheFile(t *testing.T) {
	// A variable overrides a bad value from the file, but the file's type
	// error is still reported: the file is still wrong.
	src := minimal + "log: {level: [x]}\n"
	got := problems(t, src, env(map[string]string{"SHOAL_LOG_LEVEL": "debug"}))
	want := []string{`t.yaml:5:14: log.level: must be a string, got a list`}
	if d := diff(want, got); d != "" {
		t.Error(d)
	}
}

// TestEnvDocumented keeps the package doc's table in step with envVars.
func TestEnvDocumented(t *testing.T) {
	doc, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range envVars {
		if !strings.Contains(string(doc), ev.name) || !strings.Contains(string(doc), ev.field) {
			t.Errorf("doc.go does not document %s (%s)", ev.name, ev.field)
		}
	}
	example, err := os.ReadFile("../shoal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range envVars {
		if !strings.Contains(string(example), ev.name) {
			t.Errorf("shoal.yaml does not mention %s", ev.name)
		}
	}
}
