package config

import (
	"regexp"
	"strconv"
	"time"
)

// Redis says where the task queue's Redis is. Every process that enqueues
// or consumes tasks reads it.
type Redis struct {
	// Addr is the host:port of redis-server. Default "127.0.0.1:6379".
	// Environment: SHOAL_REDIS_ADDR.
	Addr string `yaml:"addr"`
	// Password is sent with AUTH when not empty. Default "".
	// Environment: SHOAL_REDIS_PASSWORD.
	Password string `yaml:"password"`
	// DB is the database number (SELECT). 0 or more. Default 0.
	DB int `yaml:"db"`
	// Timeout bounds connecting and each command. Positive. Default 3s.
	Timeout Duration `yaml:"timeout"`
}

// Queue configures the task queue: the defaults of enqueued tasks and the
// queue consumers (`shoal consumer NAME`).
type Queue struct {
	// Queues are the queues consumers serve, with their weights: a
	// consumer fetches from a queue with a probability proportional to
	// its weight, or strictly by weight when Strict is set. Names are
	// 1-64 of a-z 0-9 . _ -, starting with a letter or digit; weights
	// 1-1000. Default [{name: default, weight: 1}].
	Queues []QueueWeight `yaml:"queues"`
	// Strict serves queues in strict priority: higher weight first, a
	// lower one only when every higher one is empty. Default false.
	Strict bool `yaml:"strict"`
	// Concurrency is how many tasks one consumer process runs at once.
	// Positive. Default 10.
	Concurrency int `yaml:"concurrency"`
	// Lease is how long a consumer holds a task before another may take
	// it; the consumer extends it every lease/3 while the task runs, so a
	// consumer that dies loses its tasks after at most this long. At
	// least 100ms. Default 30s.
	Lease Duration `yaml:"lease"`
	// Poll is how often due scheduled and retry tasks are promoted and
	// expired leases recovered; it also bounds an idle consumer's wait.
	// At least 10ms. Default 1s.
	Poll Duration `yaml:"poll"`
	// MaxRetries is the retries of a task that sets none. 0 or more.
	// Default 25.
	MaxRetries int `yaml:"max_retries"`
	// Timeout is the deadline of one run of a task that sets none.
	// Positive. Default 30m.
	Timeout Duration `yaml:"timeout"`
	// ShutdownTimeout is how long running tasks may finish after
	// SIGTERM; the rest go back to their queue. Positive. Default 10s.
	ShutdownTimeout Duration `yaml:"shutdown_timeout"`
	// IdempotencyTTL is how long an idempotency key maps to its task.
	// Positive. Default 24h.
	IdempotencyTTL Duration `yaml:"idempotency_ttl"`
	// Metrics is the host:port of a consumer's /metrics; "" turns it off
	// (a flag overrides). Default "".
	Metrics string `yaml:"metrics"`
}

// QueueWeight is one queue a consumer serves.
type QueueWeight struct {
	// Name of the queue. Required.
	Name string `yaml:"name"`
	// Weight is the queue's share of fetches, 1-1000. Default 1.
	Weight int `yaml:"weight"`
}

// Limits of the queue settings.
const (
	MinLease       = 100 * time.Millisecond // queue.lease
	MinPoll        = 10 * time.Millisecond  // queue.poll
	MaxQueueWeight = 1000                   // queue.queues[].weight
	maxQueueName   = 64
)

var queueNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)

func defaultRedis() Redis {
	return Redis{Addr: "127.0.0.1:6379", Timeout: Duration(3 * time.Second)}
}

func defaultQueue() Queue {
	return Queue{
		Queues:          []QueueWeight{{Name: "default", Weight: 1}},
		Concurrency:     10,
		Lease:           Duration(30 * time.Second),
		Poll:            Duration(time.Second),
		MaxRetries:      25,
		Timeout:         Duration(30 * time.Minute),
		ShutdownTimeout: Duration(10 * time.Second),
		IdempotencyTTL:  Duration(24 * time.Hour),
	}
}

// checkQueue validates the redis and queue sections.
func (d *decoder) checkQueue(c *Config) {
	d.address("redis.addr", c.Redis.Addr, false)
	d.minInt("redis.db", c.Redis.DB, 0)
	d.positive("redis.timeout", c.Redis.Timeout)

	q := &c.Queue
	if len(q.Queues) == 0 {
		d.problem("queue.queues", "must name at least one queue, such as [{name: default, weight: 1}]")
	}
	seen := make(map[string]int)
	for i, w := range q.Queues {
		p := "queue.queues[" + strconv.Itoa(i) + "]"
		j, dup := seen[w.Name]
		switch {
		case w.Name == "":
			d.problem(p+".name", "is required")
		case len(w.Name) > maxQueueName || !queueNameRE.MatchString(w.Name):
			d.problem(p+".name", "must be 1-%d of a-z 0-9 . _ -, starting with a letter or digit, got %s", maxQueueName, quote(w.Name))
		case dup:
			d.problem(p+".name", "%s is already queue.queues[%d]%s", quote(w.Name), j, d.onLine("queue.queues["+strconv.Itoa(j)+"]"))
		default:
			seen[w.Name] = i
		}
		if !d.isSet(p + ".weight") {
			q.Queues[i].Weight, w.Weight = 1, 1
		}
		if w.Weight < 1 || w.Weight > MaxQueueWeight {
			d.problem(p+".weight", "must be from 1 to %d, got %d", MaxQueueWeight, w.Weight)
		}
	}
	d.minInt("queue.concurrency", q.Concurrency, 1)
	d.atLeast("queue.lease", q.Lease, MinLease)
	d.atLeast("queue.poll", q.Poll, MinPoll)
	d.minInt("queue.max_retries", q.MaxRetries, 0)
	d.positive("queue.timeout", q.Timeout)
	d.positive("queue.shutdown_timeout", q.ShutdownTimeout)
	d.positive("queue.idempotency_ttl", q.IdempotencyTTL)
	d.address("queue.metrics", q.Metrics, true)
}
