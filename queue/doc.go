// Package queue is Shoal's Redis-backed task queue: work that must not
// block a reply (a slow write to a database, a file, a third-party API) is
// enqueued as a task, and queue consumers run it later, at least once.
//
// # Enqueue
//
// A task is a type, which names its handler, and a msgpack payload:
//
//	rdb := queue.NewRedis(queue.RedisOptions{Addr: "127.0.0.1:6379"})
//	client := queue.NewClient(rdb, queue.ClientOptions{})
//
//	task, err := queue.NewTask("email:welcome", Welcome{UserID: 42})
//	info, err := client.Enqueue(ctx, task,
//		queue.Queue("mail"),                    // default "default"
//		queue.MaxRetries(5),                    // default 25
//		queue.Timeout(time.Minute),             // per run; default 30m
//		queue.ProcessIn(10*time.Second),        // or ProcessAt(t)
//		queue.Unique("welcome:42", time.Hour),  // a duplicate is refused: *DuplicateError
//		queue.IdempotencyKey(wire.Get(req.Headers, "Idempotency-Key")), // a repeat returns the first task
//	)
//
// Inside a worker handler, pass the handler's ctx: the enqueue is bounded
// by the request's deadline, and the task carries the request id and the
// trace (workers.TraceFrom, read through internal/reqctx), which the consumer's handler sees. A batch is
// one round trip:
//
//	results, err := client.EnqueueBatch(ctx, tasks) // one Result (Info or Err) per task
//
// # Consume
//
// Handlers are registered per task type on a ServeMux, as http.ServeMux
// routes paths:
//
//	mux := queue.NewServeMux()
//	mux.Handle("email:welcome", queue.Typed(func(ctx context.Context, t *queue.Task, w Welcome) error {
//		rid, _, _ := queue.TraceFrom(ctx) // the request that enqueued it
//		return send(ctx, w, t.ID())       // ctx ends at the task's timeout
//	}))
//	c, err := queue.NewConsumer(rdb, queue.ConsumerOptions{
//		Queues:      map[string]int{"critical": 6, "default": 3, "mail": 1},
//		Concurrency: 10,
//		Lease:       30 * time.Second,
//	}, mux)
//	err = c.Run(ctx) // until ctx ends; then drains
//
// What a consumer guarantees:
//
//   - at most Concurrency handlers run at once; each gets a context that
//     ends at the task's timeout; a panic is a failure, not a crash;
//   - a fetched task is leased to the consumer, which extends the lease
//     while the task runs. A consumer that dies (kill -9, a lost host)
//     stops extending; when the lease runs out, any consumer's periodic
//     maintenance puts the task back, counted as a retry, and it runs
//     elsewhere;
//   - a failure is retried after DefaultRetryDelay (exponential, with
//     jitter) until the task's retries are spent; then, or at once for an
//     error wrapping SkipRetry, an unknown type (ErrUnknownType) or a
//     payload that does not decode (ErrBadPayload), the task goes to the
//     dead-letter set with its last error, where the Inspector (`shoal
//     queue`) lists, replays or deletes it;
//   - queues are served by weight, or strictly by priority, and can be
//     paused.
//
// # At least once
//
// Delivery is at least once: a consumer can die after a handler's effect
// but before the outcome is stored, and then the task runs again. Make
// effects idempotent: key what a handler writes by t.ID(), as the
// persistence example (workers/example/persist.go) keys its rows, and a
// second run rewrites the same row. A client that is unsure whether its
// enqueue went through (a timeout) retries with the same IdempotencyKey
// and gets the first task back instead of a second one.
//
// # Atomic and durable
//
// Every move of a task between pending, active, scheduled, retry, dead and
// done is one Lua script, so a task is always in exactly one place; the
// key layout and the scripts are in docs/queue.md. With Redis's AOF on
// (appendonly yes, appendfsync everysec, as Shoal runs it), an
// acknowledged enqueue survives a Redis restart; appendfsync always makes
// it survive a crash of the host too.
//
// Metrics (Prometheus text, VictoriaMetrics/metrics sets) are listed at
// consumerMetrics; the client adds shoal_queue_enqueued_total{queue}.
package queue
