//go:build !race

// Allocation counts are meaningless under the race detector; `make test`
// runs these in a pass without -race.

package wire

import "testing"

// The broker peeks every request and every reply: it must not allocate.
func TestPeekAllocations(t *testing.T) {
	in := sampleRequest()
	b := in.AppendMsgpack(nil)
	rb := (&Reply{ID: 1, Body: []byte("x")}).AppendMsgpack(nil)
	if n := testing.AllocsPerRun(100, func() { _, _ = PeekRequest(b); _, _ = PeekReplyID(rb) }); n != 0 {
		t.Errorf("peek allocates %.1f times per call", n)
	}
	buf := make([]byte, 0, 1024)
	if n := testing.AllocsPerRun(100, func() { buf = in.AppendMsgpack(buf[:0]) }); n != 0 {
		t.Errorf("AppendMsgpack allocates %.1f times per call", n)
	}
}
