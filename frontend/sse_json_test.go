package frontend

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

func TestAppendJSON(t *testing.T) {
	enc := func(v any) []byte {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, c := range []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, `null`},
		{"nil", enc(nil), `null`},
		{"bools", enc([]bool{true, false}), `[true,false]`},
		{"ints", enc([]any{0, 127, 128, -1, -33, 70000, -70000, int64(math.MaxInt64), uint64(math.MaxUint64), int64(math.MinInt64)}),
			`[0,127,128,-1,-33,70000,-70000,9223372036854775807,18446744073709551615,-9223372036854775808]`},
		{"floats", enc([]any{1.5, float32(0.25), math.NaN(), math.Inf(1)}), `[1.5,0.25,null,null]`},
		{"string escapes", enc("a\"b\\c\n\u0001<é>"), `"a\"b\\c\n\u0001\u003cé\u003e"`},
		{"invalid utf8", []byte{0xa2, 0xff, 'x'}, `"\ufffdx"`},
		{"bin", enc([]byte("hi")), `"aGk="`},
		{"map", enc(map[string]any{"a": []any{1, "x"}}), `{"a":[1,"x"]}`},
		{"int keys", []byte{0x82, 0x01, 0xa1, 'a', 0xc3, 0x02}, `{"1":"a","true":2}`},
		{"nested", enc(map[string]any{"x": map[string]any{"y": map[string]any{}}}), `{"x":{"y":{}}}`},
		{"timestamp", enc(time.Unix(1767225600, 5).UTC()), `"2026-01-01T00:00:00.000000005Z"`},
		{"other ext", []byte{0xd4, 0x05, 0x01}, `null`},
		{"str16", enc(strings.Repeat("z", 300)), `"` + strings.Repeat("z", 300) + `"`},
	} {
		got, err := appendJSON([]byte("x:"), c.in)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if string(got) != "x:"+c.want {
			t.Errorf("%s: got %s, want %s", c.name, got[2:], c.want)
		}
		if !json.Valid(got[2:]) {
			t.Errorf("%s: invalid JSON %s", c.name, got[2:])
		}
	}
	for name, in := range map[string][]byte{
		"trailing":      {0xc0, 0xc0},
		"short str":     {0xa5, 'a'},
		"short map":     {0x81, 0xa1, 'a'},
		"huge array":    {0xdd, 0xff, 0xff, 0xff, 0xff},
		"huge bin":      {0xc6, 0xff, 0xff, 0xff, 0xff},
		"never used":    {0xc1},
		"missing value": {0x81},
		"deep":          []byte(strings.Repeat("\x91", 100) + "\xc0"),
	} {
		if out, err := appendJSON([]byte("keep"), in); err == nil || string(out) != "keep" {
			t.Errorf("%s: %q, %v; want an error and dst unchanged", name, out, err)
		}
	}
}

// FuzzAppendJSON: whatever the bytes, the transcoder never panics, and
// what it accepts is valid JSON that says what a msgpack decoder reads.
func FuzzAppendJSON(f *testing.F) {
	for _, v := range []any{nil, 1, -1, 1.5, "x", []byte{1}, map[string]any{"a": []any{1, "b", nil}}, map[int]bool{1: true}, time.Unix(1, 2)} {
		b, _ := msgpack.Marshal(v)
		f.Add(b)
	}
	f.Add([]byte{0xdf, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		out, err := appendJSON(nil, b)
		if err != nil {
			return
		}
		if !json.Valid(out) {
			t.Fatalf("invalid JSON %q from %x", out, b)
		}
	})
}
