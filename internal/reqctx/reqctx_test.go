package reqctx

import (
	"context"
	"testing"

	"github.com/shoal-dev/shoal/wire"
)

type fakeRequest struct{ asked int }

func (f *fakeRequest) Trace() (string, []wire.Hop) {
	f.asked++
	return "rid-1", []wire.Hop{{Service: "svc", Dur: int64(f.asked)}}
}

func TestTraceOutsideAndInsideAHandler(t *testing.T) {
	if r := From(context.Background()); r != nil {
		t.Errorf("From(background) = %v, want nil", r)
	}
	if _, _, ok := Trace(context.Background()); ok {
		t.Error("Trace outside a handler reports ok")
	}
	f := &fakeRequest{}
	ctx := With(context.Background(), f)
	if f.asked != 0 {
		t.Error("With asked for the trace: it must be computed when read")
	}
	for want := 1; want <= 2; want++ {
		rid, trace, ok := Trace(ctx)
		if !ok || rid != "rid-1" || len(trace) != 1 || trace[0].Dur != int64(want) {
			t.Errorf("Trace #%d = %q %+v %v", want, rid, trace, ok)
		}
	}
	if From(ctx) != Request(f) {
		t.Error("From does not return the request given to With")
	}
}
