package wire

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

func sampleRequest() Request {
	return Request{
		ID: 1<<40 + 7, RID: "req-1", Service: "echo", Method: "GET /echo",
		Verb: "GET", Path: "/echo", Query: "a=1&b=2",
		Params:  []KV{{"id", "42"}},
		Headers: []KV{{"Content-Type", "text/plain"}, {"Accept", "*/*"}},
		Body:    []byte("hello"), Deadline: 1_700_000_000_123, Attempt: 1, MaxAttempts: 3,
		Trace: []Hop{{Service: "frontend", Process: "h/1", Start: 5, Dur: 6, Tags: []KV{{"k", "v"}}}},
	}
}

func TestRequestRoundTrip(t *testing.T) {
	for name, in := range map[string]Request{
		"full":    sampleRequest(),
		"minimal": {ID: 0, Service: "a"},
	} {
		t.Run(name, func(t *testing.T) {
			b := in.AppendMsgpack(nil)
			var out Request
			if err := out.UnmarshalMsgpack(b); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(in, out) {
				t.Fatalf("round trip:\nwant %+v\n got %+v", in, out)
			}
		})
	}
}

func TestReplyAndReadyRoundTrip(t *testing.T) {
	rep := Reply{ID: 9, Status: 201, Code: CodeHandler, Error: "boom",
		Headers: []KV{{"X", "y"}}, Body: []byte{0, 1, 2}, Trace: []Hop{{Service: "s", Process: "p"}}}
	var rep2 Reply
	if err := rep2.UnmarshalMsgpack(rep.AppendMsgpack(nil)); err != nil || !reflect.DeepEqual(rep, rep2) {
		t.Fatalf("reply round trip: %v\nwant %+v\n got %+v", err, rep, rep2)
	}
	rd := Ready{Services: []string{"echo", "users.v1"}, Credit: 64, Heartbeat: 1000, Name: "echo:0", Process: "h/2"}
	var rd2 Ready
	if err := rd2.UnmarshalMsgpack(rd.AppendMsgpack(nil)); err != nil || !reflect.DeepEqual(rd, rd2) {
		t.Fatalf("ready round trip: %v\nwant %+v\n got %+v", err, rd, rd2)
	}
}

// Other languages decode envelopes with a generic msgpack library: the
// encoding must be plain maps with the documented keys.
func TestEnvelopeIsPlainMsgpack(t *testing.T) {
	in := sampleRequest()
	var m map[string]any
	if err := msgpack.Unmarshal(in.AppendMsgpack(nil), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"id", "rid", "svc", "mth", "verb", "path", "qry", "prm", "hdr", "body", "dl", "att", "max", "tr"} {
		if _, ok := m[k]; !ok {
			t.Errorf("key %q missing from %v", k, m)
		}
	}
	if m["svc"] != "echo" || !bytes.Equal(m["body"].([]byte), []byte("hello")) {
		t.Errorf("unexpected values: %v", m)
	}
	// And a generic encoder's output (Python's msgpack writes maps like
	// this, with minimal integer widths and str keys) decodes.
	generic, _ := msgpack.Marshal(map[string]any{"id": 3, "svc": "echo", "body": []byte("x"), "extra": []any{1, "two"}, "st": 200})
	var req Request
	if err := req.UnmarshalMsgpack(generic); err != nil || req.ID != 3 || req.Service != "echo" || string(req.Body) != "x" {
		t.Fatalf("generic request: %v %+v", err, req)
	}
	var rep Reply
	if err := rep.UnmarshalMsgpack(generic); err != nil || rep.ID != 3 || rep.Status != 200 {
		t.Fatalf("generic reply: %v %+v", err, rep)
	}
}

func TestPeekMatchesDecode(t *testing.T) {
	in := sampleRequest()
	b := in.AppendMsgpack(nil)
	rt, err := PeekRequest(b)
	if err != nil {
		t.Fatal(err)
	}
	if rt.ID != in.ID || string(rt.Service) != in.Service || rt.Deadline != in.Deadline ||
		rt.Attempt != in.Attempt || rt.MaxAttempts != in.MaxAttempts {
		t.Fatalf("peek %+v does not match %+v", rt, in)
	}
	rep := Reply{ID: 77, Body: []byte("x"), Trace: in.Trace}
	id, err := PeekReplyID(rep.AppendMsgpack(nil))
	if err != nil || id != 77 {
		t.Fatalf("PeekReplyID = %d, %v", id, err)
	}
}

func TestSetAttempt(t *testing.T) {
	in := sampleRequest()
	b := in.AppendMsgpack(nil)
	rt, _ := PeekRequest(b)
	b2, err := SetAttempt(b, rt, 2)
	if err != nil {
		t.Fatal(err)
	}
	if &b2[0] != &b[0] {
		t.Error("SetAttempt did not patch in place")
	}
	var out Request
	if err := out.UnmarshalMsgpack(b2); err != nil || out.Attempt != 2 {
		t.Fatalf("attempt after SetAttempt: %d, %v", out.Attempt, err)
	}
	// A generic encoder may write att in a wider form: re-encode path.
	generic, _ := msgpack.Marshal(map[string]any{"id": 3, "svc": "echo", "att": int16(-1)})
	if _, err := PeekRequest(generic); err == nil {
		t.Error("negative attempt accepted")
	}
	generic, _ = msgpack.Marshal(map[string]any{"id": 3, "svc": "echo", "att": uint16(200)})
	rt, err = PeekRequest(generic)
	if err != nil {
		t.Fatal(err)
	}
	b3, err := SetAttempt(generic, rt, 201)
	if err != nil {
		t.Fatal(err)
	}
	if err := out.UnmarshalMsgpack(b3); err != nil || out.Attempt != 201 {
		t.Fatalf("attempt after re-encode: %d, %v", out.Attempt, err)
	}
}

func TestPeekRejects(t *testing.T) {
	enc := func(v any) []byte { b, _ := msgpack.Marshal(v); return b }
	cases := map[string][]byte{
		"empty":          nil,
		"not a map":      enc([]int{1}),
		"no id":          enc(map[string]any{"svc": "a"}),
		"no svc":         enc(map[string]any{"id": 1}),
		"negative id":    enc(map[string]any{"id": -1, "svc": "a"}),
		"svc not string": enc(map[string]any{"id": 1, "svc": 5}),
		"trailing bytes": append(enc(map[string]any{"id": 1, "svc": "a"}), 0),
		"truncated":      enc(map[string]any{"id": 1, "svc": "abc"})[:10],
		"huge map32":     {0xdf, 0xff, 0xff, 0xff, 0xff},
		"huge str32":     {0x81, 0xa1, 'x', 0xdb, 0xff, 0xff, 0xff, 0xff},
		"deep nesting":   append([]byte{0x81, 0xa1, 'x'}, bytes.Repeat([]byte{0x91}, 100)...),
	}
	for name, b := range cases {
		if _, err := PeekRequest(b); !errors.Is(err, ErrPeek) {
			t.Errorf("%s: PeekRequest err = %v, want ErrPeek", name, err)
		}
	}
}

func TestParse(t *testing.T) {
	v := []byte(Version)
	ok := map[string][][]byte{
		"ready":      {v, {1}, {0x80}},
		"request":    {v, {2}, {1}, {2}},
		"reply":      {v, {3}, {1}},
		"heartbeat":  {v, {4}},
		"disconnect": {v, {5}},
		"disc+why":   {v, {5}, []byte("bye")},
	}
	for name, f := range ok {
		if _, err := Parse(f); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	bad := map[string]struct {
		f   [][]byte
		err error
	}{
		"empty":       {nil, ErrShort},
		"version":     {[][]byte{[]byte("MDPW01"), {2}, {1}}, ErrVersion},
		"cmd len":     {[][]byte{v, {2, 2}, {1}}, ErrCommand},
		"cmd unknown": {[][]byte{v, {0x7f}}, ErrCommand},
		"ready none":  {[][]byte{v, {1}}, ErrBody},
		"request 0":   {[][]byte{v, {2}}, ErrBody},
		"hb body":     {[][]byte{v, {4}, {1}}, ErrBody},
		"too many":    {append([][]byte{v, {2}}, make([][]byte, MaxBatch+1)...), ErrTooLarge},
	}
	for name, c := range bad {
		if _, err := Parse(c.f); !errors.Is(err, c.err) {
			t.Errorf("%s: err = %v, want %v", name, err, c.err)
		}
	}
}

func TestReadyValidation(t *testing.T) {
	for name, r := range map[string]Ready{
		"no services": {Credit: 1},
		"bad name":    {Services: []string{"Echo"}, Credit: 1},
		"no credit":   {Services: []string{"echo"}},
	} {
		var out Ready
		if err := out.UnmarshalMsgpack(r.AppendMsgpack(nil)); !errors.Is(err, ErrEnvelope) {
			t.Errorf("%s: err = %v, want ErrEnvelope", name, err)
		}
	}
}

func BenchmarkRequestEncode(b *testing.B) {
	in := sampleRequest()
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = in.AppendMsgpack(buf[:0])
	}
}

func BenchmarkRequestDecode(b *testing.B) {
	in := sampleRequest()
	buf := in.AppendMsgpack(nil)
	b.ReportAllocs()
	var out Request
	for b.Loop() {
		_ = out.UnmarshalMsgpack(buf)
	}
}

func BenchmarkPeekRequest(b *testing.B) {
	in := sampleRequest()
	buf := in.AppendMsgpack(nil)
	b.ReportAllocs()
	for b.Loop() {
		_, _ = PeekRequest(buf)
	}
}
