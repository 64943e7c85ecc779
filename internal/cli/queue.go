package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/shoal-dev/shoal/config"
	"github.com/shoal-dev/shoal/queue"
	"github.com/vmihailenco/msgpack/v5"
)

func init() {
	register("queue", "inspect and manage tasks: queue stats|ls|show|replay|delete|pause|resume", runQueue)
}

// queueRedis connects to the config's Redis.
func queueRedis(c *config.Config) *redis.Client {
	return queue.NewRedis(queue.RedisOptions{Addr: c.Redis.Addr, Password: c.Redis.Password,
		DB: c.Redis.DB, Timeout: c.Redis.Timeout.D()})
}

// queueClientOptions maps the config's task defaults.
func queueClientOptions(c *config.Config) queue.ClientOptions {
	o := queue.ClientOptions{MaxRetries: c.Queue.MaxRetries, Timeout: c.Queue.Timeout.D(),
		IdempotencyTTL: c.Queue.IdempotencyTTL.D()}
	if o.MaxRetries == 0 {
		o.MaxRetries = -1 // the config's 0 is "no retries", the client's 0 "the default"
	}
	return o
}

const queueUsage = `usage: shoal queue COMMAND [-c shoal.yaml] [flags]

  stats                              every queue: tasks per state, totals
  ls [-q QUEUE] [-state S] [-n N]    tasks of a queue in a state (default: dead)
  show ID                            one task: state, error, payload, request id, trace
  replay ID... | -all [-q QUEUE]     run dead (or retry, scheduled) tasks now
  delete ID... | -all -state S       delete tasks (not active ones)
  pause QUEUE | resume QUEUE         stop / restart consumers fetching a queue

Every command takes -json for machine-readable output.
`

func runQueue(args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(os.Stderr, queueUsage)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	sub, args := args[0], args[1:]
	fs, path := flags("queue " + sub)
	asJSON := fs.Bool("json", false, "print JSON")
	q := fs.String("q", "", "queue (default: every queue, or \"default\" for ls)")
	state := fs.String("state", "", "task state: pending, active, scheduled, retry, dead, done")
	n := fs.Int("n", 20, "ls: how many tasks")
	offset := fs.Int("offset", 0, "ls: skip this many")
	all := fs.Bool("all", false, "replay or delete every task of the state (and queue)")
	fs.SetOutput(io.Discard)
	pos, err := parseQueueArgs(fs, args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "shoal queue %s: %v\n\n%s", sub, err, queueUsage)
		return exitUsage
	}
	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return exitConfig
	}
	rdb := queueRedis(cfg)
	defer rdb.Close()
	insp := queue.NewInspector(rdb)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out := os.Stdout

	switch sub {
	case "stats":
		st, err := insp.Stats(ctx)
		if err != nil {
			return queueFail(cfg, err)
		}
		if *asJSON {
			return printQueueJSON(out, st)
		}
		printQueueStats(out, st)
	case "ls":
		s := queue.State(*state)
		if s == "" {
			s = queue.Dead
		}
		qn := *q
		if qn == "" {
			qn = queue.DefaultQueue
		}
		tasks, err := insp.List(ctx, qn, s, *offset, *n)
		if err != nil {
			return queueFail(cfg, err)
		}
		if *asJSON {
			return printQueueJSON(out, tasks)
		}
		printTaskList(out, tasks)
	case "show":
		if len(pos) != 1 {
			fmt.Fprintf(os.Stderr, "shoal queue show: want one task id\n")
			return exitUsage
		}
		info, err := insp.Get(ctx, pos[0])
		if err != nil {
			return queueFail(cfg, err)
		}
		if *asJSON {
			return printQueueJSON(out, info)
		}
		printTask(out, info)
	case "replay", "delete":
		if *all == (len(pos) > 0) {
			fmt.Fprintf(os.Stderr, "shoal queue %s: give task ids or -all\n", sub)
			return exitUsage
		}
		if *all {
			var k int
			if sub == "replay" {
				k, err = insp.ReplayAll(ctx, *q)
			} else {
				if *state == "" {
					fmt.Fprintf(os.Stderr, "shoal queue delete -all: say which tasks with -state dead (or retry, scheduled, done)\n")
					return exitUsage
				}
				k, err = insp.DeleteAll(ctx, *q, queue.State(*state))
			}
			if err != nil {
				return queueFail(cfg, err)
			}
			fmt.Fprintf(out, "%sed %d tasks\n", strings.TrimSuffix(sub, "e"), k)
			return exitOK
		}
		code := exitOK
		for _, id := range pos {
			if sub == "replay" {
				err = insp.Replay(ctx, id)
			} else {
				err = insp.Delete(ctx, id)
			}
			if err != nil {
				fmt.Fprintf(os.Stderr, "%s: %v\n", id, err)
				code = exitFailure
				continue
			}
			fmt.Fprintf(out, "%s: %sed\n", id, strings.TrimSuffix(sub, "e"))
		}
		return code
	case "pause", "resume":
		if len(pos) != 1 {
			fmt.Fprintf(os.Stderr, "shoal queue %s: want one queue name\n", sub)
			return exitUsage
		}
		if sub == "pause" {
			err = insp.Pause(ctx, pos[0])
		} else {
			err = insp.Resume(ctx, pos[0])
		}
		if err != nil {
			return queueFail(cfg, err)
		}
		fmt.Fprintf(out, "%s: %sd\n", pos[0], sub)
	default:
		fmt.Fprintf(os.Stderr, "shoal queue: unknown command %q\n\n%s", sub, queueUsage)
		return exitUsage
	}
	return exitOK
}

// parseQueueArgs parses flags that may come before, between or after
// the positional arguments, which it returns.
func parseQueueArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func queueFail(cfg *config.Config, err error) int {
	switch {
	case errors.Is(err, queue.ErrNotFound), errors.Is(err, queue.ErrInvalid), errors.Is(err, queue.ErrTaskActive):
		fmt.Fprintln(os.Stderr, err)
	default:
		fmt.Fprintf(os.Stderr, "redis %s: %v\n", cfg.Redis.Addr, err)
	}
	return exitFailure
}

func printQueueJSON(w io.Writer, v any) int {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return exitFailure
	}
	return exitOK
}

func printQueueStats(w io.Writer, st []queue.QueueStats) {
	if len(st) == 0 {
		fmt.Fprintln(w, "no queues yet")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "QUEUE\tPAUSED\tPENDING\tACTIVE\tSCHEDULED\tRETRY\tDEAD\tDONE\tOLDEST\tPROCESSED\tFAILED\tRETRIED\tDIED\tRECOVERED")
	for _, s := range st {
		paused := ""
		if s.Paused {
			paused = "paused"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%d\t%d\t%d\t%d\t%d\n", s.Queue, paused, s.Pending, s.Active,
			s.Scheduled, s.Retry, s.Dead, s.Done, s.Oldest.Round(time.Millisecond), s.Processed, s.Failed, s.Retried, s.Died, s.Recovered)
	}
	tw.Flush()
}

func printTaskList(w io.Writer, tasks []*queue.TaskInfo) {
	if len(tasks) == 0 {
		fmt.Fprintln(w, "no tasks")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTYPE\tSTATE\tRETRIED\tAT\tREQUEST\tERROR")
	for _, t := range tasks {
		errText := t.LastError
		if len(errText) > 60 {
			errText = errText[:57] + "..."
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%s\t%s\t%s\n", t.ID, t.Type, t.State, t.Retried, t.MaxRetries,
			t.At.Format(time.DateTime), t.RequestID, errText)
	}
	tw.Flush()
}

func printTask(w io.Writer, t *queue.TaskInfo) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, v)
		}
	}
	row("id", t.ID)
	row("type", t.Type)
	row("queue", t.Queue)
	row("state", string(t.State))
	row("retried", fmt.Sprintf("%d of %d", t.Retried, t.MaxRetries))
	row("timeout", t.Timeout.String())
	row("enqueued", t.EnqueuedAt.Format(time.RFC3339Nano))
	if !t.At.IsZero() {
		row("at", t.At.Format(time.RFC3339Nano))
	}
	if t.State == queue.Active {
		row("lease until", t.LeaseUntil.Format(time.RFC3339Nano))
		row("owner", t.Owner)
	}
	row("unique key", t.UniqueKey)
	row("idempotency key", t.Idempotent)
	row("request id", t.RequestID)
	row("last error", t.LastError)
	row("payload", describePayload(t.Payload))
	tw.Flush()
	for i, h := range t.Trace {
		fmt.Fprintf(w, "trace[%d]: %s on %s at %s for %s", i, h.Service, h.Process,
			time.UnixMicro(h.Start).Format(time.RFC3339Nano), time.Duration(h.Dur)*time.Microsecond)
		for _, kv := range h.Tags {
			fmt.Fprintf(w, " %s=%s", kv.Key, kv.Value)
		}
		fmt.Fprintln(w)
	}
}

// describePayload shows a msgpack payload as JSON, or says why not.
func describePayload(b []byte) string {
	if len(b) == 0 {
		return "(empty)"
	}
	var v any
	r := bytes.NewReader(b)
	if err := msgpack.NewDecoder(r).Decode(&v); err != nil || r.Len() > 0 {
		return fmt.Sprintf("%d bytes, not one msgpack value: %q", len(b), b[:min(len(b), 64)])
	}
	j, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprintf("%v", v)
	}
	if len(j) > 2000 {
		return string(j[:2000]) + "…"
	}
	return string(j)
}
