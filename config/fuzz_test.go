package config

import (
	"os"
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary bytes to Parse: it must never panic, and must
// return exactly one of a config and problems. Every problem must say
// something and name its source.
func FuzzParse(f *testing.F) {
	for _, p := range []string{"../shoal.yaml", "testdata/broken.yaml"} {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range []string{
		"",
		minimal,
		minimal + "frontend:\n  routes:\n    - &r {method: GET, path: /a, service: s, <<: *r}\n",
		"a: &a [*a]\n",
		"x-a: &a {b: *a}\nlog: *a\n",
		"brokers: [{<<: [{<<: {name: b0}}], clients: 'tcp://h:1', workers: 'tcp://h:2'}]\n",
		"? [a]\n: b\n",
		"log: {level: !!binary aGk=}\n",
		"---\n...\n---\n",
		"frontend: {max_body: 0x7fffffffffffffff, routes: [{path: '/{a:{b}}'}]}\n",
		"\xff\xfe",
	} {
		f.Add([]byte(s))
	}
	lookup := env(map[string]string{
		"SHOAL_LOG_LEVEL":         "warn",
		"SHOAL_BROKER_B0_CLIENTS": "tcp://127.0.0.1:0",
	})
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("f.yaml", data, lookup)
		if (c == nil) == (err == nil) {
			t.Fatalf("Parse returned config %v and error %v", c, err)
		}
		if err == nil {
			if len(c.Brokers) == 0 {
				t.Fatal("valid config without brokers")
			}
			return
		}
		errs, ok := err.(Errors)
		if !ok || len(errs) == 0 {
			t.Fatalf("error %T %v is not a non-empty Errors", err, err)
		}
		for _, p := range errs {
			if p.Msg == "" || p.File == "" || (p.File != "f.yaml" && !strings.HasPrefix(p.File, "$SHOAL_")) {
				t.Fatalf("bad problem %#v", p)
			}
		}
	})
}
