package queue

import (
	"context"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Every state change of a task is one of these Lua scripts, so that it is
// atomic: a task is always in exactly one place. docs/queue.md describes
// each script with the transitions it makes.
//
// A task is active while its id is in its queue's active zset (score =
// lease expiry) and its owner in the queue's owner hash; its hash keeps
// the state it had before (pending), so that fetching and acknowledging a
// batch cost one command per task (HMGET on fetch, DEL on done) plus a few
// per batch. Lease times are Redis's clock (TIME), so consumers on hosts
// with skewed clocks agree on them.
//
// Scripts take no KEYS: they build key names from the prefix and the
// queue names and ids in ARGV, as they must for ids popped inside the
// script. That rules out Redis Cluster (as asynq's layout does for
// multi-queue scripts); one Redis, with a replica for failover, is the
// deployment this targets.

// luaCommon is prepended to every script but enqueue, the hot one.
const luaCommon = `
local P = ARGV[1]
local function qk(q, s) return P .. '{' .. q .. '}:' .. s end
local function tk(id) return P .. 't:' .. id end
local function nowms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function notify(q)
  if redis.call('LLEN', qk(q, 'notify')) == 0 then redis.call('LPUSH', qk(q, 'notify'), '1') end
end
-- group returns, for ARGV[from..] in strides of step with the queue at
-- offset qoff, a table queue -> list of the first fields (ids).
local function group(from, step, qoff)
  local g = {}
  for i = from, #ARGV, step do
    local q = ARGV[i + qoff]
    local l = g[q]
    if not l then l = {}; g[q] = l end
    l[#l+1] = ARGV[i]
  end
  return g
end
`

// enqueue: ARGV = prefix, "1" to add the queues to the queues set, then
// per task: id, queue, msg, delay ms (> 0: scheduled, by Redis's clock),
// and "0", or "4" followed by the full unique key or "", its TTL ms, the
// full idempotency key or "", its TTL ms.
// Returns per task {code, id}: 0 enqueued, 1 idempotency key seen (id =
// first task), 2 unique key held (id = holder).
// It is the hot path: a pending task's hash is its message alone (no s
// field means pending), consecutive tasks of a queue are pushed with one
// LPUSH, and nothing is defined that is not used.
// new → pending | scheduled
var enqueueScript = newRawScript("enqueue", `
local P, publish = ARGV[1], ARGV[2] == '1'
local now = nil
local out = {}
local pq, pids = nil, {}
local function flush()
  if pq then
    local pk = P .. '{' .. pq .. '}:pending'
    if redis.call('LPUSH', pk, unpack(pids)) == #pids then
      local nk = P .. '{' .. pq .. '}:notify'
      if redis.call('LLEN', nk) == 0 then redis.call('LPUSH', nk, '1') end
    end
    if publish then redis.call('SADD', P .. 'queues', pq) end
  end
  pq, pids = nil, {}
end
local i = 3
while i <= #ARGV do
  local id, q, msg, delay = ARGV[i], ARGV[i+1], ARGV[i+2], tonumber(ARGV[i+3])
  local code, ref, ukey = 0, id, ''
  if ARGV[i+4] ~= '0' then
    local uttl, ikey, ittl = ARGV[i+6], ARGV[i+7], ARGV[i+8]
    ukey = ARGV[i+5]
    if ikey ~= '' then
      local prev = redis.call('GET', ikey)
      if prev then code, ref = 1, prev end
    end
    if code == 0 and ukey ~= '' and not redis.call('SET', ukey, id, 'NX', 'PX', uttl) then
      code, ref = 2, (redis.call('GET', ukey) or '')
    end
    if code == 0 and ikey ~= '' then redis.call('SET', ikey, id, 'PX', ittl) end
    i = i + 9
  else
    i = i + 5
  end
  if code == 0 then
    local k = P .. 't:' .. id
    if delay > 0 then
      if not now then
        local t = redis.call('TIME')
        now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      end
      if ukey ~= '' then
        redis.call('HSET', k, 'm', msg, 's', 'scheduled', 'q', q, 'at', now + delay, 'u', ukey)
      else
        redis.call('HSET', k, 'm', msg, 's', 'scheduled', 'q', q, 'at', now + delay)
      end
      redis.call('ZADD', P .. '{' .. q .. '}:scheduled', now + delay, id)
      if publish then redis.call('SADD', P .. 'queues', q) end
    else
      if ukey ~= '' then
        redis.call('HSET', k, 'm', msg, 'u', ukey)
      else
        redis.call('HSET', k, 'm', msg)
      end
      if q ~= pq then
        flush()
        pq = q
      end
      pids[#pids+1] = id
    end
  end
  out[#out+1] = code
  out[#out+1] = ref
end
flush()
return out
`)

// enqueueOne: ARGV = prefix, "1" to add the queue to the queues set, id,
// queue, msg. The common case of the enqueue script (one task, ready now,
// no unique or idempotency key), straight-line, for the latency of a
// single Enqueue. Returns 0. new → pending
var enqueueOneScript = newRawScript("enqueue1", `
local P, id, q = ARGV[1], ARGV[3], ARGV[4]
redis.call('HSET', P .. 't:' .. id, 'm', ARGV[5])
if redis.call('LPUSH', P .. '{' .. q .. '}:pending', id) == 1 then
  local nk = P .. '{' .. q .. '}:notify'
  if redis.call('LLEN', nk) == 0 then redis.call('LPUSH', nk, '1') end
end
if ARGV[2] == '1' then redis.call('SADD', P .. 'queues', q) end
return 0
`)

// enqueueN: ARGV = prefix, "1" to add the queue to the queues set, queue,
// then per task: id, msg. The common case of a batch: every task of a
// chunk ready now, in one queue, without unique or idempotency keys.
// Returns the number enqueued. new → pending
var enqueueNScript = newRawScript("enqueueN", `
local P, q = ARGV[1], ARGV[3]
local ids = {}
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  redis.call('HSET', P .. 't:' .. id, 'm', ARGV[i+1])
  ids[#ids+1] = id
end
if redis.call('LPUSH', P .. '{' .. q .. '}:pending', unpack(ids)) == #ids then
  local nk = P .. '{' .. q .. '}:notify'
  if redis.call('LLEN', nk) == 0 then redis.call('LPUSH', nk, '1') end
end
if ARGV[2] == '1' then redis.call('SADD', P .. 'queues', q) end
return #ids
`)

// fetch: ARGV = prefix, owner, lease ms, max tasks, queues in the order to
// try. Paused queues are skipped. Returns {now, then per task: id, queue,
// msg, retried, ready-at, last error}. pending → active
var fetchScript = newScript("fetch", `
local owner, lease, need = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = nowms()
local out = {now}
local paused = redis.call('SMEMBERS', P .. 'paused')
local skip = {}
for _, q in ipairs(paused) do skip[q] = true end
for j = 5, #ARGV do
  if need <= 0 then break end
  local q = ARGV[j]
  if not skip[q] then
    local ids = redis.call('RPOP', qk(q, 'pending'), need)
    if ids then
      local z, o = {}, {}
      local orphans = 0
      for _, id in ipairs(ids) do
        local v = redis.call('HMGET', tk(id), 'm', 'r', 'at', 'e')
        if v[1] then
          z[#z+1] = now + lease
          z[#z+1] = id
          o[#o+1] = id
          o[#o+1] = owner
          out[#out+1] = id
          out[#out+1] = q
          out[#out+1] = v[1]
          out[#out+1] = v[2] or '0'
          out[#out+1] = v[3] or '0'
          out[#out+1] = v[4] or ''
        else
          orphans = orphans + 1
        end
        need = need - 1
      end
      if #z > 0 then
        redis.call('ZADD', qk(q, 'active'), unpack(z))
        redis.call('HSET', qk(q, 'owner'), unpack(o))
      end
      if orphans > 0 then redis.call('HINCRBY', qk(q, 'stats'), 'orphans', orphans) end
      if need <= 0 and redis.call('LLEN', qk(q, 'pending')) > 0 then notify(q) end
    end
  end
end
return out
`)

// ack: ARGV = prefix, owner, then per task: id, queue, outcome ("d" done,
// "r" retry, "x" dead), number (retention ms for d, delay ms for r), error,
// full unique key or "". A task this owner no longer holds is left alone
// and its id returned: its lease expired and it was taken back, so
// another run owns it now.
// active → done (deleted, or kept for its retention) | retry | dead
var ackScript = newScript("ack", `
local owner = ARGV[2]
local now = nil
local late = {}
local byq = group(3, 6, 1)
local mine = {}
for q, ids in pairs(byq) do
  local owners = redis.call('HMGET', qk(q, 'owner'), unpack(ids))
  local held = {}
  for k, id in ipairs(ids) do
    if owners[k] == owner then
      mine[id] = true
      held[#held+1] = id
    end
  end
  if #held > 0 then
    redis.call('ZREM', qk(q, 'active'), unpack(held))
    redis.call('HDEL', qk(q, 'owner'), unpack(held))
  end
end
local counts = {}
local function count(q, f, n)
  local c = counts[q]
  if not c then c = {}; counts[q] = c end
  c[f] = (c[f] or 0) + n
end
for i = 3, #ARGV, 6 do
  local id, q, o, num, err, u = ARGV[i], ARGV[i+1], ARGV[i+2], tonumber(ARGV[i+3]), ARGV[i+4], ARGV[i+5]
  if not mine[id] then
    late[#late+1] = id
  else
    mine[id] = nil
    local k = tk(id)
    if o == 'd' then
      if u ~= '' and redis.call('GET', u) == id then redis.call('DEL', u) end
      if num > 0 then
        now = now or nowms()
        redis.call('HSET', k, 's', 'done', 'at', now, 'q', q)
        redis.call('PEXPIRE', k, num)
        redis.call('ZADD', qk(q, 'done'), now + num, id)
      else
        redis.call('DEL', k)
      end
      count(q, 'done', 1)
    elseif o == 'r' then
      now = now or nowms()
      redis.call('HINCRBY', k, 'r', 1)
      redis.call('HSET', k, 's', 'retry', 'at', now + num, 'e', err, 'q', q)
      redis.call('ZADD', qk(q, 'retry'), now + num, id)
      count(q, 'failed', 1)
      count(q, 'retried', 1)
    else
      now = now or nowms()
      redis.call('HSET', k, 's', 'dead', 'at', now, 'e', err, 'q', q)
      redis.call('ZADD', qk(q, 'dead'), now, id)
      count(q, 'failed', 1)
      count(q, 'dead', 1)
    end
  end
end
for q, c in pairs(counts) do
  for f, n in pairs(c) do redis.call('HINCRBY', qk(q, 'stats'), f, n) end
end
return late
`)

// extend: ARGV = prefix, owner, lease ms, then per task: id, queue.
// Returns the ids this owner no longer holds. active → active
var extendScript = newScript("extend", `
local owner, lease = ARGV[2], tonumber(ARGV[3])
local until_ = nowms() + lease
local lost = {}
for q, ids in pairs(group(4, 2, 1)) do
  local owners = redis.call('HMGET', qk(q, 'owner'), unpack(ids))
  local z = {}
  for k, id in ipairs(ids) do
    if owners[k] == owner then
      z[#z+1] = until_
      z[#z+1] = id
    else
      lost[#lost+1] = id
    end
  end
  if #z > 0 then redis.call('ZADD', qk(q, 'active'), 'XX', unpack(z)) end
end
return lost
`)

// requeue: ARGV = prefix, owner, then per task: id, queue. Gives tasks
// back without counting a retry: a consumer shutting down returns what it
// fetched but did not start, or abandoned. active → pending (at the head)
var requeueScript = newScript("requeue", `
local owner = ARGV[2]
local n = 0
for q, ids in pairs(group(3, 2, 1)) do
  local owners = redis.call('HMGET', qk(q, 'owner'), unpack(ids))
  local back = {}
  for k, id in ipairs(ids) do
    if owners[k] == owner then back[#back+1] = id end
  end
  if #back > 0 then
    redis.call('ZREM', qk(q, 'active'), unpack(back))
    redis.call('HDEL', qk(q, 'owner'), unpack(back))
    redis.call('RPUSH', qk(q, 'pending'), unpack(back))
    notify(q)
    n = n + #back
  end
end
return n
`)

// maintain: ARGV = prefix, batch limit, then queues to look after besides
// those in the queues set. For every queue: promotes due scheduled and
// retry tasks, takes back tasks whose lease expired (a retry is counted:
// a consumer that fetches one past its budget sends it to dead letters),
// drops done tasks past their retention, and reports the depths. Returns
// per queue: name, pending, active, scheduled, retry, dead, done, paused
// (0/1), promoted, recovered.
// scheduled | retry → pending; active (lease expired) → pending
var maintainScript = newScript("maintain", `
local limit = tonumber(ARGV[2])
local now = nowms()
local out = {}
local queues = redis.call('SMEMBERS', P .. 'queues')
local known = {}
for _, q in ipairs(queues) do known[q] = true end
for i = 3, #ARGV do
  if not known[ARGV[i]] then
    known[ARGV[i]] = true
    queues[#queues+1] = ARGV[i]
    redis.call('SADD', P .. 'queues', ARGV[i])
  end
end
for _, q in ipairs(queues) do
  local promoted, recovered = 0, 0
  for _, set in ipairs({'scheduled', 'retry'}) do
    local ids = redis.call('ZRANGEBYSCORE', qk(q, set), '-inf', now, 'LIMIT', 0, limit)
    if #ids > 0 then
      redis.call('ZREM', qk(q, set), unpack(ids))
      for _, id in ipairs(ids) do
        if redis.call('EXISTS', tk(id)) == 1 then
          redis.call('HSET', tk(id), 's', 'pending', 'at', now)
          redis.call('LPUSH', qk(q, 'pending'), id)
          promoted = promoted + 1
        end
      end
    end
  end
  local ids = redis.call('ZRANGEBYSCORE', qk(q, 'active'), '-inf', now, 'LIMIT', 0, limit)
  if #ids > 0 then
    local owners = redis.call('HMGET', qk(q, 'owner'), unpack(ids))
    redis.call('ZREM', qk(q, 'active'), unpack(ids))
    redis.call('HDEL', qk(q, 'owner'), unpack(ids))
    for k, id in ipairs(ids) do
      local t = tk(id)
      if redis.call('EXISTS', t) == 1 then
        redis.call('HINCRBY', t, 'r', 1)
        redis.call('HSET', t, 's', 'pending', 'at', now, 'q', q, 'e',
          'lease expired: consumer ' .. (owners[k] or '?') .. ' stopped extending it (killed, hung or cut off from Redis)')
        redis.call('RPUSH', qk(q, 'pending'), id)
        recovered = recovered + 1
      end
    end
    if recovered > 0 then redis.call('HINCRBY', qk(q, 'stats'), 'recovered', recovered) end
  end
  if promoted + recovered > 0 then notify(q) end
  redis.call('ZREMRANGEBYSCORE', qk(q, 'done'), '-inf', now)
  out[#out+1] = q
  out[#out+1] = redis.call('LLEN', qk(q, 'pending'))
  out[#out+1] = redis.call('ZCARD', qk(q, 'active'))
  out[#out+1] = redis.call('ZCARD', qk(q, 'scheduled'))
  out[#out+1] = redis.call('ZCARD', qk(q, 'retry'))
  out[#out+1] = redis.call('ZCARD', qk(q, 'dead'))
  out[#out+1] = redis.call('ZCARD', qk(q, 'done'))
  out[#out+1] = redis.call('SISMEMBER', P .. 'paused', q)
  out[#out+1] = promoted
  out[#out+1] = recovered
end
return out
`)

// replay: ARGV = prefix, ids. Runs dead, retry and scheduled tasks now;
// a dead task gets its full retry budget back. Returns per id 1 (replayed),
// 0 (no such task) or -1 (active, pending or done: nothing to replay).
// dead | retry | scheduled → pending
var replayScript = newScript("replay", `
local now = nowms()
local out = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local v = redis.call('HMGET', tk(id), 's', 'q', 'm')
  local s, q = v[1] or 'pending', v[2]
  if not v[3] then
    out[#out+1] = 0
  elseif q and (s == 'dead' or s == 'retry' or s == 'scheduled') and not redis.call('ZSCORE', qk(q, 'active'), id) then
    redis.call('ZREM', qk(q, s), id)
    redis.call('HSET', tk(id), 's', 'pending', 'at', now)
    if s == 'dead' then redis.call('HSET', tk(id), 'r', 0) end
    redis.call('LPUSH', qk(q, 'pending'), id)
    notify(q)
    out[#out+1] = 1
  else
    out[#out+1] = -1
  end
end
return out
`)

// delete: ARGV = prefix, then per task: id, its queue if the caller knows
// it (a pending task's hash does not say). Deletes tasks in any state but
// active and releases their uniqueness key. Returns per id 1 (deleted), 0
// (no such task) or -1 (active: refused).
// pending | scheduled | retry | dead | done → gone
var deleteScript = newScript("delete", `
local out = {}
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  local k = tk(id)
  local v = redis.call('HMGET', k, 's', 'u', 'q', 'm')
  local s, u, q = v[1] or 'pending', v[2], v[3]
  if not q and ARGV[i+1] ~= '' then q = ARGV[i+1] end
  if not v[4] then
    out[#out+1] = 0
  elseif q and redis.call('ZSCORE', qk(q, 'active'), id) then
    out[#out+1] = -1
  else
    -- The queue of a task whose message is corrupt is unknown: look in
    -- every queue.
    if q and s == 'pending' then
      redis.call('LREM', qk(q, 'pending'), 1, id)
    elseif q then
      redis.call('ZREM', qk(q, s), id)
    else
      for _, qq in ipairs(redis.call('SMEMBERS', P .. 'queues')) do
        redis.call('LREM', qk(qq, 'pending'), 1, id)
        for _, set in ipairs({'scheduled', 'retry', 'dead', 'done'}) do redis.call('ZREM', qk(qq, set), id) end
      end
    end
    if u and redis.call('GET', u) == id then redis.call('DEL', u) end
    redis.call('DEL', k)
    out[#out+1] = 1
  end
end
return out
`)

// pause: ARGV = prefix, queue, "1" to pause or "0" to resume.
var pauseScript = newScript("pause", `
local q = ARGV[2]
redis.call('SADD', P .. 'queues', q)
if ARGV[3] == '1' then
  return redis.call('SADD', P .. 'paused', q)
end
local n = redis.call('SREM', P .. 'paused', q)
if redis.call('LLEN', qk(q, 'pending')) > 0 then notify(q) end
return n
`)

// script is a Lua script with the common prelude.
type script struct {
	name string
	src  string
	*redis.Script
}

func newScript(name, body string) *script { return newRawScript(name, luaCommon+body) }

// newRawScript is a script without the prelude.
func newRawScript(name, src string) *script {
	return &script{name: name, src: src, Script: redis.NewScript(src)}
}

// run runs the script with EVALSHA, loading it on NOSCRIPT (after a Redis
// restart the script cache is empty).
func (s *script) run(ctx context.Context, rdb redis.Scripter, args ...any) *redis.Cmd {
	cmd := s.EvalSha(ctx, rdb, nil, args...)
	if err := cmd.Err(); err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
		return s.Eval(ctx, rdb, nil, args...)
	}
	return cmd
}
