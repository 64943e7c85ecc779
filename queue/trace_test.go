package queue_test

import (
	"context"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/broker"
	"github.com/shoal-dev/shoal/internal/testenv"
	"github.com/shoal-dev/shoal/queue"
	"github.com/shoal-dev/shoal/wire"
	"github.com/shoal-dev/shoal/workers"
)

// Item 1 (ctx-based enqueue) and the issue's "connect a task back to the
// request": a worker handler enqueues with its ctx; the task carries the
// request's id and trace (plus the worker's hop), and the enqueue is bound
// by the request's deadline. A task handler's follow-up task carries them
// on, with a hop for the first task.
func TestEnqueueFromWorkerCarriesTrace(t *testing.T) {
	e := newEnv(t)
	const hb = 100 * time.Millisecond
	b, err := broker.New(broker.Options{Clients: "tcp://127.0.0.1:0", Workers: "tcp://127.0.0.1:0", Heartbeat: hb})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	bdone := make(chan struct{})
	go func() { b.Run(ctx); close(bdone) }()
	defer func() { cancel(); <-bdone }()

	enqueued := make(chan *queue.TaskInfo, 1)
	wmux := workers.NewServeMux()
	wmux.HandleFunc("signup", func(ctx context.Context, req *workers.Request) (workers.Response, error) {
		task, _ := queue.NewTask("welcome", map[string]string{"user": string(req.Body)})
		info, err := e.client.Enqueue(ctx, task)
		if err != nil {
			return workers.Response{}, err
		}
		enqueued <- info
		return workers.Response{Status: 202, Body: []byte(info.ID)}, nil
	})
	srv, err := workers.NewServer(workers.Options{Brokers: []string{"tcp://" + b.WorkersAddr().String()},
		Concurrency: 2, Heartbeat: hb, Logger: testLogger(t)}, wmux)
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithCancel(context.Background())
	wdone := make(chan struct{})
	go func() { srv.Run(wctx); close(wdone) }()
	defer func() { wcancel(); <-wdone }()
	client, err := broker.NewClient(broker.ClientOptions{Endpoints: []string{"tcp://" + b.ClientsAddr().String()}, Heartbeat: hb})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	type seen struct {
		typ   string
		rid   string
		trace []wire.Hop
	}
	got := make(chan seen, 2)
	qmux := queue.NewServeMux()
	qmux.HandleFunc("welcome", func(ctx context.Context, task *queue.Task) error {
		rid, trace, _ := queue.TraceFrom(ctx)
		got <- seen{task.Type(), rid, trace}
		follow, _ := queue.NewTask("audit", nil)
		_, err := e.client.Enqueue(ctx, follow) // carries rid and trace on
		return err
	})
	qmux.HandleFunc("audit", func(ctx context.Context, task *queue.Task) error {
		got <- seen{task.Type(), task.RequestID(), task.Trace()}
		return nil
	})
	e.consume(t, queue.ConsumerOptions{}, qmux)

	var rep *wire.Reply
	testenv.Eventually(t, 10*time.Second, "the signup service", func() bool {
		rctx, rcancel := context.WithTimeout(context.Background(), time.Second)
		defer rcancel()
		rep, err = client.Do(rctx, &wire.Request{Service: "signup", RID: "req-signup-1", Body: []byte("ann"),
			Deadline: time.Now().Add(time.Second).UnixMilli(), Trace: []wire.Hop{{Service: "frontend", Process: "fe/1"}}})
		return err == nil && rep.Status == 202
	})
	info := <-enqueued
	if info.RequestID != "req-signup-1" {
		t.Errorf("enqueued task's request id %q", info.RequestID)
	}
	for _, want := range []struct {
		typ  string
		hops []string
	}{
		{"welcome", []string{"frontend", "signup", "task:welcome"}},
		{"audit", []string{"frontend", "signup", "task:welcome"}},
	} {
		select {
		case s := <-got:
			var hops []string
			for _, h := range s.trace {
				hops = append(hops, h.Service)
			}
			if s.typ != want.typ || s.rid != "req-signup-1" || len(hops) != len(want.hops) {
				t.Fatalf("%s handler saw rid %q, trace %v; want req-signup-1, %v", s.typ, s.rid, hops, want.hops)
			}
			for i := range hops {
				if hops[i] != want.hops[i] {
					t.Errorf("%s: trace %v, want %v", s.typ, hops, want.hops)
					break
				}
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s task never ran", want.typ)
		}
	}
}
