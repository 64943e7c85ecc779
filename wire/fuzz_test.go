package wire

import (
	"testing"
)

func seedEnvelopes(f *testing.F) {
	r := sampleRequest()
	f.Add(r.AppendMsgpack(nil))
	f.Add((&Request{ID: 1, Service: "a"}).AppendMsgpack(nil))
	f.Add((&Reply{ID: 2, Status: 500, Code: CodePanic, Error: "x", Body: []byte("b"), Trace: r.Trace}).AppendMsgpack(nil))
	f.Add((&Ready{Services: []string{"echo"}, Credit: 8, Heartbeat: 1000}).AppendMsgpack(nil))
	f.Add([]byte{0xdf, 0xff, 0xff, 0xff, 0xff})
}

// FuzzRequest: whatever the bytes, decoding never panics, and a request the
// full decoder accepts peeks to the same routing fields.
func FuzzRequest(f *testing.F) {
	seedEnvelopes(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		var r Request
		full := r.UnmarshalMsgpack(b)
		rt, err := PeekRequest(b)
		if full == nil && err == nil {
			if rt.ID != r.ID || string(rt.Service) != r.Service || rt.Deadline != r.Deadline {
				t.Fatalf("peek %+v disagrees with decode %+v", rt, r)
			}
			// Re-encoding what we decoded must decode to the same thing.
			var again Request
			if err := again.UnmarshalMsgpack(r.AppendMsgpack(nil)); err != nil {
				t.Fatalf("re-encoded request does not decode: %v", err)
			}
		}
		if err == nil {
			if _, err := SetAttempt(append([]byte(nil), b...), rt, rt.Attempt+1); err != nil && full == nil {
				t.Fatalf("SetAttempt failed on a valid request: %v", err)
			}
		}
	})
}

// FuzzReply: decoding replies and READY bodies never panics.
func FuzzReply(f *testing.F) {
	seedEnvelopes(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		var r Reply
		full := r.UnmarshalMsgpack(b)
		id, err := PeekReplyID(b)
		if full == nil && err == nil && id != r.ID {
			t.Fatalf("PeekReplyID %d, decode %d", id, r.ID)
		}
		var rd Ready
		_ = rd.UnmarshalMsgpack(b)
	})
}

// FuzzParse: frames split from arbitrary bytes never panic Parse.
func FuzzParse(f *testing.F) {
	f.Add([]byte("SHL1\x00\x02\x00abc"))
	f.Add([]byte("SHL1\x00\x04"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var frames [][]byte
		start := 0
		for i, c := range b {
			if c == 0 {
				frames = append(frames, b[start:i])
				start = i + 1
			}
		}
		frames = append(frames, b[start:])
		m, err := Parse(frames)
		if err == nil && len(m.Body) != len(frames)-2 {
			t.Fatalf("body frames %d of %d", len(m.Body), len(frames))
		}
	})
}
