package config

import (
	"reflect"
	"testing"

	"gopkg.in/yaml.v3"
)

// The decoder is generic so that later sections (redis, queue, programs,
// events) need no decoding code. These tests use kinds the schema does not
// use yet: maps, pointers, unsigned and float fields, untagged fields.
type extItem struct {
	Cmd      string   `yaml:"cmd"`
	Numprocs uint8    `yaml:"numprocs"`
	Weight   float64  `yaml:"weight"`
	Env      []string `yaml:"env"`
}

type extSection struct {
	Programs map[string]extItem `yaml:"programs"`
	Redis    *struct {
		Addr string   `yaml:"addr"`
		TTL  Duration `yaml:"ttl"`
	} `yaml:"redis"`
	Plain    int // untagged: key "plain", as in yaml.v3
	Skipped  int `yaml:"-"`
	internal int
}

func decodeExt(t *testing.T, src string) (extSection, []string) {
	t.Helper()
	var root yaml.Node
	if err := yaml.Unmarshal([]byte(src), &root); err != nil {
		t.Fatal(err)
	}
	d := newDecoder("t.yaml")
	var v extSection
	d.decode("", root.Content[0], reflect.ValueOf(&v).Elem())
	sortProblems(d.problems, "t.yaml")
	return v, lines(d.problems)
}

func TestDecodeExtensionKinds(t *testing.T) {
	v, got := decodeExt(t, `programs:
  web: {cmd: shoal frontend, numprocs: 2, weight: 0.5, env: [A=1]}
  echo:
    cmd: shoal worker echo
    weight: 2
redis:
  addr: 127.0.0.1:6379
  ttl: 1m
plain: 7
`)
	if len(got) != 0 {
		t.Fatalf("problems: %q", got)
	}
	want := map[string]extItem{
		"web":  {"shoal frontend", 2, 0.5, []string{"A=1"}},
		"echo": {"shoal worker echo", 0, 2, nil},
	}
	if !reflect.DeepEqual(v.Programs, want) {
		t.Errorf("programs = %+v, want %+v", v.Programs, want)
	}
	if v.Redis == nil || v.Redis.Addr != "127.0.0.1:6379" || v.Redis.TTL.D().Minutes() != 1 {
		t.Errorf("redis = %+v", v.Redis)
	}
	if v.Plain != 7 {
		t.Errorf("plain = %d", v.Plain)
	}
}

func TestDecodeExtensionProblems(t *testing.T) {
	_, got := decodeExt(t, `programs:
  web: {cmd: [x], numprocs: 256, weight: heavy, env: A=1, user: www}
  db: {numprocs: -1}
  ? [complex]
  : {}
redis: 5
skipped: 1
internal: 2
plain: {}
`)
	want := []string{
		`t.yaml:2:14: programs.web.cmd: must be a string, got a list`,
		`t.yaml:2:29: programs.web.numprocs: is out of range, got "256"`,
		`t.yaml:2:42: programs.web.weight: must be a number, got "heavy"`,
		`t.yaml:2:54: programs.web.env: must be a list, got "A=1"`,
		`t.yaml:2:59: programs.web.user: unknown key; expected one of: cmd, env, numprocs, weight`,
		`t.yaml:3:18: programs.db.numprocs: is out of range, got "-1"`,
		`t.yaml:4:5: programs: keys must be plain names, got a list`,
		`t.yaml:6:8: redis: must be a mapping (key: value lines), got "5"`,
		`t.yaml:7:1: skipped: unknown key; expected one of: plain, programs, redis`,
		`t.yaml:8:1: internal: unknown key; expected one of: plain, programs, redis`,
		`t.yaml:9:8: plain: must be a whole number, got a mapping`,
	}
	if d := diff(want, got); d != "" {
		t.Error(d)
	}
}

func TestDecodeBudget(t *testing.T) {
	// A list that an alias repeats: every repetition costs decode work.
	src := "x-h: &h [a, b, c, d, e, f, g, h]\nfrontend:\n  forward_headers: [*h" + repeat(", *h", 300) + "]\n"
	d := newDecoder("t.yaml")
	d.budget = 100
	var root yaml.Node
	if err := yaml.Unmarshal([]byte(src), &root); err != nil {
		t.Fatal(err)
	}
	d.decode("", root.Content[0], reflect.ValueOf(Default()).Elem())
	var found bool
	for _, p := range d.problems {
		if p.Msg == "the document is too large once its aliases are expanded (more than 1048576 nodes)" {
			found = true
		}
	}
	if !found || len(d.problems) > 101 {
		t.Errorf("budget problem not reported once, or too many problems (%d): %q", len(d.problems), lines(d.problems))
	}
}

func repeat(s string, n int) string {
	out := ""
	for range n {
		out += s
	}
	return out
}

func TestSuggest(t *testing.T) {
	names := []string{"level", "format", "timeout", "forward_headers", "log"}
	for key, want := range map[string]string{
		"levle":           "level",
		"lvl":             "",
		"Timeout":         "timeout",
		"timout":          "timeout",
		"lgo":             "log",
		"forward-headers": "forward_headers",
		"xyz":             "",
		"a":               "",
	} {
		if got := suggest(key, names); got != want {
			t.Errorf("suggest(%q) = %q, want %q", key, got, want)
		}
	}
}
