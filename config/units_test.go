package config

import (
	"flag"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func TestDurationYAML(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		err  string
	}{
		{in: "250ms", want: 250 * time.Millisecond},
		{in: "5s", want: 5 * time.Second},
		{in: "1m", want: time.Minute},
		{in: "1h30m", want: 90 * time.Minute},
		{in: "1.5s", want: 1500 * time.Millisecond},
		{in: "-1s", want: -time.Second},
		{in: "0", want: 0},
		{in: "0s", want: 0},
		{in: "'10s'", want: 10 * time.Second},
		{in: "5", err: `must be a duration like "250ms", "5s" or "1m", got "5"`},
		{in: "5 s", err: `must be a duration like "250ms", "5s" or "1m", got "5 s"`},
		{in: "1d", err: `must be a duration like "250ms", "5s" or "1m", got "1d"`},
		{in: "''", err: `must be a duration like "250ms", "5s" or "1m", got ""`},
		{in: "true", err: `must be a duration like "250ms", "5s" or "1m", got "true"`},
		{in: "99999999h", err: `must be a duration like "250ms", "5s" or "1m", got "99999999h"`},
		{in: "[1s]", err: `must be a duration like "250ms", "5s" or "1m", got a list`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			var v struct {
				D Duration `yaml:"d"`
			}
			err := yaml.Unmarshal([]byte("d: "+tt.in), &v)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Errorf("error = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil || v.D.D() != tt.want {
				t.Errorf("got %v, %v; want %v", v.D, err, tt.want)
			}
		})
	}
}

func TestDurationText(t *testing.T) {
	d := Duration(90 * time.Second)
	if d.String() != "1m30s" {
		t.Errorf("String = %q", d.String())
	}
	b, _ := d.MarshalText()
	var back Duration
	if err := back.UnmarshalText(b); err != nil || back != d {
		t.Errorf("round trip: %v, %v", back, err)
	}
	out, err := yaml.Marshal(struct{ D Duration }{d})
	if err != nil || string(out) != "d: 1m30s\n" {
		t.Errorf("yaml.Marshal = %q, %v", out, err)
	}
	// Works as a flag, as a worker's command line may want.
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	var f Duration
	fs.TextVar(&f, "drain", Duration(time.Second), "")
	if err := fs.Parse([]string{"-drain", "250ms"}); err != nil || f.D() != 250*time.Millisecond {
		t.Errorf("flag: %v, %v", f, err)
	}
}

func TestSizeYAML(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		err  string
	}{
		{in: "1048576", want: 1 << 20},
		{in: "0", want: 0},
		{in: "-1", want: -1},
		{in: "0x100", want: 256},
		{in: "'1048576'", want: 1 << 20},
		{in: "512B", want: 512},
		{in: "64KiB", want: 64 << 10},
		{in: "1MiB", want: 1 << 20},
		{in: "1GiB", want: 1 << 30},
		{in: "2TiB", want: 2 << 40},
		{in: "2KB", want: 2000},
		{in: "2MB", want: 2_000_000},
		{in: "3GB", want: 3_000_000_000},
		{in: "1TB", want: 1_000_000_000_000},
		{in: "64kib", want: 64 << 10},
		{in: "1 MiB", want: 1 << 20},
		{in: "' 2mb '", want: 2_000_000},
		{in: "+4KiB", want: 4 << 10},
		{in: "-1MiB", want: -1 << 20},
		{in: "8388607TiB", want: 8388607 << 40},
		{in: "8388608TiB", err: `is out of range, got "8388608TiB"`},
		{in: "9223372036854775807", want: 1<<63 - 1},
		{in: "9223372036854775808", err: `is out of range, got "9223372036854775808"`},
		{in: "99999999999999999999KiB", err: `is out of range, got "99999999999999999999KiB"`},
		{in: "1.5MiB", err: `must be a size like 1048576, "64KiB" or "1MiB" (units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), got "1.5MiB"`},
		{in: "1.5", err: `got "1.5"`},
		{in: "1M", err: `got "1M"`},
		{in: "1 MiB MiB", err: `got "1 MiB MiB"`},
		{in: "MiB", err: `got "MiB"`},
		{in: "''", err: `got ""`},
		{in: "'-'", err: `got "-"`},
		{in: "true", err: `got "true"`},
		{in: "{a: 1}", err: `got a mapping`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			var v struct {
				S Size `yaml:"s"`
			}
			err := yaml.Unmarshal([]byte("s: "+tt.in), &v)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Errorf("error = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil || int64(v.S) != tt.want {
				t.Errorf("got %d, %v; want %d", v.S, err, tt.want)
			}
		})
	}
}

func TestSizeString(t *testing.T) {
	tests := []struct {
		s    Size
		want string
	}{
		{0, "0B"},
		{1, "1B"},
		{1000, "1KB"},
		{1024, "1KiB"},
		{1536, "1536B"},
		{64 << 20, "64MiB"},
		{2_000_000, "2MB"},
		{1 << 30, "1GiB"},
		{3 << 40, "3TiB"},
		{-1 << 20, "-1MiB"},
		{1<<63 - 1, "9223372036854775807B"},
	}
	for _, tt := range tests {
		if got := tt.s.String(); got != tt.want {
			t.Errorf("Size(%d).String() = %q, want %q", int64(tt.s), got, tt.want)
		}
		var back Size
		if err := back.UnmarshalText([]byte(tt.s.String())); err != nil || back != tt.s {
			t.Errorf("round trip of %d: %d, %v", int64(tt.s), back, err)
		}
	}
	out, err := yaml.Marshal(struct{ S Size }{64 << 20})
	if err != nil || string(out) != "s: 64MiB\n" {
		t.Errorf("yaml.Marshal = %q, %v", out, err)
	}
}
