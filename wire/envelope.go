package wire

import (
	"bytes"
	"errors"
	"fmt"
	"sync"

	"github.com/vmihailenco/msgpack/v5"
)

// KV is one header or parameter. Order is kept; keys may repeat.
type KV struct {
	Key, Value string
}

// Hop is one step of a request's trace: which service in which process
// handled it, when, and for how long. Each worker appends its hop to the
// reply, and carries the request's hops into the calls it makes.
type Hop struct {
	Service string // service name
	Process string // "host/pid" of the process that handled it
	Start   int64  // unix microseconds when handling started
	Dur     int64  // microseconds spent
	Tags    []KV   // free-form annotations
}

// Request is the envelope of a REQUEST body frame. Field keys on the wire
// are the short strings in the comments; unknown keys are skipped so that
// newer peers can add fields.
type Request struct {
	ID          uint64 // "id"   correlation id, unique among the sender's outstanding requests
	RID         string // "rid"  request id for logs and X-Request-Id
	Service     string // "svc"  service name; the broker routes by it
	Method      string // "mth"  method within the service
	Verb        string // "verb" HTTP method of the original request, if any
	Path        string // "path" HTTP path of the original request, if any
	Query       string // "qry"  raw query string, without '?'
	Params      []KV   // "prm"  path parameters
	Headers     []KV   // "hdr"  selected request headers
	Body        []byte // "body"
	Deadline    int64  // "dl"   unix milliseconds after which nobody waits; 0 = broker default
	Attempt     int    // "att"  1 on first dispatch, raised by the broker on re-dispatch
	MaxAttempts int    // "max"  dispatches allowed in all; 1 = never re-dispatch (not idempotent)
	Trace       []Hop  // "tr"   hops so far
}

// Reply is the envelope of a REPLY body frame.
type Reply struct {
	ID      uint64 // "id"   the Request.ID it answers
	Status  int    // "st"   HTTP-like status chosen by the handler (200 if 0)
	Code    Code   // "code" error code; "" for success
	Error   string // "err"  human-readable error
	Headers []KV   // "hdr"  response headers
	Body    []byte // "body"
	Trace   []Hop  // "tr"   the request's hops plus the handler's
}

// Ready is the body of READY: what a worker offers.
type Ready struct {
	Services  []string // "svc"    services served
	Credit    int      // "credit" requests it may hold at once (>= 1)
	Heartbeat int      // "hb"     its heartbeat interval in milliseconds (0 = broker default)
	Name      string   // "name"   human-readable, e.g. "echo:1"
	Process   string   // "proc"   "host/pid"
}

// Get returns the value of the first KV with key k (case-sensitive).
func Get(kvs []KV, k string) string {
	for _, kv := range kvs {
		if kv.Key == k {
			return kv.Value
		}
	}
	return ""
}

// ErrEnvelope wraps every decoding failure of an envelope.
var ErrEnvelope = errors.New("wire: malformed envelope")

// Limits that keep a hostile envelope from costing more than its bytes.
const (
	maxKVs  = 256
	maxHops = 64
)

func envErr(what string, err error) error {
	return fmt.Errorf("%w: %s: %v", ErrEnvelope, what, err)
}

// ---- encoding ----

type bufWriter struct{ b []byte }

func (w *bufWriter) Write(p []byte) (int, error) { w.b = append(w.b, p...); return len(p), nil }
func (w *bufWriter) WriteByte(c byte) error      { w.b = append(w.b, c); return nil }

type encoder struct {
	w   bufWriter
	enc *msgpack.Encoder
}

var encoders = sync.Pool{New: func() any {
	e := &encoder{}
	e.enc = msgpack.NewEncoder(&e.w)
	return e
}}

// AppendMsgpack runs encode with a pooled msgpack encoder writing to the
// end of dst, and returns the extended slice. Writes to memory cannot fail,
// so encode's error is only the encoder's own complaint and is dropped.
// Envelopes use it, and so can other packages' msgpack records (the queue's
// task messages) without a pool of their own.
func AppendMsgpack(dst []byte, encode func(*msgpack.Encoder) error) []byte {
	e := encoders.Get().(*encoder)
	e.w.b = dst
	_ = encode(e.enc)
	dst = e.w.b
	e.w.b = nil
	encoders.Put(e)
	return dst
}

// AppendMsgpack appends the request's msgpack encoding to dst.
func (r *Request) AppendMsgpack(dst []byte) []byte { return AppendMsgpack(dst, r.EncodeMsgpack) }

// AppendMsgpack appends the reply's msgpack encoding to dst.
func (r *Reply) AppendMsgpack(dst []byte) []byte { return AppendMsgpack(dst, r.EncodeMsgpack) }

// AppendMsgpack appends the READY body's msgpack encoding to dst.
func (r *Ready) AppendMsgpack(dst []byte) []byte { return AppendMsgpack(dst, r.EncodeMsgpack) }

type fieldWriter struct {
	e   *msgpack.Encoder
	err error
}

func (f *fieldWriter) key(k string) { f.ok(f.e.EncodeString(k)) }
func (f *fieldWriter) ok(err error) {
	if f.err == nil {
		f.err = err
	}
}
func (f *fieldWriter) str(k, v string) { f.key(k); f.ok(f.e.EncodeString(v)) }
func (f *fieldWriter) uint(k string, v uint64) {
	f.key(k)
	f.ok(f.e.EncodeUint(v))
}
func (f *fieldWriter) int(k string, v int64) { f.key(k); f.ok(f.e.EncodeInt(v)) }
func (f *fieldWriter) bin(k string, v []byte) {
	f.key(k)
	f.ok(f.e.EncodeBytes(v))
}
func (f *fieldWriter) kvs(k string, kvs []KV) {
	f.key(k)
	f.ok(f.e.EncodeMapLen(len(kvs)))
	for _, kv := range kvs {
		f.ok(f.e.EncodeString(kv.Key))
		f.ok(f.e.EncodeString(kv.Value))
	}
}
func (f *fieldWriter) hops(k string, hops []Hop) {
	f.key(k)
	f.ok(EncodeHops(f.e, hops))
}

// EncodeHops writes a trace as the envelopes carry it ("tr"): an array of
// maps with keys svc, proc, start, dur and, when set, tags. Other msgpack
// records that carry a trace (the task queue's) use it and DecodeHops.
func EncodeHops(e *msgpack.Encoder, hops []Hop) error {
	f := fieldWriter{e: e}
	f.ok(e.EncodeArrayLen(len(hops)))
	for i := range hops {
		h := &hops[i]
		n := 4
		if len(h.Tags) > 0 {
			n++
		}
		f.ok(e.EncodeMapLen(n))
		f.str("svc", h.Service)
		f.str("proc", h.Process)
		f.int("start", h.Start)
		f.int("dur", h.Dur)
		if len(h.Tags) > 0 {
			f.kvs("tags", h.Tags)
		}
	}
	return f.err
}

// count returns how many of the flags are true.
func count(flags ...bool) int {
	n := 0
	for _, f := range flags {
		if f {
			n++
		}
	}
	return n
}

// EncodeMsgpack implements msgpack.CustomEncoder. Empty optional fields are
// left out; id, svc and att are always present.
func (r *Request) EncodeMsgpack(e *msgpack.Encoder) error {
	f := fieldWriter{e: e}
	f.ok(e.EncodeMapLen(3 + count(r.RID != "", r.Method != "", r.Verb != "", r.Path != "",
		r.Query != "", len(r.Params) > 0, len(r.Headers) > 0, len(r.Body) > 0,
		r.Deadline != 0, r.MaxAttempts != 0, len(r.Trace) > 0)))
	f.uint("id", r.ID)
	f.str("svc", r.Service)
	// att is written as a one-byte positive fixint whenever it fits, which
	// lets the broker raise it in place on re-dispatch (see SetAttempt).
	f.int("att", int64(r.Attempt))
	if r.RID != "" {
		f.str("rid", r.RID)
	}
	if r.Method != "" {
		f.str("mth", r.Method)
	}
	if r.Verb != "" {
		f.str("verb", r.Verb)
	}
	if r.Path != "" {
		f.str("path", r.Path)
	}
	if r.Query != "" {
		f.str("qry", r.Query)
	}
	if len(r.Params) > 0 {
		f.kvs("prm", r.Params)
	}
	if len(r.Headers) > 0 {
		f.kvs("hdr", r.Headers)
	}
	if len(r.Body) > 0 {
		f.bin("body", r.Body)
	}
	if r.Deadline != 0 {
		f.int("dl", r.Deadline)
	}
	if r.MaxAttempts != 0 {
		f.int("max", int64(r.MaxAttempts))
	}
	if len(r.Trace) > 0 {
		f.hops("tr", r.Trace)
	}
	return f.err
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (r *Reply) EncodeMsgpack(e *msgpack.Encoder) error {
	f := fieldWriter{e: e}
	f.ok(e.EncodeMapLen(2 + count(r.Code != "", r.Error != "", len(r.Headers) > 0,
		len(r.Body) > 0, len(r.Trace) > 0)))
	f.uint("id", r.ID)
	f.int("st", int64(r.Status))
	if r.Code != "" {
		f.str("code", string(r.Code))
	}
	if r.Error != "" {
		f.str("err", r.Error)
	}
	if len(r.Headers) > 0 {
		f.kvs("hdr", r.Headers)
	}
	if len(r.Body) > 0 {
		f.bin("body", r.Body)
	}
	if len(r.Trace) > 0 {
		f.hops("tr", r.Trace)
	}
	return f.err
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (r *Ready) EncodeMsgpack(e *msgpack.Encoder) error {
	f := fieldWriter{e: e}
	f.ok(e.EncodeMapLen(5))
	f.key("svc")
	f.ok(e.EncodeArrayLen(len(r.Services)))
	for _, s := range r.Services {
		f.ok(e.EncodeString(s))
	}
	f.int("credit", int64(r.Credit))
	f.int("hb", int64(r.Heartbeat))
	f.str("name", r.Name)
	f.str("proc", r.Process)
	return f.err
}

// ---- decoding ----

type decoder struct {
	r   bytes.Reader
	dec *msgpack.Decoder
}

var decoders = sync.Pool{New: func() any {
	d := &decoder{}
	d.dec = msgpack.NewDecoder(&d.r)
	return d
}}

func decodeWith(b []byte, what string, fn func(*msgpack.Decoder) error) error {
	d := decoders.Get().(*decoder)
	d.r.Reset(b)
	d.dec.ResetReader(&d.r)
	err := fn(d.dec)
	if err == nil && d.r.Len() != 0 {
		err = fmt.Errorf("%d trailing bytes", d.r.Len())
	}
	d.r.Reset(nil)
	decoders.Put(d)
	if err != nil {
		if errors.Is(err, ErrEnvelope) {
			return err
		}
		return envErr(what, err)
	}
	return nil
}

// UnmarshalMsgpack decodes a REQUEST body frame into r. Body aliases
// nothing in b: the decoder copies.
func (r *Request) UnmarshalMsgpack(b []byte) error {
	*r = Request{}
	return decodeWith(b, "request", r.DecodeMsgpack)
}

// UnmarshalMsgpack decodes a REPLY body frame into r.
func (r *Reply) UnmarshalMsgpack(b []byte) error {
	*r = Reply{}
	return decodeWith(b, "reply", r.DecodeMsgpack)
}

// UnmarshalMsgpack decodes a READY body frame into r.
func (r *Ready) UnmarshalMsgpack(b []byte) error {
	*r = Ready{}
	return decodeWith(b, "ready", r.DecodeMsgpack)
}

// readKey reads a map key into scratch. Keys are short; a longer one is
// returned empty (an unknown key, whose value the caller skips).
func readKey(d *msgpack.Decoder, scratch []byte) ([]byte, error) {
	n, err := d.DecodeBytesLen()
	if err != nil || n < 0 {
		return nil, err
	}
	if n > len(scratch) {
		for n > 0 {
			m := min(n, len(scratch))
			if err := d.ReadFull(scratch[:m]); err != nil {
				return nil, err
			}
			n -= m
		}
		return nil, nil
	}
	if err := d.ReadFull(scratch[:n]); err != nil {
		return nil, err
	}
	return scratch[:n], nil
}

// eachKey decodes a map, calling fn for each key; fn must consume the value
// or return errSkip to have it skipped. fn switches on string(key), which
// the compiler does without allocating.
func eachKey(d *msgpack.Decoder, fn func(key []byte) error) error {
	n, err := d.DecodeMapLen()
	if err != nil {
		return err
	}
	if n < 0 {
		return errors.New("map expected, got nil")
	}
	var scratch [32]byte
	for range n {
		k, err := readKey(d, scratch[:])
		if err != nil {
			return err
		}
		if err := fn(k); err == errSkip {
			if err := d.Skip(); err != nil {
				return err
			}
		} else if err != nil {
			return fmt.Errorf("field %q: %w", k, err)
		}
	}
	return nil
}

var errSkip = errors.New("skip")

func decodeKVs(d *msgpack.Decoder) ([]KV, error) {
	n, err := d.DecodeMapLen()
	if err != nil || n <= 0 {
		return nil, err
	}
	if n > maxKVs {
		return nil, fmt.Errorf("%d entries, at most %d", n, maxKVs)
	}
	kvs := make([]KV, n)
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

func decodeInt(d *msgpack.Decoder) (int, error) {
	v, err := d.DecodeInt64()
	if err != nil {
		return 0, err
	}
	if v < -1<<31 || v > 1<<31-1 {
		return 0, fmt.Errorf("integer %d out of range", v)
	}
	return int(v), nil
}

// DecodeHops reads what EncodeHops wrote, with the envelopes' bounds
// (64 hops, 256 tags each); unknown keys are skipped.
func DecodeHops(d *msgpack.Decoder) ([]Hop, error) {
	n, err := d.DecodeArrayLen()
	if err != nil || n <= 0 {
		return nil, err
	}
	if n > maxHops {
		return nil, fmt.Errorf("%d hops, at most %d", n, maxHops)
	}
	hops := make([]Hop, n)
	for i := range hops {
		h := &hops[i]
		err := eachKey(d, func(k []byte) (err error) {
			switch string(k) {
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
				return errSkip
			}
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	return hops, nil
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (r *Request) DecodeMsgpack(d *msgpack.Decoder) error {
	return eachKey(d, func(k []byte) (err error) {
		switch string(k) {
		case "id":
			r.ID, err = d.DecodeUint64()
		case "rid":
			r.RID, err = d.DecodeString()
		case "svc":
			r.Service, err = d.DecodeString()
		case "mth":
			r.Method, err = d.DecodeString()
		case "verb":
			r.Verb, err = d.DecodeString()
		case "path":
			r.Path, err = d.DecodeString()
		case "qry":
			r.Query, err = d.DecodeString()
		case "prm":
			r.Params, err = decodeKVs(d)
		case "hdr":
			r.Headers, err = decodeKVs(d)
		case "body":
			r.Body, err = d.DecodeBytes()
		case "dl":
			r.Deadline, err = d.DecodeInt64()
		case "att":
			r.Attempt, err = decodeInt(d)
		case "max":
			r.MaxAttempts, err = decodeInt(d)
		case "tr":
			r.Trace, err = DecodeHops(d)
		default:
			return errSkip
		}
		return err
	})
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (r *Reply) DecodeMsgpack(d *msgpack.Decoder) error {
	return eachKey(d, func(k []byte) (err error) {
		switch string(k) {
		case "id":
			r.ID, err = d.DecodeUint64()
		case "st":
			r.Status, err = decodeInt(d)
		case "code":
			var s string
			s, err = d.DecodeString()
			r.Code = Code(s)
		case "err":
			r.Error, err = d.DecodeString()
		case "hdr":
			r.Headers, err = decodeKVs(d)
		case "body":
			r.Body, err = d.DecodeBytes()
		case "tr":
			r.Trace, err = DecodeHops(d)
		default:
			return errSkip
		}
		return err
	})
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (r *Ready) DecodeMsgpack(d *msgpack.Decoder) error {
	err := eachKey(d, func(k []byte) (err error) {
		switch string(k) {
		case "svc":
			var n int
			if n, err = d.DecodeArrayLen(); err != nil {
				return err
			}
			if n > maxKVs {
				return fmt.Errorf("%d services, at most %d", n, maxKVs)
			}
			r.Services = make([]string, 0, max(n, 0))
			for range n {
				s, err := d.DecodeString()
				if err != nil {
					return err
				}
				r.Services = append(r.Services, s)
			}
		case "credit":
			r.Credit, err = decodeInt(d)
		case "hb":
			r.Heartbeat, err = decodeInt(d)
		case "name":
			r.Name, err = d.DecodeString()
		case "proc":
			r.Process, err = d.DecodeString()
		default:
			return errSkip
		}
		return err
	})
	if err != nil {
		return err
	}
	if len(r.Services) == 0 {
		return errors.New("no services")
	}
	for _, s := range r.Services {
		if !ValidService(s) {
			return fmt.Errorf("invalid service name %q", s)
		}
	}
	if r.Credit < 1 {
		return fmt.Errorf("credit %d, must be at least 1", r.Credit)
	}
	if r.Heartbeat < 0 {
		return fmt.Errorf("heartbeat %d ms is negative", r.Heartbeat)
	}
	return nil
}

// ValidService reports whether s is a usable service name: 1 to 128
// characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit.
func ValidService(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '.' || c == '_' || c == '-') && i > 0:
		default:
			return false
		}
	}
	return true
}
