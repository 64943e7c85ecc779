package wire

import "testing"

// FuzzEvent: whatever the bytes, decoding an event, peeking its topic and
// reading a credit never panic; an envelope both accept agree on the
// topic, and what decodes re-encodes to something that decodes the same.
func FuzzEvent(f *testing.F) {
	ev := sampleEvent()
	f.Add(ev.AppendMsgpack(nil))
	f.Add((&Event{ID: "1", Topic: "a"}).AppendMsgpack(nil))
	f.Add(AppendCredit(nil, 1<<20))
	f.Add([]byte{0x82, 0xa2, 'i', 'd', 0xa1, '1', 0xa5, 't', 'o', 'p', 'i', 'c', 0xa3, 'a', '.', 'b'})
	f.Add([]byte{0xdf, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		var ev Event
		full := ev.UnmarshalMsgpack(b)
		topic, err := PeekEvent(b)
		if full == nil && err == nil && string(topic) != ev.Topic {
			t.Fatalf("peek topic %q, decode %q", topic, ev.Topic)
		}
		if err == nil && !ValidTopic(string(topic)) {
			t.Fatalf("peek accepted invalid topic %q", topic)
		}
		if full == nil {
			var again Event
			if err := again.UnmarshalMsgpack(ev.AppendMsgpack(nil)); err != nil {
				t.Fatalf("re-encoded event does not decode: %v", err)
			}
			if again.ID != ev.ID || again.Topic != ev.Topic || string(again.Body) != string(ev.Body) {
				t.Fatalf("re-encoded event differs: %+v vs %+v", again, ev)
			}
		}
		_, _ = ParseCredit(b)
		TopicPrefixes(b, func(p []byte) bool { return len(p) <= len(b) })
	})
}
