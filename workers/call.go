package workers

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/shoal-dev/shoal/broker"
	"github.com/shoal-dev/shoal/internal/reqctx"
	"github.com/shoal-dev/shoal/wire"
)

// callInfo is what a handler's context knows about the request it serves
// (reqctx.Request).
type callInfo struct {
	s     *Server
	req   *wire.Request
	start time.Time
}

// callFrom returns the callInfo of a handler's ctx, or nil.
func callFrom(ctx context.Context) *callInfo {
	ci, _ := reqctx.From(ctx).(*callInfo)
	return ci
}

// Trace is the request's hops plus one for this service so far.
func (ci *callInfo) Trace() (string, []wire.Hop) {
	n := len(ci.req.Trace)
	return ci.req.RID, append(ci.req.Trace[:n:n], ci.s.hop(ci.req.Service, ci.start))
}

// CallError is returned by Call when the other service answered with an
// error or none could be had; Reply holds what came back.
type CallError struct {
	Service string
	Reply   *wire.Reply
}

func (e *CallError) Error() string {
	return fmt.Sprintf("call to %s failed: %s (status %d): %s", e.Service, e.Reply.Code, e.Reply.Status, e.Reply.Error)
}

// ErrNoCaller is returned by Call outside a handler, or when the server was
// built without CallBrokers.
var ErrNoCaller = errors.New("workers: Call needs a handler context of a server with CallBrokers")

// Call sends a request to another service through the brokers and waits
// for its reply. It must be given the context of a running handler: the
// call inherits that request's deadline (what is left of it), its request
// id and its trace, with a hop for the calling service appended. Answers
// that say nothing ran (no worker, overloaded, broker unreachable) are
// retried with backoff while the deadline allows. A reply with an error
// code comes back as a *CallError.
func Call(ctx context.Context, service, method string, body []byte) (*wire.Reply, error) {
	ci := callFrom(ctx)
	if ci == nil || ci.s.caller == nil {
		return nil, ErrNoCaller
	}
	backoff := 5 * time.Millisecond
	for attempt := 1; ; attempt++ {
		rid, trace, _ := TraceFrom(ctx)
		req := wire.Request{RID: rid, Service: service, Method: method, Body: body, MaxAttempts: 1, Trace: trace}
		rep, err := ci.s.caller.Do(ctx, &req)
		switch {
		case err == nil && rep.Code == wire.CodeOK:
			return rep, nil
		case err == nil && !rep.Code.Retryable():
			return rep, &CallError{Service: service, Reply: rep}
		case err != nil && !errors.Is(err, broker.ErrUnavailable):
			return nil, err
		}
		if attempt >= 4 {
			if rep == nil {
				rep = &wire.Reply{Code: wire.CodeUnavailable, Status: 503, Error: err.Error()}
			}
			return rep, &CallError{Service: service, Reply: rep}
		}
		select {
		case <-time.After(backoff):
			backoff *= 4
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// TraceFrom returns, inside a handler, the request id and the trace to
// carry into work the handler starts elsewhere (a call, a task): the
// request's hops plus a hop for this service so far. ok is false outside a
// handler.
func TraceFrom(ctx context.Context) (rid string, trace []wire.Hop, ok bool) {
	return reqctx.Trace(ctx)
}
