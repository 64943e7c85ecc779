// Package reqctx carries the request a handler serves in its context, so
// that work the handler starts elsewhere (a call, an event, a task) can
// carry the request id and trace on. It is a leaf: the task queue reads it
// without importing the worker SDK and, through it, the ZeroMQ stack.
package reqctx

import (
	"context"

	"github.com/shoal-dev/shoal/wire"
)

// Request is what a handler's context knows about its request. The worker
// SDK implements it; Trace is computed when asked, so its own hop can carry
// the time spent so far.
type Request interface {
	// Trace returns the request id and the trace to carry on: the
	// request's hops plus one for the handler's service so far.
	Trace() (rid string, trace []wire.Hop)
}

type key struct{}

// With returns ctx carrying r.
func With(ctx context.Context, r Request) context.Context {
	return context.WithValue(ctx, key{}, r)
}

// From returns the Request ctx carries, or nil outside a handler.
func From(ctx context.Context) Request {
	r, _ := ctx.Value(key{}).(Request)
	return r
}

// Trace is From(ctx).Trace(); ok is false outside a handler.
func Trace(ctx context.Context) (rid string, trace []wire.Hop, ok bool) {
	r := From(ctx)
	if r == nil {
		return "", nil, false
	}
	rid, trace = r.Trace()
	return rid, trace, true
}
