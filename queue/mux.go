package queue

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/shoal-dev/shoal/wire"
)

// Handler runs tasks. Returning nil marks the task done; an error retries
// it (with backoff) until its retries are spent, then sends it to the
// dead-letter set. Wrap SkipRetry to go there at once. A panic counts as
// an error.
//
// Delivery is at least once: a task can run again after its consumer died
// or lost its lease mid-run, so make the effect idempotent — key what you
// write by t.ID(), for instance.
type Handler interface {
	ProcessTask(ctx context.Context, t *Task) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, t *Task) error

// ProcessTask calls f.
func (f HandlerFunc) ProcessTask(ctx context.Context, t *Task) error { return f(ctx, t) }

// Typed adapts a function taking the decoded payload. A payload that does
// not decode into T sends the task to the dead-letter set with the
// reason (ErrBadPayload, SkipRetry): no retry would decode it either.
//
//	mux.Handle("email:send", queue.Typed(func(ctx context.Context, t *queue.Task, m Email) error { … }))
func Typed[T any](f func(ctx context.Context, t *Task, v T) error) Handler {
	return HandlerFunc(func(ctx context.Context, t *Task) error {
		var v T
		if err := t.Decode(&v); err != nil {
			return fmt.Errorf("%w (%w)", err, SkipRetry)
		}
		return f(ctx, t, v)
	})
}

// ServeMux routes tasks to handlers by task type, as http.ServeMux routes
// requests by path.
type ServeMux struct {
	h map[string]Handler
}

// NewServeMux returns an empty mux.
func NewServeMux() *ServeMux { return &ServeMux{h: make(map[string]Handler)} }

// Handle registers h for task type typ. It panics on an invalid or
// duplicate type, as http.ServeMux does for patterns.
func (m *ServeMux) Handle(typ string, h Handler) {
	if !ValidType(typ) {
		panic(fmt.Sprintf("queue: invalid task type %q", typ))
	}
	if _, dup := m.h[typ]; dup {
		panic(fmt.Sprintf("queue: task type %q registered twice", typ))
	}
	m.h[typ] = h
}

// HandleFunc registers f for task type typ.
func (m *ServeMux) HandleFunc(typ string, f func(ctx context.Context, t *Task) error) {
	m.Handle(typ, HandlerFunc(f))
}

// Types lists the registered task types, sorted.
func (m *ServeMux) Types() []string {
	s := make([]string, 0, len(m.h))
	for k := range m.h {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

// ProcessTask runs the handler of t's type. A type with no handler fails
// with ErrUnknownType, which the consumer sends to the dead-letter set.
func (m *ServeMux) ProcessTask(ctx context.Context, t *Task) error {
	h := m.h[t.typ]
	if h == nil {
		return fmt.Errorf("%w %q (this consumer serves %v)", ErrUnknownType, t.typ, m.Types())
	}
	return h.ProcessTask(ctx, t)
}

type taskCtxKey struct{}

// taskCtx is what a handler's context knows about its task.
type taskCtx struct {
	t       *Task
	process string // the consumer's host/pid
	start   time.Time
}

// hop is the trace hop of this run so far.
func (tc *taskCtx) hop() wire.Hop {
	return wire.Hop{Service: "task:" + tc.t.typ, Process: tc.process, Start: tc.start.UnixMicro(),
		Dur: time.Since(tc.start).Microseconds(), Tags: []wire.KV{{Key: "task", Value: tc.t.id}}}
}

// TaskFrom returns the task a handler's ctx belongs to, or nil.
func TaskFrom(ctx context.Context) *Task {
	if tc, _ := ctx.Value(taskCtxKey{}).(*taskCtx); tc != nil {
		return tc.t
	}
	return nil
}

// TraceFrom returns, inside a task handler, the id of the request that
// enqueued the task and its trace with a hop for this run appended: log
// them, or pass them on (Enqueue does so by itself for follow-up tasks).
// ok is false outside a task handler.
func TraceFrom(ctx context.Context) (rid string, trace []wire.Hop, ok bool) {
	tc, _ := ctx.Value(taskCtxKey{}).(*taskCtx)
	if tc == nil {
		return "", nil, false
	}
	return tc.t.rid, traceOf(tc.t.trace, tc.hop()), true
}
