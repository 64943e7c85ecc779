package queue

import (
	"reflect"
	"testing"

	"github.com/shoal-dev/shoal/wire"
)

func TestMessageRoundTrip(t *testing.T) {
	m := message{Type: "a:b", Payload: []byte{1, 2, 3}, Queue: "q", MaxRetries: 7, Timeout: 1000, Enqueued: 42,
		ProcessAt: 43, Unique: "u", Idem: "i", Retention: 5, RID: "rid",
		Trace: []wire.Hop{{Service: "s", Process: "p", Start: 1, Dur: 2, Tags: []wire.KV{{Key: "k", Value: "v"}}}}}
	got, err := decodeMessage(m.appendMsgpack(nil))
	if err != nil || !reflect.DeepEqual(got, m) {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	min := message{Type: "t", Queue: "q"}
	if got, err := decodeMessage(min.appendMsgpack(nil)); err != nil || got.Type != "t" || got.Payload != nil {
		t.Fatalf("minimal: %+v, %v", got, err)
	}
}

func TestIDs(t *testing.T) {
	seen := map[string]bool{}
	prev := ""
	for range 10000 {
		id := newID()
		if !ValidID(id) || seen[id] {
			t.Fatalf("bad or repeated id %q", id)
		}
		if id[:10] < prev {
			t.Fatalf("id %q sorts before an earlier one's time %q", id, prev)
		}
		prev = id[:10]
		seen[id] = true
	}
	for _, bad := range []string{"", "x", "01jd8x3k5qg7w2c9v4m6r8t0yI", "01jd8x3k5qg7w2c9v4m6r8t0y"} {
		if ValidID(bad) {
			t.Errorf("ValidID(%q)", bad)
		}
	}
}

// FuzzDecodeMessage: whatever bytes a task hash holds, decoding returns
// an error or a message, never panics or allocates without bound.
func FuzzDecodeMessage(f *testing.F) {
	m := message{Type: "t", Payload: []byte("p"), Queue: "q", Trace: []wire.Hop{{Service: "s", Tags: []wire.KV{{Key: "k"}}}}}
	b := m.appendMsgpack(nil)
	f.Add(b)
	f.Add(b[:len(b)/2])
	f.Add([]byte{0x81, 0xa1, 't', 0xc0})
	f.Add([]byte{0xdf, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMessage(b)
		if err == nil && m.Type == "" {
			t.Fatal("a message without a type decoded")
		}
	})
}

func TestValidNames(t *testing.T) {
	for name, want := range map[string]bool{
		"default": true, "a": true, "critical-1": true, "a.b_c-d": true, "0x": true,
		"": false, "Default": false, "-a": false, ".a": false, "a b": false, "a:b": false, "ü": false,
		string(make([]byte, 65)): false,
	} {
		if got := ValidQueue(name); got != want {
			t.Errorf("ValidQueue(%q) = %v", name, got)
		}
	}
	for name, want := range map[string]bool{
		"email:send": true, "Notes.Write": true, "a/b-c_d": true, "x": true,
		"": false, ":a": false, "a b": false, "a\x00": false, "é": false,
	} {
		if got := ValidType(name); got != want {
			t.Errorf("ValidType(%q) = %v", name, got)
		}
	}
}
