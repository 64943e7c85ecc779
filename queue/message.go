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

// Bounds on what a message may hold, so that a corrupt or hostile hash
// cannot make a consumer allocate without limit.
const (
	maxHops = 64
	maxTags = 64
)

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
		e.EncodeArrayLen(len(m.Trace))
		for i := range m.Trace {
			h := &m.Trace[i]
			hn := 4
			if len(h.Tags) > 0 {
				hn++
			}
			e.EncodeMapLen(hn)
			str("svc", h.Service)
			str("proc", h.Process)
			num("start", h.Start)
			num("dur", h.Dur)
			if len(h.Tags) > 0 {
				e.EncodeString("tags")
				e.EncodeMapLen(len(h.Tags))
				for _, kv := range h.Tags {
					e.EncodeString(kv.Key)
					e.EncodeString(kv.Value)
				}
			}
		}
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
			m.Trace, err = decodeHops(d)
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

func decodeHops(d *msgpack.Decoder) ([]wire.Hop, error) {
	n, err := d.DecodeArrayLen()
	if err != nil || n <= 0 {
		return nil, err
	}
	if n > maxHops {
		return nil, fmt.Errorf("%d hops, at most %d", n, maxHops)
	}
	hops := make([]wire.Hop, n)
	for i := range hops {
		h := &hops[i]
		fields, err := d.DecodeMapLen()
		if err != nil {
			return nil, err
		}
		for range fields {
			k, err := d.DecodeString()
			if err != nil {
				return nil, err
			}
			switch k {
			case "svc":
				h.Service, err = d.DecodeString()
			case "proc":
				h.Process, err = d.DecodeString()
			case "start":
				h.Start, err = d.DecodeInt64()
			case "dur":
				h.Dur, err = d.DecodeInt64()
			case "tags":
				h.Tags, err = decodeKVs(d)
			default:
				err = d.Skip()
			}
			if err != nil {
				return nil, err
			}
		}
	}
	return hops, nil
}

func decodeKVs(d *msgpack.Decoder) ([]wire.KV, error) {
	n, err := d.DecodeMapLen()
	if err != nil || n <= 0 {
		return nil, err
	}
	if n > maxTags {
		return nil, fmt.Errorf("%d tags, at most %d", n, maxTags)
	}
	kvs := make([]wire.KV, n)
	for i := range kvs {
		if kvs[i].Key, err = d.DecodeString(); err != nil {
			return nil, err
		}
		if kvs[i].Value, err = d.DecodeString(); err != nil {
			return nil, err
		}
	}
	return kvs, nil
}
