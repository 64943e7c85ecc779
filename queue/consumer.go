package queue

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"runtime/debug"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"
)

// Defaults of ConsumerOptions.
const (
	DefaultConcurrency     = 10
	DefaultLease           = 30 * time.Second
	DefaultPoll            = time.Second
	DefaultShutdownTimeout = 10 * time.Second
)

// Batch sizes of the scripts a consumer runs.
const (
	maxAckBatch    = 1000
	maxExtendBatch = 1000
	maintainLimit  = 1000
	maxFetch       = 1000
	callTimeout    = 10 * time.Second // one script call; Redis answers in microseconds
)

// ConsumerOptions configure a Consumer.
type ConsumerOptions struct {
	// Queues maps the queues to serve to their weights (1-1000). Default
	// {"default": 1}.
	Queues map[string]int
	// Strict serves queues in strict priority, highest weight first;
	// otherwise each fetch tries them in a random order weighted by
	// Queues.
	Strict bool
	// Concurrency is how many tasks run at once. Default 10.
	Concurrency int
	// Prefetch is how many tasks may wait, fetched and leased, for a free
	// handler: fetching ahead lets one round trip bring several tasks and
	// keeps handlers busy while the next fetch is on its way; but a task
	// waiting here is not available to another consumer. Default
	// 2×Concurrency; negative means none.
	Prefetch int
	// Lease is how long a fetched task stays this consumer's without
	// being extended. It is extended every Lease/3. Default 30s.
	Lease time.Duration
	// Poll is how often this consumer promotes due scheduled and retry
	// tasks and recovers expired leases (any consumer may do it for all).
	// Default 1s.
	Poll time.Duration
	// ShutdownTimeout is how long running tasks may finish once Run's
	// ctx ends; then their contexts are cancelled and, if they still run,
	// they are given back to their queue. Default 10s.
	ShutdownTimeout time.Duration
	// RetryDelay says how long a failed task waits before its next run.
	// Default DefaultRetryDelay.
	RetryDelay func(retried int, err error, t *Task) time.Duration
	// Name identifies this consumer in logs, leases and trace hops.
	// Default "host/pid".
	Name   string
	Logger *slog.Logger
	// Metrics receives the consumer's metrics; default a new set.
	Metrics *metrics.Set
	// OnDone is called after a task's success is stored, OnDead after a
	// task is stored in the dead-letter set, with the error it died of.
	// They run on the acknowledging goroutine: keep them short (hand off
	// to a channel). A hook for events; nil means none.
	OnDone func(t *Task, took time.Duration)
	OnDead func(t *Task, err error)
}

// DefaultRetryDelay is exponential backoff with jitter: a random delay in
// [d/2, d) where d is 1s doubled per retry, capped at 1h.
func DefaultRetryDelay(retried int, _ error, _ *Task) time.Duration {
	d := time.Hour
	if retried < 12 {
		d = min(time.Hour, time.Second<<retried)
	}
	return d/2 + mrand.N(d/2)
}

// Consumer fetches tasks from Redis and runs them with a Handler
// (usually a *ServeMux). Run it once.
type Consumer struct {
	rdb      redis.UniversalClient
	o        ConsumerOptions
	h        Handler
	log      *slog.Logger
	owner    string // lease owner: name plus a random suffix, unique per Consumer
	procName string

	queues       []string // served, sorted by weight (desc) then name
	weights      []int
	notifyKs     []string
	maintainArgs []any
	capacity     int // Concurrency + Prefetch: the most tasks held at once
	minBatch     int

	tasks chan *Task    // fetched, waiting for a handler
	freed chan struct{} // capacity came back

	// Finished tasks waiting to be stored: the acker takes them all at
	// once. Capacity comes back when a task finishes, not when its
	// outcome is stored, so fetching and acknowledging overlap.
	ackMu  sync.Mutex
	acks   []ackItem
	ackSig chan struct{}

	mu   sync.Mutex
	held map[string]*heldTask // every task fetched and not yet acknowledged

	nbusy    atomic.Int64 // fetched and not finished: waiting or running
	nheld    atomic.Int64 // fetched and not acknowledged
	running  atomic.Int64
	stopping atomic.Bool
	ran      atomic.Bool
	hard     context.Context // handler contexts derive from it; cancelled at shutdown timeout

	giveBackMu sync.Mutex
	giveBack   []*Task

	m *consumerMetrics
}

type heldTask struct {
	t          *Task
	bad        error                   // the message did not decode: the task goes to dead letters unrun
	cancel     context.CancelCauseFunc // set while the handler runs
	deadline   time.Time               // of the run, set while running
	leaseUntil time.Time               // this consumer's estimate of its lease
}

type ackItem struct {
	t       *Task
	outcome string // "d" done, "r" retry, "x" dead
	num     int64
	err     error
	took    time.Duration
}

// NewConsumer returns a consumer of rdb's tasks that runs them with h.
func NewConsumer(rdb redis.UniversalClient, o ConsumerOptions, h Handler) (*Consumer, error) {
	if rdb == nil || h == nil {
		return nil, invalid("NewConsumer needs a Redis client and a handler")
	}
	if len(o.Queues) == 0 {
		o.Queues = map[string]int{DefaultQueue: 1}
	}
	for q, w := range o.Queues {
		if !ValidQueue(q) {
			return nil, invalid("queue name %q: want 1-%d of a-z 0-9 . _ -, starting with a letter or digit", q, maxQueueName)
		}
		if w < 1 || w > 1000 {
			return nil, invalid("queue %q: weight %d, want 1-1000", q, w)
		}
	}
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultConcurrency
	}
	switch {
	case o.Prefetch == 0:
		o.Prefetch = 2 * o.Concurrency
	case o.Prefetch < 0:
		o.Prefetch = 0
	}
	if o.Lease <= 0 {
		o.Lease = DefaultLease
	}
	if o.Lease < 100*time.Millisecond {
		return nil, invalid("lease %v: want at least 100ms", o.Lease)
	}
	if o.Poll <= 0 {
		o.Poll = DefaultPoll
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = DefaultShutdownTimeout
	}
	if o.RetryDelay == nil {
		o.RetryDelay = DefaultRetryDelay
	}
	host, _ := os.Hostname()
	process := fmt.Sprintf("%s/%d", host, os.Getpid())
	if o.Name == "" {
		o.Name = process
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Metrics == nil {
		o.Metrics = metrics.NewSet()
	}
	var rnd [6]byte
	rand.Read(rnd[:])
	c := &Consumer{
		rdb: rdb, o: o, h: h, procName: process,
		owner:    o.Name + "#" + hex.EncodeToString(rnd[:]),
		capacity: o.Concurrency + o.Prefetch,
		held:     make(map[string]*heldTask),
		freed:    make(chan struct{}, 1),
		ackSig:   make(chan struct{}, 1),
	}
	c.log = o.Logger.With("consumer", c.owner)
	c.minBatch = max(1, c.capacity/4)
	c.tasks = make(chan *Task, c.capacity)
	for q := range o.Queues {
		c.queues = append(c.queues, q)
	}
	sort.Slice(c.queues, func(i, j int) bool {
		a, b := c.queues[i], c.queues[j]
		if o.Queues[a] != o.Queues[b] {
			return o.Queues[a] > o.Queues[b]
		}
		return a < b
	})
	for _, q := range c.queues {
		c.weights = append(c.weights, o.Queues[q])
		c.notifyKs = append(c.notifyKs, notifyKey(q))
	}
	c.maintainArgs = []any{prefix, maintainLimit}
	for _, q := range c.queues {
		c.maintainArgs = append(c.maintainArgs, q)
	}
	c.m = newConsumerMetrics(o.Metrics, c)
	return c, nil
}

// Owner is the name this consumer's leases carry.
func (c *Consumer) Owner() string { return c.owner }

// Run serves until ctx ends, then drains: it fetches nothing more, gives
// back the tasks it fetched but did not start, lets running ones finish
// for at most ShutdownTimeout (then cancels their contexts, and gives back
// those that still run), stores the outcomes and returns. A Redis that is
// down, at start or later, is retried with backoff and counted in
// shoal_queue_redis_errors_total; Run returns only when ctx ends.
func (c *Consumer) Run(ctx context.Context) error {
	if !c.ran.CompareAndSwap(false, true) {
		return errors.New("queue: Consumer.Run called twice")
	}
	c.checkRedis()
	hard, hardCancel := context.WithCancelCause(context.Background())
	defer hardCancel(nil)
	c.hard = hard

	var handlers sync.WaitGroup
	for range c.o.Concurrency {
		handlers.Add(1)
		go func() {
			defer handlers.Done()
			c.handlerLoop()
		}()
	}
	handlersDone := make(chan struct{})
	go func() { handlers.Wait(); close(handlersDone) }()

	ackStop := make(chan struct{})   // no more acks will come (or we give up on the rest)
	ackGiveUp := make(chan struct{}) // stop retrying a batch Redis refuses
	ackDone := make(chan struct{})
	go func() { c.acker(ackStop, ackGiveUp); close(ackDone) }()

	bg, bgCancel := context.WithCancel(context.Background())
	var bgWG sync.WaitGroup
	bgWG.Add(2)
	go func() { defer bgWG.Done(); c.extender(bg) }()
	go func() { defer bgWG.Done(); c.maintainer(bg) }()

	var fetching sync.WaitGroup
	for range fetchers {
		fetching.Add(1)
		go func() { defer fetching.Done(); c.fetcher(ctx) }()
	}

	c.log.Info("consumer serving", "queues", c.o.Queues, "strict", c.o.Strict, "concurrency", c.o.Concurrency,
		"prefetch", c.o.Prefetch, "lease", c.o.Lease)
	<-ctx.Done()
	c.stopping.Store(true)
	fetching.Wait()
	close(c.tasks) // handlers give back what is left in it instead of running it
	c.log.Info("draining", "running", c.running.Load())

	abandoned := false
	select {
	case <-handlersDone:
	case <-time.After(c.o.ShutdownTimeout):
		c.log.Warn("shutdown timeout: cancelling running tasks", "running", c.running.Load())
		hardCancel(errors.New("queue: consumer shutting down"))
		select {
		case <-handlersDone:
		case <-time.After(time.Second):
			abandoned = true
		}
	}
	back := c.takeGiveBack()
	if abandoned {
		// Handlers that ignore their context: give their tasks back so
		// that others run them now; an outcome they report later is
		// refused as late.
		c.mu.Lock()
		for _, h := range c.held {
			if h.cancel != nil {
				back = append(back, h.t)
			}
		}
		c.mu.Unlock()
		c.log.Error("handlers ignore their cancelled context; giving their tasks back", "tasks", len(back))
	}
	if len(back) > 0 {
		if err := c.requeue(back); err != nil {
			c.log.Error("cannot give tasks back; they run again when their lease expires", "tasks", len(back), "err", err)
		} else {
			c.log.Info("gave back tasks not started", "tasks", len(back))
		}
	}
	close(ackStop)
	select {
	case <-ackDone:
	case <-time.After(5 * time.Second):
		close(ackGiveUp)
		<-ackDone
	}
	bgCancel()
	bgWG.Wait()
	c.log.Info("consumer stopped")
	return nil
}

// checkRedis logs whether Redis answers and whether it persists tasks.
func (c *Consumer) checkRedis() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.rdb.Ping(ctx).Err(); err != nil {
		c.m.redisErr("ping")
		c.log.Error("redis is unreachable; retrying in the background", "err", err)
		return
	}
	c.m.redisUp.Store(1)
	v, err := c.rdb.ConfigGet(ctx, "appendonly").Result()
	if err == nil && v["appendonly"] == "no" {
		c.log.Warn("redis runs without AOF (appendonly no): a Redis restart loses queued tasks; see docs/queue.md")
	}
}

// ---- fetching ----

// fetchers is how many fetch calls a consumer keeps in flight: while one
// waits for its reply, the other can already ask for the capacity that
// freed meanwhile.
const fetchers = 2

// fetcher fetches tasks while there is capacity, and waits on the notify
// lists when the queues are empty.
func (c *Consumer) fetcher(ctx context.Context) {
	backoff := newBackoff()
	var order []any
	for {
		n := c.reserve(ctx)
		if n == 0 {
			return
		}
		order = c.order(order[:0])
		got, err := c.fetch(order, n)
		c.unreserve(n - got)
		if err != nil {
			c.m.redisErr("fetch")
			backoff.wait(ctx, c.log, "fetch", err)
			continue
		}
		backoff.reset(c.log)
		if got == 0 {
			c.idle(ctx, backoff)
		}
	}
}

// reserve waits until at least minBatch slots are free (or any, when no
// task waits for a handler) and reserves them all; 0 means ctx ended.
func (c *Consumer) reserve(ctx context.Context) int {
	for ctx.Err() == nil {
		busy := c.nbusy.Load()
		free := c.capacity - int(busy)
		if free > 0 && (free >= c.minBatch || len(c.tasks) == 0) {
			if c.nbusy.CompareAndSwap(busy, busy+int64(free)) {
				return free
			}
			continue
		}
		select {
		case <-c.freed:
		case <-ctx.Done():
		}
	}
	return 0
}

// unreserve returns reserved slots that a fetch did not fill.
func (c *Consumer) unreserve(n int) {
	if n > 0 {
		c.nbusy.Add(-int64(n))
		select {
		case c.freed <- struct{}{}:
		default:
		}
	}
}

// order returns the queues to try, in order.
func (c *Consumer) order(dst []any) []any {
	if c.o.Strict || len(c.queues) == 1 {
		for _, q := range c.queues {
			dst = append(dst, q)
		}
		return dst
	}
	// Weighted sampling without replacement.
	var used uint64
	total := 0
	for _, w := range c.weights {
		total += w
	}
	for range c.queues {
		r := mrand.IntN(total)
		for i, w := range c.weights {
			if used&(1<<i) != 0 {
				continue
			}
			if r < w {
				used |= 1 << i
				total -= w
				dst = append(dst, c.queues[i])
				break
			}
			r -= w
		}
	}
	return dst
}

// fetch leases up to n tasks and hands them to the handlers.
func (c *Consumer) fetch(order []any, n int) (int, error) {
	args := make([]any, 0, 4+len(order))
	args = append(args, prefix, c.owner, c.o.Lease.Milliseconds(), min(n, maxFetch))
	args = append(args, order...)
	sent := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	res, err := fetchScript.run(ctx, c.rdb, args...).Slice()
	cancel()
	if err != nil {
		return 0, err
	}
	const per = 6 // id, queue, msg, retried, ready-at, last error
	got := (len(res) - 1) / per
	if got == 0 {
		return 0, nil
	}
	leaseUntil := sent.Add(c.o.Lease)
	batch := make([]heldTask, got)
	c.mu.Lock()
	for i := range got {
		r := res[1+per*i : 1+per*(i+1)]
		id, _ := r[0].(string)
		q, _ := r[1].(string)
		raw, _ := r[2].(string)
		h := &batch[i]
		h.leaseUntil = leaseUntil
		m, err := decodeMessage([]byte(raw))
		if err != nil {
			h.t, h.bad = &Task{id: id, queue: q, typ: "?"}, err
		} else {
			h.t = &Task{typ: m.Type, payload: m.Payload, id: id, queue: q,
				retried: int(toInt64(r[3])), maxRetries: m.MaxRetries,
				timeout: time.Duration(m.Timeout) * time.Millisecond, enqueued: time.UnixMilli(m.Enqueued),
				readyAt: readyAt(toInt64(r[4]), &m), rid: m.RID, trace: m.Trace,
				retention: time.Duration(m.Retention) * time.Millisecond, unique: m.Unique}
			h.t.lastErr, _ = r[5].(string)
		}
		c.held[id] = h
	}
	c.mu.Unlock()
	c.nheld.Add(int64(got)) // nbusy counts them already: they were reserved
	for i := range batch {
		c.tasks <- batch[i].t // never blocks: the channel holds capacity tasks
	}
	return got, nil
}

// readyAt is when a task became ready: the time of its last move to
// pending (at, when the hash has it), else its process-at or enqueue time.
func readyAt(at int64, m *message) time.Time {
	switch {
	case at > 0:
		return time.UnixMilli(at)
	case m.ProcessAt > 0:
		return time.UnixMilli(m.ProcessAt)
	}
	return time.UnixMilli(m.Enqueued)
}

// idle waits for a notify token on any served queue, for at most Poll
// (and at most 1s, below any sane Redis read timeout).
func (c *Consumer) idle(ctx context.Context, b *backoff) {
	wait := min(c.o.Poll, time.Second)
	args := make([]any, 0, 2+len(c.notifyKs))
	args = append(args, "BRPOP")
	for _, k := range c.notifyKs {
		args = append(args, k)
	}
	args = append(args, strconv.FormatFloat(wait.Seconds(), 'f', 3, 64))
	err := c.rdb.Do(context.Background(), args...).Err()
	if err != nil && err != redis.Nil {
		c.m.redisErr("wait")
		b.wait(ctx, c.log, "wait", err)
	}
}

// ---- running ----

func (c *Consumer) handlerLoop() {
	for t := range c.tasks {
		if c.stopping.Load() {
			c.giveBackMu.Lock()
			c.giveBack = append(c.giveBack, t)
			c.giveBackMu.Unlock()
			c.nbusy.Add(-1)
			continue
		}
		c.process(t)
	}
}

func (c *Consumer) takeGiveBack() []*Task {
	c.giveBackMu.Lock()
	defer c.giveBackMu.Unlock()
	b := c.giveBack
	c.giveBack = nil
	return b
}

func (c *Consumer) process(t *Task) {
	c.mu.Lock()
	h := c.held[t.id]
	c.mu.Unlock()
	qm := c.m.queue(t.queue)
	if h != nil && h.bad != nil {
		c.log.Error("task message does not decode; sending it to dead letters", "task", t.id, "queue", t.queue, "err", h.bad)
		qm.badMessage.Inc()
		c.ack(ackItem{t: t, outcome: "x", err: h.bad})
		return
	}
	if t.retried > t.maxRetries {
		// Taken back from a consumer that lost it, with no retry left.
		c.m.leaseDead.Inc()
		c.ack(ackItem{t: t, outcome: "x", err: fmt.Errorf("%s; no retries left (retried %d of %d)", t.lastErr, t.retried, t.maxRetries)})
		return
	}
	start := time.Now()
	if !t.readyAt.IsZero() {
		qm.wait.Update(max(0, start.Sub(t.readyAt).Seconds()))
	}
	deadline := start.Add(t.timeout)
	ctx, cancel := context.WithCancelCause(c.hard)
	ctx, cancelDeadline := context.WithDeadline(ctx, deadline)
	ctx = context.WithValue(ctx, taskCtxKey{}, &taskCtx{t: t, process: c.procName, start: start})
	c.mu.Lock()
	if h != nil {
		h.cancel, h.deadline = cancel, deadline
	}
	c.mu.Unlock()

	c.running.Add(1)
	err := c.call(ctx, t)
	c.running.Add(-1)
	took := time.Since(start)
	leaseLost := errors.Is(context.Cause(ctx), ErrLeaseLost)
	c.mu.Lock()
	if h != nil {
		h.cancel = nil // not running any more: nothing to cancel or abandon
	}
	c.mu.Unlock()
	cancelDeadline()
	cancel(nil)
	qm.run.Update(took.Seconds())

	a := ackItem{t: t, err: err, took: took}
	switch {
	case err == nil:
		a.outcome, a.num = "d", t.retention.Milliseconds()
	case errors.Is(err, SkipRetry) || errors.Is(err, ErrUnknownType) || errors.Is(err, ErrBadPayload):
		a.outcome = "x"
	case t.retried >= t.maxRetries:
		a.outcome = "x"
		a.err = fmt.Errorf("%w (retried %d times; no retries left)", err, t.retried)
	default:
		a.outcome, a.num = "r", max(1, c.o.RetryDelay(t.retried, err, t).Milliseconds())
	}
	if errors.Is(err, ErrUnknownType) {
		qm.unknownType.Inc()
	}
	if errors.Is(err, ErrBadPayload) {
		qm.badPayload.Inc()
	}
	if leaseLost {
		c.log.Warn("task finished after its lease was lost; its outcome will be refused if another run took it",
			"task", t.id, "type", t.typ, "rid", t.rid)
	}
	c.ack(a)
}

// ack queues a finished task's outcome for the acker and frees its
// capacity.
func (c *Consumer) ack(a ackItem) {
	c.ackMu.Lock()
	c.acks = append(c.acks, a)
	c.ackMu.Unlock()
	select {
	case c.ackSig <- struct{}{}:
	default:
	}
	c.nbusy.Add(-1)
	select {
	case c.freed <- struct{}{}:
	default:
	}
}

// call runs the handler, turning a panic into an error.
func (c *Consumer) call(ctx context.Context, t *Task) (err error) {
	defer func() {
		if p := recover(); p != nil {
			c.m.panics.Inc()
			c.log.Error("task handler panicked", "task", t.id, "type", t.typ, "rid", t.rid, "panic", p, "stack", string(debug.Stack()))
			err = fmt.Errorf("task handler panicked: %v", p)
		}
	}()
	return c.h.ProcessTask(ctx, t)
}

// ---- acknowledging ----

// acker stores outcomes in batches: whatever finished while the last
// batch was in flight goes in the next one.
func (c *Consumer) acker(stop, giveUp <-chan struct{}) {
	var batch []ackItem
	for {
		stopped := false
		select {
		case <-c.ackSig:
		case <-stop:
			stopped = true
		}
		c.ackMu.Lock()
		batch, c.acks = c.acks, batch[:0]
		c.ackMu.Unlock()
		for b := batch; len(b) > 0; {
			n := min(len(b), maxAckBatch)
			c.commit(b[:n], giveUp)
			b = b[n:]
		}
		clear(batch) // drop the tasks for the GC
		if stopped {
			return
		}
	}
}

// commit stores a batch of outcomes, retrying while Redis refuses (until
// giveUp), then updates metrics, calls the hooks and frees capacity.
func (c *Consumer) commit(batch []ackItem, giveUp <-chan struct{}) {
	args := make([]any, 0, 2+6*len(batch))
	args = append(args, prefix, c.owner)
	for _, a := range batch {
		msg, u := "", ""
		if a.err != nil {
			msg = a.err.Error()
		}
		if a.t.unique != "" {
			u = uniqueKey(a.t.queue, a.t.unique)
		}
		args = append(args, a.t.id, a.t.queue, a.outcome, a.num, msg, u)
	}
	b := newBackoff()
	var late []any
	for {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		res, err := ackScript.run(ctx, c.rdb, args...).Slice()
		cancel()
		if err == nil {
			late = res
			b.reset(c.log)
			break
		}
		c.m.redisErr("ack")
		select {
		case <-giveUp:
			c.log.Error("cannot store task outcomes; the tasks run again when their leases expire", "tasks", len(batch), "err", err)
			c.release(batch)
			return
		default:
		}
		b.wait(context.Background(), c.log, "ack", err)
	}
	lateSet := make(map[string]bool, len(late))
	for _, v := range late {
		if id, ok := v.(string); ok {
			lateSet[id] = true
		}
	}
	for _, a := range batch {
		t := a.t
		qm := c.m.queue(t.queue)
		if lateSet[t.id] {
			c.m.lateAcks.Inc()
			c.log.Warn("outcome refused: the lease had expired and the task was taken back; it runs (or ran) again",
				"task", t.id, "type", t.typ, "rid", t.rid)
			continue
		}
		switch a.outcome {
		case "d":
			qm.processed.Inc()
			if c.o.OnDone != nil {
				c.o.OnDone(t, a.took)
			}
		case "r":
			qm.failed.Inc()
			qm.retried.Inc()
			c.log.Warn("task failed; will retry", "task", t.id, "type", t.typ, "queue", t.queue, "rid", t.rid,
				"retried", t.retried, "in", time.Duration(a.num)*time.Millisecond, "err", a.err)
		case "x":
			qm.failed.Inc()
			qm.dead.Inc()
			c.log.Error("task dead", "task", t.id, "type", t.typ, "queue", t.queue, "rid", t.rid,
				"retried", t.retried, "err", a.err)
			if c.o.OnDead != nil {
				c.o.OnDead(t, a.err)
			}
		}
	}
	c.release(batch)
}

// release forgets acknowledged tasks and frees their capacity.
func (c *Consumer) release(batch []ackItem) {
	c.mu.Lock()
	for _, a := range batch {
		delete(c.held, a.t.id)
	}
	c.mu.Unlock()
	c.nheld.Add(-int64(len(batch)))
}

// requeue gives tasks back to the head of their queues.
func (c *Consumer) requeue(ts []*Task) error {
	for len(ts) > 0 {
		n := min(len(ts), maxExtendBatch)
		args := make([]any, 0, 2+2*n)
		args = append(args, prefix, c.owner)
		for _, t := range ts[:n] {
			args = append(args, t.id, t.queue)
		}
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		err := requeueScript.run(ctx, c.rdb, args...).Err()
		cancel()
		if err != nil {
			c.m.redisErr("requeue")
			return err
		}
		c.mu.Lock()
		for _, t := range ts[:n] {
			delete(c.held, t.id)
		}
		c.mu.Unlock()
		c.nheld.Add(-int64(n))
		ts = ts[n:]
	}
	return nil
}

// ---- leases ----

// extender extends the leases of every held task every Lease/3. A task
// whose lease another consumer took (or that Redis no longer shows as
// ours) has its context cancelled with ErrLeaseLost; so does every
// running task whose lease ran out while Redis could not be reached.
func (c *Consumer) extender(ctx context.Context) {
	tick := time.NewTicker(c.o.Lease / 3)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		c.extendOnce()
	}
}

func (c *Consumer) extendOnce() {
	now := time.Now()
	type item struct{ id, q string }
	var items []item
	c.mu.Lock()
	for id, h := range c.held {
		// A run that outlived its deadline by a whole lease ignores its
		// context: stop extending, so that the task runs elsewhere.
		if h.cancel != nil && now.After(h.deadline.Add(c.o.Lease)) {
			continue
		}
		items = append(items, item{id, h.t.queue})
	}
	c.mu.Unlock()
	if len(items) == 0 {
		return
	}
	var lost []string
	var failed error
	for start := 0; start < len(items); start += maxExtendBatch {
		chunk := items[start:min(len(items), start+maxExtendBatch)]
		args := make([]any, 0, 3+2*len(chunk))
		args = append(args, prefix, c.owner, c.o.Lease.Milliseconds())
		for _, it := range chunk {
			args = append(args, it.id, it.q)
		}
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		res, err := extendScript.run(ctx, c.rdb, args...).Slice()
		cancel()
		if err != nil {
			failed = err
			break
		}
		until := now.Add(c.o.Lease)
		c.mu.Lock()
		for _, it := range chunk {
			if h := c.held[it.id]; h != nil {
				h.leaseUntil = until
			}
		}
		c.mu.Unlock()
		for _, v := range res {
			if id, ok := v.(string); ok {
				lost = append(lost, id)
			}
		}
	}
	if failed != nil {
		c.m.redisErr("extend")
		c.log.Warn("cannot extend leases", "tasks", len(items), "err", failed)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, id := range lost {
		if h := c.held[id]; h != nil && h.cancel != nil {
			h.cancel(ErrLeaseLost)
			c.m.leaseLost.Inc()
		}
	}
	for _, h := range c.held {
		if h.cancel != nil && now.After(h.leaseUntil) {
			h.cancel(ErrLeaseLost)
			c.m.leaseLost.Inc()
		}
	}
}

// ---- maintenance ----

func (c *Consumer) maintainer(ctx context.Context) {
	tick := time.NewTicker(c.o.Poll)
	defer tick.Stop()
	for {
		c.maintainOnce()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (c *Consumer) maintainOnce() {
	for round := 0; round < 100; round++ {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		res, err := maintainScript.run(ctx, c.rdb, c.maintainArgs...).Slice()
		cancel()
		if err != nil {
			c.m.redisErr("maintain")
			if c.m.redisUp.Swap(0) == 1 {
				c.log.Error("redis unreachable", "err", err)
			}
			return
		}
		if c.m.redisUp.Swap(1) == 0 {
			c.log.Info("redis reachable")
		}
		again := false
		for i := 0; i+9 < len(res); i += 10 {
			q, _ := res[i].(string)
			d := c.m.depth(q)
			for j := range States {
				d.n[j].Store(toInt64(res[i+1+j]))
			}
			d.paused.Store(toInt64(res[i+7]))
			promoted, recovered := toInt64(res[i+8]), toInt64(res[i+9])
			c.m.promoted.Add(int(promoted))
			c.m.recovered.Add(int(recovered))
			if recovered > 0 {
				c.log.Warn("took back tasks whose lease expired", "queue", q, "tasks", recovered)
			}
			if promoted >= maintainLimit || recovered >= maintainLimit {
				again = true
			}
		}
		if !again {
			return
		}
	}
}

// ---- backoff ----

// backoff spaces out retries against an unreachable Redis and logs the
// first failure and the recovery, not every attempt.
type backoff struct {
	d      time.Duration
	failed bool
}

func newBackoff() *backoff { return &backoff{d: 50 * time.Millisecond} }

func (b *backoff) wait(ctx context.Context, log *slog.Logger, op string, err error) {
	if !b.failed {
		b.failed = true
		log.Error("redis call failed; retrying with backoff", "op", op, "err", err)
	}
	select {
	case <-time.After(b.d):
	case <-ctx.Done():
	}
	b.d = min(2*b.d, 2*time.Second)
}

func (b *backoff) reset(log *slog.Logger) {
	if b.failed {
		log.Info("redis calls succeed again")
	}
	b.failed = false
	b.d = 50 * time.Millisecond
}
