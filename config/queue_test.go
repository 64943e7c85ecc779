package config

import (
	"reflect"
	"testing"
	"time"
)

func TestQueueDefaults(t *testing.T) {
	c := mustParse(t, minimal, nil)
	if c.Redis != (Redis{Addr: "127.0.0.1:6379", Timeout: Duration(3 * time.Second)}) {
		t.Errorf("redis = %+v", c.Redis)
	}
	if want := []QueueWeight{{"default", 1}}; !reflect.DeepEqual(c.Queue.Queues, want) {
		t.Errorf("queue.queues = %+v", c.Queue.Queues)
	}
	if c.Queue.Concurrency != 10 || c.Queue.Lease.D() != 30*time.Second || c.Queue.MaxRetries != 25 {
		t.Errorf("queue = %+v", c.Queue)
	}
}

func TestQueueSection(t *testing.T) {
	c := mustParse(t, minimal+`redis: {addr: "10.0.0.5:6380", db: 2}
queue:
  queues:
    - {name: critical, weight: 6}
    - {name: low}
  strict: true
  lease: 2s
  max_retries: 0
`, env(map[string]string{"SHOAL_REDIS_PASSWORD": "s3cret"}))
	if c.Redis.Addr != "10.0.0.5:6380" || c.Redis.DB != 2 || c.Redis.Password != "s3cret" {
		t.Errorf("redis = %+v", c.Redis)
	}
	// The file's list replaces the default one; a weight left out is 1.
	if want := []QueueWeight{{"critical", 6}, {"low", 1}}; !reflect.DeepEqual(c.Queue.Queues, want) {
		t.Errorf("queue.queues = %+v", c.Queue.Queues)
	}
	if !c.Queue.Strict || c.Queue.Lease.D() != 2*time.Second || c.Queue.MaxRetries != 0 {
		t.Errorf("queue = %+v", c.Queue)
	}
}

func TestQueueProblems(t *testing.T) {
	got := problems(t, minimal+`redis:
  addr: localhost
  db: -1
queue:
  queues:
    - {name: Bad Name, weight: 0}
    - {name: a}
    - {name: a, weight: 1001}
  concurrency: 0
  lease: 1ms
  max_retries: -2
  metrics: nope
  lase: 1s
`, env(map[string]string{"SHOAL_REDIS_ADDR": ""}))
	want := []string{
		`t.yaml:7:7: redis.db: must be at least 0, got -1`,
		`t.yaml:10:14: queue.queues[0].name: must be 1-64 of a-z 0-9 . _ -, starting with a letter or digit, got "Bad Name"`,
		`t.yaml:10:32: queue.queues[0].weight: must be from 1 to 1000, got 0`,
		`t.yaml:12:14: queue.queues[2].name: "a" is already queue.queues[1] (line 11)`,
		`t.yaml:12:25: queue.queues[2].weight: must be from 1 to 1000, got 1001`,
		`t.yaml:13:16: queue.concurrency: must be positive, got 0`,
		`t.yaml:14:10: queue.lease: must be at least 100ms, got "1ms"`,
		`t.yaml:15:16: queue.max_retries: must be at least 0, got -2`,
		`t.yaml:16:12: queue.metrics: must be host:port like 127.0.0.1:8080 (no port), got "nope"`,
		`t.yaml:17:3: queue.lase: unknown key; did you mean "lease"?`,
		`$SHOAL_REDIS_ADDR: redis.addr: is required, such as 127.0.0.1:8080`,
	}
	if d := diff(want, got); d != "" {
		t.Error(d)
	}
}
