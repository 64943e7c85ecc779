package config

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// minimal is the smallest valid config; tests append sections to it.
const minimal = `brokers:
  - name: b0
    clients: tcp://127.0.0.1:5555
    workers: tcp://127.0.0.1:5556
`

// env returns a lookup function over vars.
func env(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := vars[k]
		return v, ok
	}
}

// mustParse parses a config that must be valid.
func mustParse(t *testing.T, src string, lookup func(string) (string, bool)) *Config {
	t.Helper()
	c, err := Parse("t.yaml", []byte(src), lookup)
	if err != nil {
		t.Fatalf("Parse: unexpected problems:\n%v\nin:\n%s", err, numbered(src))
	}
	return c
}

// problems parses a config that must be invalid and returns its problems
// as lines.
func problems(t *testing.T, src string, lookup func(string) (string, bool)) []string {
	t.Helper()
	c, err := Parse("t.yaml", []byte(src), lookup)
	if err == nil {
		t.Fatalf("Parse: want problems, got none (config %+v) in:\n%s", c, numbered(src))
	}
	if c != nil {
		t.Errorf("Parse returned a config along with problems")
	}
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("Parse error is %T, want Errors: %v", err, err)
	}
	if len(errs) == 0 {
		t.Fatalf("Parse returned an empty Errors")
	}
	if got := err.Error(); got != strings.Join(lines(errs), "\n") {
		t.Errorf("Errors.Error() = %q, want the problems one per line", got)
	}
	return lines(errs)
}

func lines(errs Errors) []string {
	out := make([]string, len(errs))
	for i, p := range errs {
		out[i] = p.String()
	}
	return out
}

// diff returns a line diff of want and got, "" when they are equal.
func diff(want, got []string) string {
	if reflect.DeepEqual(want, got) {
		return ""
	}
	var b strings.Builder
	b.WriteString("(-want, +got)\n")
	for i := 0; i < len(want) || i < len(got); i++ {
		switch {
		case i >= len(got):
			fmt.Fprintf(&b, "- %s\n", want[i])
		case i >= len(want):
			fmt.Fprintf(&b, "+ %s\n", got[i])
		case want[i] != got[i]:
			fmt.Fprintf(&b, "- %s\n+ %s\n", want[i], got[i])
		default:
			fmt.Fprintf(&b, "  %s\n", want[i])
		}
	}
	return b.String()
}

// numbered prefixes every line of src with its number, for failure output.
func numbered(src string) string {
	var b strings.Builder
	for i, l := range strings.Split(src, "\n") {
		fmt.Fprintf(&b, "%3d| %s\n", i+1, l)
	}
	return b.String()
}
