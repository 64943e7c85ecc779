//go:build !race

package wire

import "testing"

// The forwarder peeks every event: it must not allocate.
func TestPeekEventAllocations(t *testing.T) {
	ev := sampleEvent()
	b := ev.AppendMsgpack(nil)
	if n := testing.AllocsPerRun(100, func() { _, _ = PeekEvent(b) }); n != 0 {
		t.Errorf("PeekEvent allocates %.1f times per call", n)
	}
	buf := make([]byte, 0, 1024)
	if n := testing.AllocsPerRun(100, func() { buf = ev.AppendMsgpack(buf[:0]) }); n != 0 {
		t.Errorf("Event.AppendMsgpack allocates %.1f times per call", n)
	}
}
