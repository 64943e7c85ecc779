package queue

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Inspector reads and manages stored tasks: the engine of `shoal queue`.
type Inspector struct {
	rdb redis.UniversalClient
}

// NewInspector returns an inspector of rdb's queues.
func NewInspector(rdb redis.UniversalClient) *Inspector { return &Inspector{rdb: rdb} }

// QueueStats are the numbers of one queue.
type QueueStats struct {
	Queue  string `json:"queue"`
	Paused bool   `json:"paused"`
	// Tasks in each state now.
	Pending   int64 `json:"pending"`
	Active    int64 `json:"active"`
	Scheduled int64 `json:"scheduled"`
	Retry     int64 `json:"retry"`
	Dead      int64 `json:"dead"`
	Done      int64 `json:"done"` // kept for their retention
	// Oldest is how long the oldest pending task has been ready.
	Oldest time.Duration `json:"oldest_ns"`
	// Totals since the queue was first used, across all consumers.
	Processed int64 `json:"processed_total"` // done
	Failed    int64 `json:"failed_total"`    // failed runs
	Retried   int64 `json:"retried_total"`   // failed runs retried
	Died      int64 `json:"dead_total"`      // sent to dead letters
	Recovered int64 `json:"recovered_total"` // expired leases requeued
	Orphans   int64 `json:"orphans_total"`   // ids with no task hash, dropped
}

// Queues lists every queue that was ever enqueued to, sorted.
func (i *Inspector) Queues(ctx context.Context) ([]string, error) {
	qs, err := i.rdb.SMembers(ctx, queuesKey).Result()
	if err != nil {
		return nil, fmt.Errorf("queue: cannot list queues: %w", err)
	}
	sort.Strings(qs)
	return qs, nil
}

// Stats returns the numbers of every queue, in one round trip after
// listing them.
func (i *Inspector) Stats(ctx context.Context) ([]QueueStats, error) {
	qs, err := i.Queues(ctx)
	if err != nil {
		return nil, err
	}
	type cmds struct {
		pending                              *redis.IntCmd
		active, scheduled, retry, dead, done *redis.IntCmd
		paused                               *redis.BoolCmd
		counters                             *redis.MapStringStringCmd
		oldest                               *redis.StringCmd
	}
	pipe := i.rdb.Pipeline()
	cs := make([]cmds, len(qs))
	for k, q := range qs {
		cs[k] = cmds{
			pending:   pipe.LLen(ctx, pendingKey(q)),
			active:    pipe.ZCard(ctx, stateKey(q, Active)),
			scheduled: pipe.ZCard(ctx, stateKey(q, Scheduled)),
			retry:     pipe.ZCard(ctx, stateKey(q, Retry)),
			dead:      pipe.ZCard(ctx, stateKey(q, Dead)),
			done:      pipe.ZCard(ctx, stateKey(q, Done)),
			paused:    pipe.SIsMember(ctx, pausedKey, q),
			counters:  pipe.HGetAll(ctx, queueKey(q, "stats")),
			oldest:    pipe.LIndex(ctx, pendingKey(q), -1),
		}
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("queue: cannot read queue stats: %w", err)
	}
	out := make([]QueueStats, len(qs))
	oldest := i.rdb.Pipeline()
	ats := make([]*redis.StringCmd, len(qs))
	for k, q := range qs {
		c := cs[k]
		n := c.counters.Val()
		num := func(f string) int64 { v, _ := strconv.ParseInt(n[f], 10, 64); return v }
		out[k] = QueueStats{Queue: q, Paused: c.paused.Val(),
			Pending: c.pending.Val(), Active: c.active.Val(), Scheduled: c.scheduled.Val(),
			Retry: c.retry.Val(), Dead: c.dead.Val(), Done: c.done.Val(),
			Processed: num("done"), Failed: num("failed"), Retried: num("retried"), Died: num("dead"),
			Recovered: num("recovered"), Orphans: num("orphans")}
		if id := c.oldest.Val(); id != "" {
			ats[k] = oldest.HGet(ctx, taskKey(id), "at")
		}
	}
	if oldest.Len() > 0 {
		oldest.Exec(ctx) // best effort: a missing hash leaves Oldest 0
		now := time.Now()
		for k, at := range ats {
			if at != nil {
				if ms, err := at.Int64(); err == nil {
					out[k].Oldest = max(0, now.Sub(time.UnixMilli(ms)))
				}
			}
		}
	}
	return out, nil
}

// Get returns one task.
func (i *Inspector) Get(ctx context.Context, id string) (*TaskInfo, error) {
	if !ValidID(id) {
		return nil, fmt.Errorf("%w: %q is not a task id", ErrNotFound, id)
	}
	pipe := i.rdb.Pipeline()
	h := pipe.HGetAll(ctx, taskKey(id))
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("queue: cannot read task %s: %w", id, err)
	}
	if len(h.Val()) == 0 {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	info := parseInfo(id, h.Val())
	// An active task's hash keeps its previous state: the active zset
	// and the owner hash say it is leased.
	pipe = i.rdb.Pipeline()
	lease := pipe.ZScore(ctx, stateKey(info.Queue, Active), id)
	owner := pipe.HGet(ctx, queueKey(info.Queue, "owner"), id)
	pipe.Exec(ctx)
	if s, err := lease.Result(); err == nil {
		info.State, info.LeaseUntil, info.Owner = Active, time.UnixMilli(int64(s)), owner.Val()
	}
	return info, nil
}

// parseInfo builds a TaskInfo from a task hash.
func parseInfo(id string, h map[string]string) *TaskInfo {
	info := &TaskInfo{ID: id, Queue: h["q"], State: State(h["s"]), LastError: h["e"]}
	if info.State == "" {
		info.State = Pending // a new task's hash has only its message
	}
	num := func(f string) int64 { v, _ := strconv.ParseInt(h[f], 10, 64); return v }
	info.Retried = int(num("r"))
	if at := num("at"); at > 0 {
		info.At = time.UnixMilli(at)
	}
	m, err := decodeMessage([]byte(h["m"]))
	if err != nil {
		info.Type = "?"
		if info.LastError == "" {
			info.LastError = err.Error()
		}
		return info
	}
	info.Type, info.Payload, info.MaxRetries = m.Type, m.Payload, m.MaxRetries
	if info.Queue == "" {
		info.Queue = m.Queue
	}
	if info.At.IsZero() {
		info.At = readyAt(0, &m)
	}
	info.Timeout = time.Duration(m.Timeout) * time.Millisecond
	info.EnqueuedAt = time.UnixMilli(m.Enqueued)
	info.UniqueKey, info.Idempotent, info.RequestID, info.Trace = m.Unique, m.Idem, m.RID, m.Trace
	return info
}

// List returns up to limit tasks of a queue in a state, oldest first,
// skipping offset.
func (i *Inspector) List(ctx context.Context, queue string, state State, offset, limit int) ([]*TaskInfo, error) {
	if !ValidQueue(queue) {
		return nil, invalid("queue name %q", queue)
	}
	if offset < 0 || limit <= 0 {
		return nil, invalid("offset %d, limit %d", offset, limit)
	}
	var ids []string
	var err error
	switch state {
	case Pending:
		// LPUSH in, RPOP out: the oldest is at the right end.
		ids, err = i.rdb.LRange(ctx, pendingKey(queue), int64(-offset-limit), int64(-offset-1)).Result()
		for l, r := 0, len(ids)-1; l < r; l, r = l+1, r-1 {
			ids[l], ids[r] = ids[r], ids[l]
		}
	case Active, Scheduled, Retry, Dead, Done:
		ids, err = i.rdb.ZRange(ctx, stateKey(queue, state), int64(offset), int64(offset+limit-1)).Result()
	default:
		return nil, invalid("state %q: want one of %v", state, States)
	}
	if err != nil {
		return nil, fmt.Errorf("queue: cannot list %s tasks of %s: %w", state, queue, err)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	pipe := i.rdb.Pipeline()
	hs := make([]*redis.MapStringStringCmd, len(ids))
	for k, id := range ids {
		hs[k] = pipe.HGetAll(ctx, taskKey(id))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("queue: cannot read tasks: %w", err)
	}
	out := make([]*TaskInfo, 0, len(ids))
	for k, id := range ids {
		if len(hs[k].Val()) == 0 {
			continue // gone meanwhile
		}
		info := parseInfo(id, hs[k].Val())
		if state == Active {
			info.State = Active
		}
		out = append(out, info)
	}
	if state == Active && len(out) > 0 {
		pipe := i.rdb.Pipeline()
		leases := make([]*redis.FloatCmd, len(out))
		owners := make([]*redis.StringCmd, len(out))
		for k, info := range out {
			leases[k] = pipe.ZScore(ctx, stateKey(queue, Active), info.ID)
			owners[k] = pipe.HGet(ctx, queueKey(queue, "owner"), info.ID)
		}
		pipe.Exec(ctx)
		for k, info := range out {
			info.LeaseUntil, info.Owner = time.UnixMilli(int64(leases[k].Val())), owners[k].Val()
		}
	}
	return out, nil
}

// Replay runs a dead task again now, with its full retry budget; it also
// runs a retry or scheduled task now.
func (i *Inspector) Replay(ctx context.Context, id string) error {
	if !ValidID(id) {
		return fmt.Errorf("%w: %q is not a task id", ErrNotFound, id)
	}
	res, err := replayScript.run(ctx, i.rdb, prefix, id).Int64Slice()
	if err != nil {
		return fmt.Errorf("queue: cannot replay %s: %w", id, err)
	}
	switch res[0] {
	case 0:
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	case -1:
		return fmt.Errorf("queue: cannot replay %s: it is pending, active or done", id)
	}
	return nil
}

// ReplayAll replays every dead task of queue ("" = every queue) and
// returns how many.
func (i *Inspector) ReplayAll(ctx context.Context, queue string) (int, error) {
	return i.eachChunk(ctx, queue, Dead, replayScript)
}

// Delete deletes a task that is not active, releasing its uniqueness key.
func (i *Inspector) Delete(ctx context.Context, id string) error {
	if !ValidID(id) {
		return fmt.Errorf("%w: %q is not a task id", ErrNotFound, id)
	}
	// A pending task's hash does not name its queue: its message does.
	q := ""
	if m, err := i.rdb.HGet(ctx, taskKey(id), "m").Result(); err == nil {
		if msg, err := decodeMessage([]byte(m)); err == nil {
			q = msg.Queue
		}
	}
	res, err := deleteScript.run(ctx, i.rdb, prefix, id, q).Int64Slice()
	if err != nil {
		return fmt.Errorf("queue: cannot delete %s: %w", id, err)
	}
	switch res[0] {
	case 0:
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	case -1:
		return fmt.Errorf("cannot delete %s: %w", id, ErrTaskActive)
	}
	return nil
}

// DeleteAll deletes every task of queue ("" = every queue) in state, which
// must be dead, retry, scheduled or done, and returns how many.
func (i *Inspector) DeleteAll(ctx context.Context, queue string, state State) (int, error) {
	switch state {
	case Dead, Retry, Scheduled, Done:
	default:
		return 0, invalid("DeleteAll takes dead, retry, scheduled or done tasks, not %q (delete pending tasks one by one)", state)
	}
	return i.eachChunk(ctx, queue, state, deleteScript)
}

// eachChunk runs s over the ids of a state set, 500 at a time, until the
// set is empty or a chunk changes nothing.
func (i *Inspector) eachChunk(ctx context.Context, queue string, state State, s *script) (int, error) {
	qs := []string{queue}
	if queue == "" {
		var err error
		if qs, err = i.Queues(ctx); err != nil {
			return 0, err
		}
	} else if !ValidQueue(queue) {
		return 0, invalid("queue name %q", queue)
	}
	total := 0
	for _, q := range qs {
		for {
			ids, err := i.rdb.ZRange(ctx, stateKey(q, state), 0, 499).Result()
			if err != nil {
				return total, fmt.Errorf("queue: cannot list %s tasks of %s: %w", state, q, err)
			}
			if len(ids) == 0 {
				break
			}
			args := make([]any, 0, 1+2*len(ids))
			args = append(args, prefix)
			for _, id := range ids {
				args = append(args, id)
				if s == deleteScript {
					args = append(args, q)
				}
			}
			res, err := s.run(ctx, i.rdb, args...).Int64Slice()
			if err != nil {
				return total, fmt.Errorf("queue: %s of %s tasks in %s: %w", s.name, state, q, err)
			}
			n := 0
			for _, r := range res {
				if r == 1 {
					n++
				}
			}
			if n == 0 {
				// Ids whose hash is gone: drop them from the set.
				for _, id := range ids {
					i.rdb.ZRem(ctx, stateKey(q, state), id)
				}
			}
			total += n
		}
	}
	return total, nil
}

// Pause stops consumers from fetching the queue's tasks; enqueues go on.
func (i *Inspector) Pause(ctx context.Context, queue string) error {
	return i.pause(ctx, queue, "1")
}

// Resume lets consumers fetch the queue's tasks again.
func (i *Inspector) Resume(ctx context.Context, queue string) error {
	return i.pause(ctx, queue, "0")
}

func (i *Inspector) pause(ctx context.Context, queue, on string) error {
	if !ValidQueue(queue) {
		return invalid("queue name %q", queue)
	}
	if err := pauseScript.run(ctx, i.rdb, prefix, queue, on).Err(); err != nil {
		return fmt.Errorf("queue: cannot pause or resume %s: %w", queue, err)
	}
	return nil
}
