package wire

import (
	"errors"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

// Event commands. Requests travel client → broker → worker and back;
// events travel publisher → broker → every subscriber whose topic prefix
// matches, at most once (docs/protocol.md §19).
//
//	publisher DEALER ──EVENT──► ROUTER events_in  ┐
//	                                               broker forwarder
//	subscriber DEALER ◄─EVENT── ROUTER events_out ┘
//	           SUBSCRIBE, UNSUBSCRIBE, CREDIT ──►
const (
	CmdSubscribe   Command = 0x06 // subscriber → broker: topic prefixes to add, 0 to 1024 frames of raw UTF-8
	CmdUnsubscribe Command = 0x07 // subscriber → broker: topic prefixes to remove, 1 to 1024 frames
	CmdEvent       Command = 0x08 // publisher → broker → subscriber: one or more Event envelopes
	CmdCredit      Command = 0x09 // subscriber → broker: one msgpack uint, bytes of EVENT bodies taken in
)

// MaxTopic is the longest topic or topic prefix, in bytes.
const MaxTopic = 255

// maxEventID is the longest event id, in bytes.
const maxEventID = 128

// Event is the envelope of an EVENT body frame: something that happened,
// under a dot-separated topic such as "employee.created" or "task.42.done".
type Event struct {
	ID    string // "id"    unique per publisher; 1-128 printable ASCII (the SSE id)
	Topic string // "topic" dot-separated segments, see ValidTopic
	Body  []byte // "body"  msgpack encoding of the value; empty means nil
	Time  int64  // "ts"    unix microseconds when it was published
	RID   string // "rid"   request id of the request that caused it, if any
	Trace []Hop  // "tr"    hops of the request that caused it, the publisher's last
}

// ErrTopic is returned for an invalid topic or topic prefix.
var ErrTopic = errors.New("wire: invalid topic (1-255 bytes: segments of A-Z a-z 0-9 _ - : separated by single dots)")

// ValidTopic reports whether t is a usable topic: 1 to 255 bytes of
// non-empty segments separated by '.', each made of ASCII letters, digits,
// '_', '-' and ':'. "task.42.done" is one; "task..done", ".a" and "a b"
// are not.
func ValidTopic(t string) bool { return validTopic(t) }

// ValidTopicPrefix reports whether p can be subscribed to: "" (every
// topic) or a valid topic.
func ValidTopicPrefix(p string) bool { return p == "" || validTopic(p) }

func validTopic[S ~string | ~[]byte](t S) bool {
	if len(t) == 0 || len(t) > MaxTopic {
		return false
	}
	seg := 0
	for i := 0; i < len(t); i++ {
		switch c := t[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-', c == ':':
			seg++
		case c == '.':
			if seg == 0 {
				return false
			}
			seg = 0
		default:
			return false
		}
	}
	return seg > 0
}

// TopicMatch reports whether a subscription to prefix receives topic.
// Matching is by whole segments: "task" and "task.42" match "task.42.done",
// "task.4" does not; "" matches every topic.
func TopicMatch(prefix, topic string) bool {
	if prefix == "" || prefix == topic {
		return true
	}
	return len(topic) > len(prefix) && topic[len(prefix)] == '.' && topic[:len(prefix)] == prefix
}

// TopicPrefixes calls fn with every prefix that matches topic, shortest
// first: "", "a", "a.b", "a.b.c" for "a.b.c". It stops when fn returns
// false. The prefixes alias topic.
func TopicPrefixes[S ~string | ~[]byte](topic S, fn func(prefix S) bool) {
	if !fn(topic[:0]) {
		return
	}
	for i := 0; i < len(topic); i++ {
		if topic[i] == '.' && !fn(topic[:i]) {
			return
		}
	}
	if len(topic) > 0 {
		fn(topic)
	}
}

// checkEventBody checks the body frame count of the event commands; it is
// Parse's answer for every command byte above DISCONNECT.
func checkEventBody(cmd Command, n int) error {
	switch cmd {
	case CmdSubscribe:
	case CmdUnsubscribe, CmdEvent:
		if n == 0 {
			return ErrBody
		}
	case CmdCredit:
		if n != 1 {
			return ErrBody
		}
		return nil
	default:
		return ErrCommand
	}
	if n > MaxBatch {
		return ErrTooLarge
	}
	return nil
}

func eventCmdString(c Command) string {
	switch c {
	case CmdSubscribe:
		return "SUBSCRIBE"
	case CmdUnsubscribe:
		return "UNSUBSCRIBE"
	case CmdEvent:
		return "EVENT"
	case CmdCredit:
		return "CREDIT"
	}
	return fmt.Sprintf("Command(0x%02x)", byte(c))
}

// AppendCredit appends the body of a CREDIT message granting n bytes.
func AppendCredit(dst []byte, n uint64) []byte {
	return AppendMsgpack(dst, func(e *msgpack.Encoder) error { return e.EncodeUint(n) })
}

// ParseCredit reads the body of a CREDIT message.
func ParseCredit(b []byte) (uint64, error) {
	s := scanner{b: b}
	n := s.uint()
	if s.err == nil && s.p != len(b) {
		s.fail()
	}
	if s.err != nil {
		return 0, fmt.Errorf("%w: credit is not one msgpack unsigned integer", ErrEnvelope)
	}
	return n, nil
}

// AppendMsgpack appends the event's msgpack encoding to dst.
func (ev *Event) AppendMsgpack(dst []byte) []byte { return AppendMsgpack(dst, ev.EncodeMsgpack) }

// EncodeMsgpack implements msgpack.CustomEncoder. id and topic are always
// present; empty optional fields are left out.
func (ev *Event) EncodeMsgpack(e *msgpack.Encoder) error {
	f := fieldWriter{e: e}
	f.ok(e.EncodeMapLen(2 + count(len(ev.Body) > 0, ev.Time != 0, ev.RID != "", len(ev.Trace) > 0)))
	f.str("id", ev.ID)
	f.str("topic", ev.Topic)
	if len(ev.Body) > 0 {
		f.bin("body", ev.Body)
	}
	if ev.Time != 0 {
		f.int("ts", ev.Time)
	}
	if ev.RID != "" {
		f.str("rid", ev.RID)
	}
	if len(ev.Trace) > 0 {
		f.hops("tr", ev.Trace)
	}
	return f.err
}

// UnmarshalMsgpack decodes an EVENT body frame into ev and checks its id
// and topic. Body aliases nothing in b.
func (ev *Event) UnmarshalMsgpack(b []byte) error {
	*ev = Event{}
	return decodeWith(b, "event", ev.DecodeMsgpack)
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (ev *Event) DecodeMsgpack(d *msgpack.Decoder) error {
	err := eachKey(d, func(k []byte) (err error) {
		switch string(k) {
		case "id":
			ev.ID, err = d.DecodeString()
		case "topic":
			ev.Topic, err = d.DecodeString()
		case "body":
			ev.Body, err = d.DecodeBytes()
		case "ts":
			ev.Time, err = d.DecodeInt64()
		case "rid":
			ev.RID, err = d.DecodeString()
		case "tr":
			ev.Trace, err = DecodeHops(d)
		default:
			return errSkip
		}
		return err
	})
	if err != nil {
		return err
	}
	if !validTopic(ev.Topic) {
		return fmt.Errorf("topic %q: %w", ev.Topic, ErrTopic)
	}
	if !validEventID(ev.ID) {
		return fmt.Errorf("id %q: 1-%d printable ASCII characters expected", ev.ID, maxEventID)
	}
	return nil
}

func validEventID[S ~string | ~[]byte](id S) bool {
	if len(id) == 0 || len(id) > maxEventID {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x20 || id[i] > 0x7e {
			return false
		}
	}
	return true
}

// PeekEvent reads the topic of an event envelope in place, without
// allocating, for the broker's forwarder. Like PeekRequest it checks that
// the frame is one well-formed msgpack map with nothing after it; it also
// checks that the id and topic are present and valid, so that what the
// broker forwards has both. topic aliases b.
func PeekEvent(b []byte) (topic []byte, err error) {
	s := scanner{b: b}
	n := s.mapLen()
	var id []byte
	hasID, hasTopic := false, false
	for i := 0; i < n && s.err == nil; i++ {
		switch string(s.str()) {
		case "id":
			id, hasID = s.str(), true
		case "topic":
			topic, hasTopic = s.str(), true
		default:
			s.skip(0)
		}
	}
	if s.err == nil && s.p != len(b) {
		s.fail()
	}
	if s.err != nil || !hasID || !hasTopic {
		return nil, ErrPeek
	}
	if !validTopic(topic) {
		return nil, ErrTopic
	}
	if !validEventID(id) {
		return nil, ErrPeek
	}
	return topic, nil
}
