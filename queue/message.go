package queue

import (
	"bytes"
	"errors"
	"fmt"
	"sync"

	"github.com/shoal-dev/shoal/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// message is the immutable part of a task, stored msgpack-encoded in the
// "m" field of its hash. Keys on the wire are short; unknown keys are
// skipped so that newer enqueuers can add fields.
type message struct {
	Type       string     // "t"
	Payload    []byte     // "p"  msgpack, as the enqueuer encoded it
	Queue      string     // "q"
	MaxRetries int        // "mr"
	Timeout    int64      // "to" milliseconds per run
	Enqueued   int64      // "at" unix milliseconds, enqueuer's clock
	ProcessAt  int64      // "pa" unix milliseconds; 0 = when enqueued
	Unique     string     // "uk" uniqueness key as given
	Idem       string     // "ik" idempotency key as given
	Retention  int64      // "ret" milliseconds a done task is kept
	RID        string     // "rid" request id of the request that enqueued it
	Trace      []wire.Hop // "tr" hops up to the enqueue
}

// appendMsgpack appends m's encoding to dst.
func (m *message) appendMsgpack(dst []byte) []byte {
	return wire.AppendMsgpack(dst, func(e *msgpack.Encoder) error { m.encode(e); return nil })
}

func (m *message) encode(e *msgpack.Encoder) {
	n := 6
	for _, set := range []bool{m.ProcessAt != 0, m.Unique != "", m.Idem != "", m.Retention != 0, m.RID != "", len(m.Trace) > 0} {
		if set {
			n++
		}
	}
	e.EncodeMapLen(n)
	str := func(k, v string) { e.EncodeString(k); e.EncodeString(v) }
	num := func(k string, v int64) { e.EncodeString(k); e.EncodeInt(v) }
	str("t", m.Type)
	e.EncodeString("p")
	e.EncodeBytes(m.Payload)
	str("q", m.Queue)
	num("mr", int64(m.MaxRetries))
	num("to", m.Timeout)
	num("at", m.Enqueued)
	if m.ProcessAt != 0 {
		num("pa", m.ProcessAt)
	}
	if m.Unique != "" {
		str("uk", m.Unique)
	}
	if m.Idem != "" {
		str("ik", m.Idem)
	}
	if m.Retention != 0 {
		num("ret", m.Retention)
	}
	if m.RID != "" {
		str("rid", m.RID)
	}
	if len(m.Trace) > 0 {
		e.EncodeString("tr")
		wire.EncodeHops(e, m.Trace)
	}
}

type decoder struct {
	r   bytes.Reader
	dec *msgpack.Decoder
}

var decoders = sync.Pool{New: func() any {
	d := &decoder{}
	d.dec = msgpack.NewDecoder(&d.r)
	return d
}}

// errMessage wraps every decoding error of a stored message.
var errMessage = errors.New("queue: corrupt task message")

// decodeMessage decodes a stored message. Strings and the payload are
// copies: b may be reused.
func decodeMessage(b []byte) (m message, err error) {
	d := decoders.Get().(*decoder)
	d.r.Reset(b)
	d.dec.ResetReader(&d.r)
	err = m.decode(d.dec)
	if err == nil && d.r.Len() != 0 {
		err = fmt.Errorf("%d trailing bytes", d.r.Len())
	}
	d.r.Reset(nil)
	decoders.Put(d)
	if err != nil {
		return message{}, fmt.Errorf("%w: %v", errMessage, err)
	}
	return m, nil
}

func (m *message) decode(d *msgpack.Decoder) error {
	n, err := d.DecodeMapLen()
	if err != nil {
		return err
	}
	if n < 0 {
		return errors.New("map expected, got nil")
	}
	for range n {
		k, err := d.DecodeString()
		if err != nil {
			return err
		}
		switch k {
		case "t":
			m.Type, err = d.DecodeString()
		case "p":
			m.Payload, err = d.DecodeBytes()
		case "q":
			m.Queue, err = d.DecodeString()
		case "mr":
			var v int64
			v, err = d.DecodeInt64()
			if err == nil && (v < 0 || v > 1<<31-1) {
				err = fmt.Errorf("max retries %d out of range", v)
			}
			m.MaxRetries = int(v)
		case "to":
			m.Timeout, err = d.DecodeInt64()
		case "at":
			m.Enqueued, err = d.DecodeInt64()
		case "pa":
			m.ProcessAt, err = d.DecodeInt64()
		case "uk":
			m.Unique, err = d.DecodeString()
		case "ik":
			m.Idem, err = d.DecodeString()
		case "ret":
			m.Retention, err = d.DecodeInt64()
		case "rid":
			m.RID, err = d.DecodeString()
		case "tr":
			m.Trace, err = wire.DecodeHops(d)
		default:
			err = d.Skip()
		}
		if err != nil {
			return fmt.Errorf("field %q: %w", k, err)
		}
	}
	if m.Type == "" {
		return errors.New("no task type")
	}
	return nil
}
