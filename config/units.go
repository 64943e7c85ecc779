package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Duration is a time.Duration written the way time.ParseDuration reads it:
// "250ms", "5s", "1m30s". A number without a unit is an error, except 0.
// It implements yaml.Unmarshaler and encoding.TextUnmarshaler, so it also
// works with flag.TextVar.
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String formats d like time.Duration does ("1m0s").
func (d Duration) String() string { return time.Duration(d).String() }

const durationHint = `must be a duration like "250ms", "5s" or "1m"`

// UnmarshalText parses a duration such as "5s".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("%s, got %s", durationHint, quote(string(b)))
	}
	*d = Duration(v)
	return nil
}

// MarshalText formats d like String.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalYAML reads a duration from a YAML scalar.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("%s, got %s", durationHint, describe(n))
	}
	return d.UnmarshalText([]byte(n.Value))
}

// MarshalYAML writes d as a string such as "5s".
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// Size is a number of bytes. In YAML it is a plain integer (1048576) or a
// whole number with a unit: B; KB, MB, GB, TB (powers of 1000); KiB, MiB,
// GiB, TiB (powers of 1024). Units are case-insensitive and may follow a
// space: "64KiB", "1 MiB", "2MB". Fractions ("1.5MiB") are errors.
type Size int64

var sizeUnits = []struct {
	name string
	mult int64
}{
	{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10},
	{"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3},
	{"B", 1},
}

const sizeHint = `must be a size like 1048576, "64KiB" or "1MiB" (units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)`

func parseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	i := 0
	if i < len(t) && (t[i] == '-' || t[i] == '+') {
		i++
	}
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	num, unit := t[:i], strings.TrimSpace(t[i:])
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil {
		if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
			return 0, fmt.Errorf("is out of range, got %s", quote(s))
		}
		return 0, fmt.Errorf("%s, got %s", sizeHint, quote(s))
	}
	mult := int64(1)
	if unit != "" {
		mult = 0
		for _, u := range sizeUnits {
			if strings.EqualFold(unit, u.name) {
				mult = u.mult
				break
			}
		}
		if mult == 0 {
			return 0, fmt.Errorf("%s, got %s", sizeHint, quote(s))
		}
	}
	if n > math.MaxInt64/mult || n < math.MinInt64/mult {
		return 0, fmt.Errorf("is out of range, got %s", quote(s))
	}
	return Size(n * mult), nil
}

// String formats s with the largest unit that divides it exactly,
// preferring binary units: "64MiB", "2MB", "1000B", "0B".
func (s Size) String() string {
	if s != 0 {
		for _, u := range sizeUnits {
			if int64(s)%u.mult == 0 {
				return strconv.FormatInt(int64(s)/u.mult, 10) + u.name
			}
		}
	}
	return strconv.FormatInt(int64(s), 10) + "B"
}

// UnmarshalText parses a size such as "64KiB" or "1048576".
func (s *Size) UnmarshalText(b []byte) error {
	v, err := parseSize(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// MarshalText formats s like String.
func (s Size) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalYAML reads a size from a YAML integer or string.
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("%s, got %s", sizeHint, describe(n))
	}
	if n.ShortTag() == "!!int" {
		// Covers YAML's other integer forms (0x100000, 0o777) too.
		var v int64
		if err := n.Decode(&v); err != nil {
			return fmt.Errorf("is out of range, got %s", quote(n.Value))
		}
		*s = Size(v)
		return nil
	}
	return s.UnmarshalText([]byte(n.Value))
}

// MarshalYAML writes s as a string such as "64MiB".
func (s Size) MarshalYAML() (any, error) { return s.String(), nil }

// describe names a node's value for a message: its quoted text if it is a
// scalar, else what kind of node it is.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return quote(n.Value)
	case yaml.AliasNode:
		return "an alias"
	}
	return "nothing"
}

// quote quotes s for a message, shortening long values.
func quote(s string) string {
	const max = 60
	if len(s) > max {
		r := []rune(s)
		if len(r) > max {
			s = string(r[:max]) + "…"
		}
	}
	return strconv.Quote(s)
}
