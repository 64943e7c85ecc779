package queue

// The key layout (docs/queue.md has it with every transition). Everything
// lives under one prefix; the Lua scripts build task and per-queue keys
// the same way (see scripts.go), so the two must change together.
//
//	shoal:q:t:<id>              hash   one task: m (message), s (state; none: pending), r (retried),
//	                                   q (queue, once it left pending), at (time of
//	                                   the state), e (last error), u (full unique key)
//	shoal:q:{<queue>}:pending   list   ids ready to run; LPUSH in, RPOP out (FIFO)
//	shoal:q:{<queue>}:active    zset   ids leased to a consumer, score = lease expiry (ms)
//	shoal:q:{<queue>}:owner     hash   id → lease owner, for every active id
//	shoal:q:{<queue>}:scheduled zset   score = process-at (ms)
//	shoal:q:{<queue>}:retry     zset   score = retry-at (ms)
//	shoal:q:{<queue>}:dead      zset   score = died-at (ms)
//	shoal:q:{<queue>}:done      zset   score = end of retention (ms)
//	shoal:q:{<queue>}:notify    list   at most one token: "pending has work"
//	shoal:q:{<queue>}:stats     hash   counters: done failed retried dead recovered orphans
//	shoal:q:queues              set    every queue enqueued to or served
//	shoal:q:paused              set    paused queues
//	shoal:q:u:<queue>:<key>     string uniqueness lock, value = task id, PX = TTL
//	shoal:q:i:<key>             string idempotency key, value = first task id, PX = TTL
const prefix = "shoal:q:"

func taskKey(id string) string          { return prefix + "t:" + id }
func queueKey(q, suffix string) string  { return prefix + "{" + q + "}:" + suffix }
func uniqueKey(q, key string) string    { return prefix + "u:" + q + ":" + key }
func idempotencyKey(key string) string  { return prefix + "i:" + key }
func notifyKey(q string) string         { return queueKey(q, "notify") }
func pendingKey(q string) string        { return queueKey(q, "pending") }
func stateKey(q string, s State) string { return queueKey(q, string(s)) }

const (
	queuesKey = prefix + "queues"
	pausedKey = prefix + "paused"
)

const (
	maxQueueName = 64
	maxTaskType  = 128
	maxKey       = 256 // uniqueness and idempotency keys
)

// ValidQueue reports whether name can name a queue: 1-64 of a-z 0-9 . _ -,
// starting with a letter or digit.
func ValidQueue(name string) bool {
	if len(name) == 0 || len(name) > maxQueueName {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		lowerOrDigit := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !lowerOrDigit && (i == 0 || c != '.' && c != '_' && c != '-') {
			return false
		}
	}
	return true
}

// ValidType reports whether name can be a task type: 1-128 of letters,
// digits and . _ : / -, starting with a letter or digit.
func ValidType(name string) bool {
	if len(name) == 0 || len(name) > maxTaskType {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '.' && c != '_' && c != ':' && c != '/' && c != '-') {
			return false
		}
	}
	return true
}
