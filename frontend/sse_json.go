package frontend

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"math"
	"strconv"
	"time"
)

// errMsgpack is returned by appendJSON for bytes that are not one
// well-formed msgpack value.
var errMsgpack = errors.New("frontend: event body is not one msgpack value")

// maxJSONDepth bounds nesting, so a hostile body cannot exhaust the stack.
const maxJSONDepth = 64

// appendJSON appends the JSON rendering of the msgpack value in b to dst.
// It transcodes directly, without building Go values:
//
//	nil → null, bool, integers, floats (NaN and ±Inf → null),
//	str → string (invalid UTF-8 as U+FFFD), bin → base64 string,
//	array → array, map → object (a key that is not a str is rendered as
//	JSON and used as the key's text: 1 → "1"), timestamp ext → RFC 3339
//	string, other ext → null.
//
// An empty b renders as null. Anything after the first value, or a value
// that runs past the end, is errMsgpack.
func appendJSON(dst, b []byte) ([]byte, error) {
	if len(b) == 0 {
		return append(dst, "null"...), nil
	}
	t := transcoder{b: b, out: dst}
	t.value(0)
	if t.err == nil && t.p != len(b) {
		t.err = errMsgpack
	}
	if t.err != nil {
		return dst, t.err
	}
	return t.out, nil
}

type transcoder struct {
	b   []byte
	p   int
	out []byte
	err error
}

func (t *transcoder) fail() { t.err = errMsgpack }

func (t *transcoder) take(n int) []byte {
	if t.err != nil {
		return nil
	}
	if n < 0 || len(t.b)-t.p < n {
		t.fail()
		return nil
	}
	v := t.b[t.p : t.p+n]
	t.p += n
	return v
}

func (t *transcoder) u8() int {
	v := t.take(1)
	if v == nil {
		return 0
	}
	return int(v[0])
}

func (t *transcoder) u16() int {
	v := t.take(2)
	if v == nil {
		return 0
	}
	return int(binary.BigEndian.Uint16(v))
}

func (t *transcoder) u32() int {
	v := t.take(4)
	if v == nil {
		return 0
	}
	n := binary.BigEndian.Uint32(v)
	if uint64(n) > uint64(len(t.b)) {
		t.fail() // cannot fit: no need to look further
		return 0
	}
	return int(n)
}

func (t *transcoder) u64() uint64 {
	v := t.take(8)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

// count checks that n items of at least per bytes could fit in what is
// left, so that a forged length cannot make a loop run long.
func (t *transcoder) count(n, per int) int {
	if t.err == nil && n*per > len(t.b)-t.p {
		t.fail()
		return 0
	}
	return n
}

func (t *transcoder) value(depth int) {
	if depth > maxJSONDepth {
		t.fail()
		return
	}
	c := t.u8()
	if t.err != nil {
		return
	}
	switch {
	case c <= 0x7f:
		t.out = strconv.AppendInt(t.out, int64(c), 10)
	case c >= 0xe0:
		t.out = strconv.AppendInt(t.out, int64(int8(c)), 10)
	case c >= 0xa0 && c <= 0xbf:
		t.strN(c & 0x1f)
	case c >= 0x90 && c <= 0x9f:
		t.array(int(c&0x0f), depth)
	case c >= 0x80 && c <= 0x8f:
		t.object(int(c&0x0f), depth)
	default:
		t.other(c, depth)
	}
}

func (t *transcoder) other(c int, depth int) {
	switch c {
	case 0xc0:
		t.out = append(t.out, "null"...)
	case 0xc2:
		t.out = append(t.out, "false"...)
	case 0xc3:
		t.out = append(t.out, "true"...)
	case 0xcc:
		t.out = strconv.AppendUint(t.out, uint64(t.u8()), 10)
	case 0xcd:
		t.out = strconv.AppendUint(t.out, uint64(t.u16()), 10)
	case 0xce:
		v := t.take(4)
		if v != nil {
			t.out = strconv.AppendUint(t.out, uint64(binary.BigEndian.Uint32(v)), 10)
		}
	case 0xcf:
		t.out = strconv.AppendUint(t.out, t.u64(), 10)
	case 0xd0:
		t.out = strconv.AppendInt(t.out, int64(int8(t.u8())), 10)
	case 0xd1:
		t.out = strconv.AppendInt(t.out, int64(int16(t.u16())), 10)
	case 0xd2:
		v := t.take(4)
		if v != nil {
			t.out = strconv.AppendInt(t.out, int64(int32(binary.BigEndian.Uint32(v))), 10)
		}
	case 0xd3:
		t.out = strconv.AppendInt(t.out, int64(t.u64()), 10)
	case 0xca:
		v := t.take(4)
		if v != nil {
			t.float(float64(math.Float32frombits(binary.BigEndian.Uint32(v))), 32)
		}
	case 0xcb:
		t.float(math.Float64frombits(t.u64()), 64)
	case 0xd9:
		t.strN(t.u8())
	case 0xda:
		t.strN(t.u16())
	case 0xdb:
		t.strN(t.u32())
	case 0xc4:
		t.bin(t.u8())
	case 0xc5:
		t.bin(t.u16())
	case 0xc6:
		t.bin(t.u32())
	case 0xdc:
		t.array(t.u16(), depth)
	case 0xdd:
		t.array(t.u32(), depth)
	case 0xde:
		t.object(t.u16(), depth)
	case 0xdf:
		t.object(t.u32(), depth)
	case 0xd4:
		t.ext(1)
	case 0xd5:
		t.ext(2)
	case 0xd6:
		t.ext(4)
	case 0xd7:
		t.ext(8)
	case 0xd8:
		t.ext(16)
	case 0xc7:
		t.ext(t.u8())
	case 0xc8:
		t.ext(t.u16())
	case 0xc9:
		t.ext(t.u32())
	default: // 0xc1 is never used
		t.fail()
	}
}

func (t *transcoder) float(f float64, bits int) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		t.out = append(t.out, "null"...)
		return
	}
	t.out = strconv.AppendFloat(t.out, f, 'g', -1, bits)
}

func (t *transcoder) strN(n int) {
	if s := t.take(n); t.err == nil {
		t.out = appendJSONString(t.out, string(s))
	}
}

func (t *transcoder) bin(n int) {
	if s := t.take(n); t.err == nil {
		t.out = append(t.out, '"')
		t.out = base64.StdEncoding.AppendEncode(t.out, s)
		t.out = append(t.out, '"')
	}
}

func (t *transcoder) array(n, depth int) {
	n = t.count(n, 1)
	t.out = append(t.out, '[')
	for i := 0; i < n && t.err == nil; i++ {
		if i > 0 {
			t.out = append(t.out, ',')
		}
		t.value(depth + 1)
	}
	t.out = append(t.out, ']')
}

func (t *transcoder) object(n, depth int) {
	n = t.count(n, 2)
	t.out = append(t.out, '{')
	for i := 0; i < n && t.err == nil; i++ {
		if i > 0 {
			t.out = append(t.out, ',')
		}
		t.key(depth + 1)
		t.out = append(t.out, ':')
		t.value(depth + 1)
	}
	t.out = append(t.out, '}')
}

// key renders a map key: a str as itself, anything else as the text of
// its JSON rendering.
func (t *transcoder) key(depth int) {
	if t.err != nil || t.p >= len(t.b) {
		t.fail()
		return
	}
	if c := t.b[t.p]; c >= 0xa0 && c <= 0xbf || c == 0xd9 || c == 0xda || c == 0xdb {
		t.value(depth)
		return
	}
	mark := len(t.out)
	t.value(depth)
	if t.err != nil {
		return
	}
	text := string(t.out[mark:])
	t.out = appendJSONString(t.out[:mark], text)
}

// ext renders the msgpack timestamp extension (type -1) as an RFC 3339
// string and any other extension as null.
func (t *transcoder) ext(n int) {
	typ := t.u8()
	data := t.take(n)
	if t.err != nil {
		return
	}
	if int8(typ) != -1 {
		t.out = append(t.out, "null"...)
		return
	}
	var ts time.Time
	switch len(data) {
	case 4:
		ts = time.Unix(int64(binary.BigEndian.Uint32(data)), 0)
	case 8:
		v := binary.BigEndian.Uint64(data)
		ts = time.Unix(int64(v&(1<<34-1)), int64(v>>34))
	case 12:
		ts = time.Unix(int64(binary.BigEndian.Uint64(data[4:])), int64(binary.BigEndian.Uint32(data[:4])))
	default:
		t.out = append(t.out, "null"...)
		return
	}
	t.out = append(t.out, '"')
	t.out = ts.UTC().AppendFormat(t.out, time.RFC3339Nano)
	t.out = append(t.out, '"')
}
