package queue

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"
	"github.com/shoal-dev/shoal/internal/reqctx"
	"github.com/shoal-dev/shoal/wire"
)

// Defaults of ClientOptions.
const (
	DefaultQueue          = "default"
	DefaultMaxRetries     = 25
	DefaultTimeout        = 30 * time.Minute
	DefaultIdempotencyTTL = 24 * time.Hour
)

// maxBatchChunk is how many tasks one enqueue script call takes; a larger
// batch is several calls in one pipeline, still one round trip.
const maxBatchChunk = 500

// ClientOptions configure a Client. The zero value is usable.
type ClientOptions struct {
	// Queue is the queue of tasks that name none. Default "default".
	Queue string
	// MaxRetries is the retry budget of tasks that set none: 0 means
	// DefaultMaxRetries, a negative number means no retries.
	MaxRetries int
	// Timeout bounds one run of tasks that set none. Default 30m.
	Timeout time.Duration
	// IdempotencyTTL is how long an idempotency key maps to its first
	// task. Default 24h.
	IdempotencyTTL time.Duration
	// Metrics receives shoal_queue_enqueued_total{queue} and
	// shoal_queue_enqueue_errors_total; nil means the metrics package's
	// default set.
	Metrics *metrics.Set
}

// Client enqueues tasks. It is safe for concurrent use; make one per
// process and share it.
type Client struct {
	rdb redis.UniversalClient
	o   ClientOptions

	set        *metrics.Set
	enqueued   sync.Map // queue → *metrics.Counter
	published  sync.Map // queue → time.Time it was last added to the queues set
	errs       *metrics.Counter
	duplicates *metrics.Counter
}

// NewClient returns a client that enqueues into rdb (see NewRedis).
func NewClient(rdb redis.UniversalClient, o ClientOptions) *Client {
	if o.Queue == "" {
		o.Queue = DefaultQueue
	}
	switch {
	case o.MaxRetries == 0:
		o.MaxRetries = DefaultMaxRetries
	case o.MaxRetries < 0:
		o.MaxRetries = 0
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.IdempotencyTTL <= 0 {
		o.IdempotencyTTL = DefaultIdempotencyTTL
	}
	set := o.Metrics
	if set == nil {
		set = metrics.GetDefaultSet()
	}
	return &Client{
		rdb: rdb, o: o, set: set,
		errs:       set.GetOrCreateCounter(`shoal_queue_enqueue_errors_total`),
		duplicates: set.GetOrCreateCounter(`shoal_queue_enqueue_duplicates_total`),
	}
}

// Redis returns the client's Redis connection.
func (c *Client) Redis() redis.UniversalClient { return c.rdb }

func (c *Client) countEnqueued(q string) {
	v, ok := c.enqueued.Load(q)
	if !ok {
		v, _ = c.enqueued.LoadOrStore(q, c.set.GetOrCreateCounter(`shoal_queue_enqueued_total{queue="`+q+`"}`))
	}
	v.(*metrics.Counter).Inc()
}

// prepared is one task ready for an enqueue script.
type prepared struct {
	info    *TaskInfo
	msg     []byte
	delayMS int64  // > 0: scheduled
	ukey    string // full uniqueness key, or ""
	uttl    int64  // its TTL, ms
	ikey    string // full idempotency key, or ""
	err     error
}

// simple says the enqueue1 and enqueueN scripts can store the task: ready
// now, no uniqueness or idempotency key.
func (p *prepared) simple() bool { return p.delayMS == 0 && p.ukey == "" && p.ikey == "" }

// generalArgs appends the task's arguments of the enqueue script.
func (p *prepared) generalArgs(dst []any, idemTTL int64) []any {
	dst = append(dst, p.info.ID, p.info.Queue, p.msg, p.delayMS)
	if p.ukey == "" && p.ikey == "" {
		return append(dst, "0")
	}
	return append(dst, "4", p.ukey, p.uttl, p.ikey, idemTTL)
}

// traceOfCtx returns the request id and trace a task enqueued with ctx
// carries: a worker handler's, or a task handler's.
func traceOfCtx(ctx context.Context) (string, []wire.Hop) {
	if rid, trace, ok := reqctx.Trace(ctx); ok {
		return rid, trace
	}
	if rid, trace, ok := TraceFrom(ctx); ok {
		return rid, trace
	}
	return "", nil
}

// prepare applies the options, validates and encodes one task into info
// and buf (the message is appended to buf; p.msg aliases it).
func (c *Client) prepare(t *Task, opts []Option, now time.Time, rid string, trace []wire.Hop, info *TaskInfo, buf []byte) (prepared, []byte) {
	if t == nil {
		return prepared{err: invalid("nil task")}, buf
	}
	o := enqueueOptions{queue: c.o.Queue, maxRetries: c.o.MaxRetries, timeout: c.o.Timeout, rid: rid, trace: trace}
	for _, f := range t.opts {
		f(&o)
	}
	for _, f := range opts {
		f(&o)
	}
	switch {
	case !ValidType(t.typ):
		return prepared{err: invalid("task type %q: want 1-%d of letters, digits and . _ : / -, starting with a letter or digit", t.typ, maxTaskType)}, buf
	case !ValidQueue(o.queue):
		return prepared{err: invalid("queue name %q: want 1-%d of a-z 0-9 . _ -, starting with a letter or digit", o.queue, maxQueueName)}, buf
	case o.maxRetries < 0:
		return prepared{err: invalid("max retries %d: want 0 or more", o.maxRetries)}, buf
	case o.timeout <= 0:
		return prepared{err: invalid("timeout %v: want a positive duration", o.timeout)}, buf
	case o.uniqueKey != "" && o.uniqueTTL < time.Millisecond:
		return prepared{err: invalid("unique key %q: TTL %v must be at least 1ms", o.uniqueKey, o.uniqueTTL)}, buf
	case len(o.uniqueKey) > maxKey || len(o.idemKey) > maxKey:
		return prepared{err: invalid("uniqueness and idempotency keys are at most %d bytes", maxKey)}, buf
	case o.retention < 0:
		return prepared{err: invalid("retention %v: want 0 or more", o.retention)}, buf
	}
	var delay time.Duration
	switch {
	case !o.processAt.IsZero():
		delay = o.processAt.Sub(now)
	case o.processIn > 0:
		delay = o.processIn
	}
	m := message{
		Type: t.typ, Payload: t.payload, Queue: o.queue, MaxRetries: o.maxRetries,
		Timeout: o.timeout.Milliseconds(), Enqueued: now.UnixMilli(),
		Unique: o.uniqueKey, Idem: o.idemKey, Retention: o.retention.Milliseconds(),
		RID: o.rid, Trace: o.trace,
	}
	*info = TaskInfo{
		ID: newID(), Type: t.typ, Queue: o.queue, State: Pending, Payload: t.payload,
		MaxRetries: o.maxRetries, Timeout: o.timeout, EnqueuedAt: now, At: now,
		UniqueKey: o.uniqueKey, Idempotent: o.idemKey, RequestID: o.rid, Trace: o.trace,
	}
	p := prepared{info: info}
	if delay > 0 {
		m.ProcessAt = now.Add(delay).UnixMilli()
		info.State, info.At = Scheduled, time.UnixMilli(m.ProcessAt)
		p.delayMS = max(1, delay.Milliseconds())
	}
	if o.uniqueKey != "" {
		p.ukey, p.uttl = uniqueKey(o.queue, o.uniqueKey), max(1, o.uniqueTTL.Milliseconds())
	}
	if o.idemKey != "" {
		p.ikey = idempotencyKey(o.idemKey)
	}
	start := len(buf)
	buf = m.appendMsgpack(buf)
	p.msg = buf[start:len(buf):len(buf)]
	return p, buf
}

// Enqueue stores the task and returns its id and state. The call carries
// ctx's deadline; inside a worker or task handler the task also carries
// the request id and trace.
//
// A duplicate uniqueness key gives a *DuplicateError. A known idempotency
// key gives the first task's TaskInfo with Existing set and no error. Any
// other error means the task may or may not be stored (as with any
// network call): retry with an IdempotencyKey to be sure it is stored
// once.
func (c *Client) Enqueue(ctx context.Context, t *Task, opts ...Option) (*TaskInfo, error) {
	now := time.Now()
	rid, trace := traceOfCtx(ctx)
	p, _ := c.prepare(t, opts, now, rid, trace, new(TaskInfo), nil)
	if p.err != nil {
		return nil, p.err
	}
	pub := c.publish(p.info.Queue, now)
	if p.simple() {
		err := enqueueOneScript.run(ctx, c.rdb, prefix, pub, p.info.ID, p.info.Queue, p.msg).Err()
		if err != nil {
			c.errs.Inc()
			return nil, fmt.Errorf("queue: cannot enqueue a %s task: %w", t.typ, err)
		}
		return c.result(p, int64(0), p.info.ID)
	}
	args := p.generalArgs(append(make([]any, 0, 11), prefix, pub), c.o.IdempotencyTTL.Milliseconds())
	res, err := enqueueScript.run(ctx, c.rdb, args...).Slice()
	if err != nil {
		c.errs.Inc()
		return nil, fmt.Errorf("queue: cannot enqueue a %s task: %w", t.typ, err)
	}
	if len(res) != 2 {
		c.errs.Inc()
		return nil, fmt.Errorf("queue: cannot enqueue a %s task: unexpected reply %v", t.typ, res)
	}
	return c.result(p, res[0], res[1])
}

// result interprets one {code, id} pair of the enqueue script.
func (c *Client) result(p prepared, code, ref any) (*TaskInfo, error) {
	n, _ := code.(int64)
	id, _ := ref.(string)
	switch n {
	case 0:
		c.countEnqueued(p.info.Queue)
		return p.info, nil
	case 1:
		c.duplicates.Inc()
		return &TaskInfo{ID: id, Type: p.info.Type, Queue: p.info.Queue, Idempotent: p.info.Idempotent, Existing: true}, nil
	case 2:
		c.duplicates.Inc()
		return nil, &DuplicateError{Key: p.info.UniqueKey, ID: id}
	default:
		c.errs.Inc()
		return nil, fmt.Errorf("queue: unexpected enqueue script code %v for task %s", code, p.info.ID)
	}
}

// republish is how often a client adds a queue to the queues set again
// (consumers add the queues they serve too): once is enough unless Redis
// lost its data.
const republish = 10 * time.Second

// publish returns "1" when the enqueue should add q to the queues set.
func (c *Client) publish(q string, now time.Time) string {
	if v, ok := c.published.Load(q); ok && now.Sub(v.(time.Time)) < republish {
		return "0"
	}
	c.published.Store(q, now)
	return "1"
}

// Result is the outcome of one task of EnqueueBatch.
type Result struct {
	Info *TaskInfo // nil when Err is set
	Err  error     // a *DuplicateError, a validation error, or nil
}

// EnqueueBatch enqueues tasks in one round trip, opts applying to each.
// Each task gets its own Result, in order: one can be refused as a
// duplicate while the others are stored. err is set only when the round
// trip failed; then none, some or all may be stored.
func (c *Client) EnqueueBatch(ctx context.Context, tasks []*Task, opts ...Option) ([]Result, error) {
	now := time.Now()
	rid, trace := traceOfCtx(ctx)
	out := make([]Result, len(tasks))
	ps := make([]prepared, len(tasks))
	infos := make([]TaskInfo, len(tasks))
	var buf []byte
	var chunks [][]int // indexes of the tasks of each script call
	var cur []int
	for i, t := range tasks {
		if len(buf) > 1<<20 { // start a new buffer; the old one stays referenced by its tasks
			buf = nil
		}
		ps[i], buf = c.prepare(t, opts, now, rid, trace, &infos[i], buf)
		if ps[i].err != nil {
			out[i].Err = ps[i].err
			continue
		}
		cur = append(cur, i)
		if len(cur) == maxBatchChunk {
			chunks, cur = append(chunks, cur), nil
		}
	}
	if len(cur) > 0 {
		chunks = append(chunks, cur)
	}
	if len(chunks) == 0 {
		return out, nil
	}
	argv := make([][]any, len(chunks))
	scripts := make([]*script, len(chunks))
	for k, idx := range chunks {
		pub := "0"
		uniform := true
		first := ps[idx[0]]
		for _, i := range idx {
			if c.publish(ps[i].info.Queue, now) == "1" {
				pub = "1"
			}
			if !ps[i].simple() || ps[i].info.Queue != first.info.Queue {
				uniform = false
			}
		}
		if uniform {
			a := make([]any, 0, 3+2*len(idx))
			a = append(a, prefix, pub, first.info.Queue)
			for _, i := range idx {
				a = append(a, ps[i].info.ID, ps[i].msg)
			}
			argv[k], scripts[k] = a, enqueueNScript
			continue
		}
		a := make([]any, 0, 2+9*len(idx))
		a = append(a, prefix, pub)
		for _, i := range idx {
			a = ps[i].generalArgs(a, c.o.IdempotencyTTL.Milliseconds())
		}
		argv[k], scripts[k] = a, enqueueScript
	}
	replies, err := runPipelined(ctx, c.rdb, scripts, argv)
	if err != nil {
		c.errs.Inc()
		return nil, fmt.Errorf("queue: cannot enqueue a batch of %d tasks: %w", len(tasks), err)
	}
	for k, idx := range chunks {
		if scripts[k] == enqueueNScript {
			if n, _ := replies[k].(int64); int(n) != len(idx) {
				c.errs.Inc()
				return nil, fmt.Errorf("queue: cannot enqueue a batch: %v of %d tasks stored", replies[k], len(idx))
			}
			for _, i := range idx {
				out[i].Info, out[i].Err = c.result(ps[i], int64(0), ps[i].info.ID)
			}
			continue
		}
		res, _ := replies[k].([]any)
		if len(res) != 2*len(idx) {
			c.errs.Inc()
			return nil, fmt.Errorf("queue: cannot enqueue a batch: unexpected reply of %d values for %d tasks", len(res), len(idx))
		}
		for j, i := range idx {
			out[i].Info, out[i].Err = c.result(ps[i], res[2*j], res[2*j+1])
		}
	}
	return out, nil
}

// runPipelined runs ss[i] with argv[i] for every i in one pipeline and
// returns the replies. After NOSCRIPT (no call ran) it loads the script and tries
// once more.
func runPipelined(ctx context.Context, rdb redis.UniversalClient, ss []*script, argv [][]any) ([]any, error) {
	pipe := rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(argv))
	for i, a := range argv {
		cmds[i] = ss[i].EvalSha(ctx, pipe, nil, a...)
	}
	_, err := pipe.Exec(ctx)
	if err != nil && isNoScript(cmds) {
		// Redis lost its script cache (a restart): the calls that got
		// NOSCRIPT did not run; send them again with the script's body.
		retry := rdb.Pipeline()
		for i, cmd := range cmds {
			if isNoScript(cmds[i : i+1]) {
				cmds[i] = ss[i].Eval(ctx, retry, nil, argv[i]...)
			} else if cmd.Err() != nil {
				return nil, cmd.Err()
			}
		}
		_, err = retry.Exec(ctx)
	}
	if err != nil {
		return nil, err
	}
	out := make([]any, len(cmds))
	for i, cmd := range cmds {
		out[i] = cmd.Val()
	}
	return out, nil
}

func isNoScript(cmds []*redis.Cmd) bool {
	for _, c := range cmds {
		if err := c.Err(); err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
			return true
		}
	}
	return false
}

// toInt64 reads an integer from a script reply (an int64, or a string
// for values that went through HMGET).
func toInt64(v any) int64 {
	switch x := v.(type) {
	case int64:
		return x
	case string:
		n, _ := strconv.ParseInt(x, 10, 64)
		return n
	}
	return 0
}

// traceOf returns the trace a task handler should see: the task's, plus a
// hop for this run.
func traceOf(trace []wire.Hop, hop wire.Hop) []wire.Hop {
	n := len(trace)
	return append(trace[:n:n], hop)
}
