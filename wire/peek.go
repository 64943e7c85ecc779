package wire

import (
	"encoding/binary"
	"errors"
	"math"
)

// Route is what the broker needs to route a request, read in place from its
// envelope. Service aliases the envelope bytes.
type Route struct {
	ID          uint64
	Service     []byte
	Deadline    int64
	Attempt     int
	MaxAttempts int
	attOff      int // offset of the attempt's one-byte fixint, or -1
}

// ErrPeek is returned for envelopes PeekRequest or PeekReplyID cannot read.
var ErrPeek = errors.New("wire: malformed envelope")

// maxDepth bounds nesting when skipping values, so a hostile envelope of
// nested arrays cannot exhaust the stack.
const maxDepth = 32

// PeekRequest reads id, svc, dl, att and max from a request envelope
// without decoding the rest and without allocating. It checks that the whole
// frame is one well-formed msgpack map with nothing after it.
func PeekRequest(b []byte) (Route, error) {
	rt := Route{attOff: -1}
	var hasID, hasSvc bool
	s := scanner{b: b}
	n := s.mapLen()
	for i := 0; i < n && s.err == nil; i++ {
		k := s.str()
		switch string(k) {
		case "id":
			rt.ID, hasID = s.uint(), true
		case "svc":
			rt.Service, hasSvc = s.str(), true
		case "dl":
			rt.Deadline = s.int()
		case "att":
			if s.p < len(b) && b[s.p] <= 0x7f {
				rt.attOff = s.p
			}
			rt.Attempt = s.smallInt()
		case "max":
			rt.MaxAttempts = s.smallInt()
		default:
			s.skip(0)
		}
	}
	if s.err == nil && s.p != len(b) {
		s.fail()
	}
	if s.err != nil {
		return Route{}, s.err
	}
	if !hasID || !hasSvc {
		return Route{}, ErrPeek
	}
	return rt, nil
}

// PeekReplyID reads the id of a reply envelope without decoding the rest.
func PeekReplyID(b []byte) (uint64, error) {
	s := scanner{b: b}
	n := s.mapLen()
	var id uint64
	found := false
	for i := 0; i < n && s.err == nil; i++ {
		if string(s.str()) == "id" {
			id, found = s.uint(), true
		} else {
			s.skip(0)
		}
	}
	if s.err == nil && s.p != len(b) {
		s.fail()
	}
	if s.err != nil {
		return 0, s.err
	}
	if !found {
		return 0, ErrPeek
	}
	return id, nil
}

// SetAttempt returns env with its attempt set to n. When the attempt was
// written as a one-byte fixint (as AppendMsgpack writes it) and n fits, env
// is changed in place; otherwise the envelope is decoded and re-encoded.
func SetAttempt(env []byte, rt Route, n int) ([]byte, error) {
	if rt.attOff >= 0 && n >= 0 && n <= 0x7f {
		env[rt.attOff] = byte(n)
		return env, nil
	}
	var r Request
	if err := r.UnmarshalMsgpack(env); err != nil {
		return nil, err
	}
	r.Attempt = n
	return r.AppendMsgpack(nil), nil
}

// scanner reads msgpack in place. The first error sticks; later reads
// return zero values.
type scanner struct {
	b   []byte
	p   int
	err error
}

func (s *scanner) fail() { s.err = ErrPeek }

func (s *scanner) need(n int) bool {
	if s.err != nil {
		return false
	}
	if n < 0 || len(s.b)-s.p < n {
		s.fail()
		return false
	}
	return true
}

func (s *scanner) byte() byte {
	if !s.need(1) {
		return 0
	}
	c := s.b[s.p]
	s.p++
	return c
}

func (s *scanner) bytes(n int) []byte {
	if !s.need(n) {
		return nil
	}
	v := s.b[s.p : s.p+n : s.p+n]
	s.p += n
	return v
}

func (s *scanner) u16() int    { return int(binary.BigEndian.Uint16(s.fixed(2))) }
func (s *scanner) u32() uint32 { return binary.BigEndian.Uint32(s.fixed(4)) }

func (s *scanner) fixed(n int) []byte {
	if !s.need(n) {
		return make([]byte, n) // zeros for the converters; err is set
	}
	return s.bytes(n)
}

func (s *scanner) mapLen() int {
	c := s.byte()
	switch {
	case c >= 0x80 && c <= 0x8f:
		return int(c & 0x0f)
	case c == 0xde:
		return int(binary.BigEndian.Uint16(s.fixed(2)))
	case c == 0xdf:
		return s.count(binary.BigEndian.Uint32(s.fixed(4)), 2)
	}
	s.fail()
	return 0
}

// count checks that n entries of at least per bytes each could fit in what
// is left, so a forged length cannot make a loop run for long.
func (s *scanner) count(n uint32, per int) int {
	if s.err != nil || uint64(n)*uint64(per) > uint64(len(s.b)-s.p) {
		s.fail()
		return 0
	}
	return int(n)
}

func (s *scanner) str() []byte {
	c := s.byte()
	switch {
	case c >= 0xa0 && c <= 0xbf:
		return s.bytes(int(c & 0x1f))
	case c == 0xd9, c == 0xc4:
		return s.bytes(int(s.byte()))
	case c == 0xda, c == 0xc5:
		return s.bytes(int(binary.BigEndian.Uint16(s.fixed(2))))
	case c == 0xdb, c == 0xc6:
		n := binary.BigEndian.Uint32(s.fixed(4))
		if uint64(n) > uint64(len(s.b)) {
			s.fail()
			return nil
		}
		return s.bytes(int(n))
	}
	s.fail()
	return nil
}

// integer reads any msgpack integer as a signed value, whether it was
// negative, and (when not negative) its unsigned value.
func (s *scanner) integer() (v int64, neg bool, u uint64) {
	c := s.byte()
	switch {
	case c <= 0x7f:
		return int64(c), false, uint64(c)
	case c >= 0xe0:
		return int64(int8(c)), true, 0
	case c == 0xcc:
		x := uint64(s.byte())
		return int64(x), false, x
	case c == 0xcd:
		x := uint64(binary.BigEndian.Uint16(s.fixed(2)))
		return int64(x), false, x
	case c == 0xce:
		x := uint64(binary.BigEndian.Uint32(s.fixed(4)))
		return int64(x), false, x
	case c == 0xcf:
		x := binary.BigEndian.Uint64(s.fixed(8))
		if x > math.MaxInt64 {
			return math.MaxInt64, false, x
		}
		return int64(x), false, x
	case c == 0xd0:
		x := int64(int8(s.byte()))
		return x, x < 0, uint64(max(x, 0))
	case c == 0xd1:
		x := int64(int16(binary.BigEndian.Uint16(s.fixed(2))))
		return x, x < 0, uint64(max(x, 0))
	case c == 0xd2:
		x := int64(int32(binary.BigEndian.Uint32(s.fixed(4))))
		return x, x < 0, uint64(max(x, 0))
	case c == 0xd3:
		x := int64(binary.BigEndian.Uint64(s.fixed(8)))
		return x, x < 0, uint64(max(x, 0))
	}
	s.fail()
	return 0, false, 0
}

func (s *scanner) uint() uint64 {
	_, neg, u := s.integer()
	if neg {
		s.fail()
	}
	return u
}

func (s *scanner) int() int64 {
	v, _, _ := s.integer()
	return v
}

// smallInt reads an integer that must lie in 0..255 (attempt counts).
func (s *scanner) smallInt() int {
	v, _, _ := s.integer()
	if v < 0 || v > 255 {
		s.fail()
		return 0
	}
	return int(v)
}

// skip steps over one value of any type.
func (s *scanner) skip(depth int) {
	if depth > maxDepth {
		s.fail()
		return
	}
	c := s.byte()
	if s.err != nil {
		return
	}
	switch {
	case c <= 0x7f, c >= 0xe0, c == 0xc0, c == 0xc2, c == 0xc3:
	case c >= 0xa0 && c <= 0xbf:
		s.bytes(int(c & 0x1f))
	case c >= 0x80 && c <= 0x8f:
		s.skipN(int(c&0x0f)*2, depth)
	case c >= 0x90 && c <= 0x9f:
		s.skipN(int(c&0x0f), depth)
	case c == 0xcc, c == 0xd0:
		s.bytes(1)
	case c == 0xcd, c == 0xd1:
		s.bytes(2)
	case c == 0xce, c == 0xd2, c == 0xca:
		s.bytes(4)
	case c == 0xcf, c == 0xd3, c == 0xcb:
		s.bytes(8)
	case c == 0xd9, c == 0xc4:
		s.bytes(int(s.byte()))
	case c == 0xda, c == 0xc5:
		s.bytes(s.u16())
	case c == 0xdb, c == 0xc6:
		s.bytes(s.count(s.u32(), 1))
	case c == 0xdc:
		s.skipN(s.count(uint32(s.u16()), 1), depth)
	case c == 0xdd:
		s.skipN(s.count(s.u32(), 1), depth)
	case c == 0xde:
		s.skipN(s.count(uint32(s.u16()), 2)*2, depth)
	case c == 0xdf:
		s.skipN(s.count(s.u32(), 2)*2, depth)
	case c == 0xd4:
		s.bytes(2)
	case c == 0xd5:
		s.bytes(3)
	case c == 0xd6:
		s.bytes(5)
	case c == 0xd7:
		s.bytes(9)
	case c == 0xd8:
		s.bytes(17)
	case c == 0xc7:
		s.bytes(int(s.byte()) + 1)
	case c == 0xc8:
		s.bytes(s.u16() + 1)
	case c == 0xc9:
		s.bytes(s.count(s.u32(), 1) + 1)
	default: // 0xc1 is never used
		s.fail()
	}
}

func (s *scanner) skipN(n, depth int) {
	for i := 0; i < n && s.err == nil; i++ {
		s.skip(depth + 1)
	}
}
