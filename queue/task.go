package queue

import (
	"fmt"
	"time"

	"github.com/shoal-dev/shoal/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// Task is a unit of work: a type naming the handler and a msgpack payload.
// Build one with NewTask to enqueue it; a handler receives one with the
// rest filled in (ID, Queue, Retried, RequestID, …).
type Task struct {
	typ     string
	payload []byte
	opts    []Option

	// Set for handlers.
	id         string
	queue      string
	retried    int
	maxRetries int
	timeout    time.Duration
	enqueued   time.Time
	readyAt    time.Time
	rid        string
	trace      []wire.Hop
	retention  time.Duration
	unique     string
	lastErr    string
}

// NewTask returns a task of type typ whose payload is v encoded with
// msgpack. opts apply to every enqueue of the task; options given to
// Enqueue come after them.
func NewTask(typ string, v any, opts ...Option) (*Task, error) {
	b, err := msgpack.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("queue: cannot encode the payload of a %s task: %w", typ, err)
	}
	return &Task{typ: typ, payload: b, opts: opts}, nil
}

// NewRawTask returns a task whose payload is already encoded (msgpack, by
// convention; handlers decode it with Task.Decode or Typed).
func NewRawTask(typ string, payload []byte, opts ...Option) *Task {
	return &Task{typ: typ, payload: payload, opts: opts}
}

// Type is the task's type, which selects its handler.
func (t *Task) Type() string { return t.typ }

// Payload is the task's msgpack payload; the handler must not modify it.
func (t *Task) Payload() []byte { return t.payload }

// Decode decodes the payload into v. Its error wraps ErrBadPayload.
func (t *Task) Decode(v any) error {
	if err := msgpack.Unmarshal(t.payload, v); err != nil {
		return fmt.Errorf("%w: %s task %s: %v", ErrBadPayload, t.typ, t.id, err)
	}
	return nil
}

// ID is the task's id (handlers only).
func (t *Task) ID() string { return t.id }

// Queue is the queue the task came from (handlers only).
func (t *Task) Queue() string { return t.queue }

// Retried is how many times the task ran before and failed, or lost its
// consumer (handlers only).
func (t *Task) Retried() int { return t.retried }

// MaxRetries is the task's retry budget: after this many retries a failure
// sends it to the dead-letter set (handlers only).
func (t *Task) MaxRetries() int { return t.maxRetries }

// EnqueuedAt is when the task was enqueued, by the enqueuer's clock
// (handlers only).
func (t *Task) EnqueuedAt() time.Time { return t.enqueued }

// RequestID is the id of the request whose handler enqueued the task, ""
// if none (handlers only). TraceFrom(ctx) gives it with the trace.
func (t *Task) RequestID() string { return t.rid }

// Trace is the request's trace up to the enqueue (handlers only).
func (t *Task) Trace() []wire.Hop { return t.trace }

// State is where a task is in its life.
type State string

// The states. Every move between them is one Lua script (docs/queue.md).
const (
	Pending   State = "pending"   // ready, waiting for a consumer
	Active    State = "active"    // leased by a consumer, running
	Scheduled State = "scheduled" // waiting for its process-at time
	Retry     State = "retry"     // failed, waiting for its next attempt
	Dead      State = "dead"      // failed for good: retries exhausted, SkipRetry, unknown type
	Done      State = "done"      // succeeded; kept only with Retention
)

// States lists every state in the order stats print them.
var States = []State{Pending, Active, Scheduled, Retry, Dead, Done}

// TaskInfo describes a stored task: what Enqueue returns and what the
// Inspector lists.
type TaskInfo struct {
	ID         string
	Type       string
	Queue      string
	State      State
	Payload    []byte
	Retried    int
	MaxRetries int
	Timeout    time.Duration
	LastError  string
	EnqueuedAt time.Time
	// At is the time of the state: when a scheduled or retry task is due,
	// when a dead task died, when an active one started, when a pending
	// one became ready.
	At time.Time
	// LeaseUntil is when an active task's lease ends; Owner holds it.
	LeaseUntil time.Time
	Owner      string
	UniqueKey  string
	Idempotent string // the idempotency key, if any
	RequestID  string
	Trace      []wire.Hop
	// Existing is set by Enqueue when the idempotency key was used
	// before: ID is then the first task's, and nothing was enqueued.
	Existing bool
}

// Option is an enqueue option: Queue, MaxRetries, Timeout, ProcessAt,
// ProcessIn, Unique, IdempotencyKey, Retention, WithTrace.
type Option func(*enqueueOptions)

type enqueueOptions struct {
	queue      string
	maxRetries int
	timeout    time.Duration
	processAt  time.Time
	processIn  time.Duration
	uniqueKey  string
	uniqueTTL  time.Duration
	idemKey    string
	retention  time.Duration
	rid        string
	trace      []wire.Hop
}

// Queue puts the task in the named queue (default "default").
func Queue(name string) Option { return func(o *enqueueOptions) { o.queue = name } }

// MaxRetries sets how many times a failed task is retried before it goes
// to the dead-letter set; 0 means it runs once.
func MaxRetries(n int) Option { return func(o *enqueueOptions) { o.maxRetries = n } }

// Timeout bounds one run of the task: the handler's ctx ends after d.
func Timeout(d time.Duration) Option { return func(o *enqueueOptions) { o.timeout = d } }

// ProcessAt holds the task until t.
func ProcessAt(t time.Time) Option {
	return func(o *enqueueOptions) { o.processAt, o.processIn = t, 0 }
}

// ProcessIn holds the task for d.
func ProcessIn(d time.Duration) Option {
	return func(o *enqueueOptions) { o.processIn, o.processAt = d, time.Time{} }
}

// Unique refuses, for ttl, another task with the same key in the same
// queue: Enqueue returns a *DuplicateError (errors.Is ErrDuplicateTask).
// The key is released early when the task is done or deleted.
func Unique(key string, ttl time.Duration) Option {
	return func(o *enqueueOptions) { o.uniqueKey, o.uniqueTTL = key, ttl }
}

// IdempotencyKey makes enqueues with the same key, for the client's
// IdempotencyTTL, return the first task's id instead of enqueueing again
// (TaskInfo.Existing says so). Handlers can use the task id as the key of
// what they write, so that a task that runs twice writes once.
func IdempotencyKey(key string) Option { return func(o *enqueueOptions) { o.idemKey = key } }

// Retention keeps a done task for d, so that the Inspector (and GET
// /tasks-style endpoints) can still see it; by default it is deleted.
func Retention(d time.Duration) Option { return func(o *enqueueOptions) { o.retention = d } }

// WithTrace sets the request id and trace the task carries. By default
// Enqueue takes them from ctx: a worker handler's (workers.TraceFrom) or a
// task handler's (TraceFrom).
func WithTrace(rid string, trace []wire.Hop) Option {
	return func(o *enqueueOptions) { o.rid, o.trace = rid, trace }
}
