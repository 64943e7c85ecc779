package cli

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/shoal-dev/shoal/broker"
	"github.com/shoal-dev/shoal/config"
	"github.com/shoal-dev/shoal/frontend"
	"github.com/shoal-dev/shoal/queue"
	"github.com/shoal-dev/shoal/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// Events glue: config → the broker's forwarder, the frontend's /events,
// and the task events of queue consumers.

// brokerEvents is the forwarder tuning of the config.
func brokerEvents(cfg *config.Config) broker.EventOptions {
	e := cfg.Events
	return broker.EventOptions{Queue: e.Queue, QueueBytes: int(e.QueueBytes), Window: int(e.Window),
		WriteTimeout: e.WriteTimeout.D()}
}

// frontendEvents is the frontend's /events: a Subscriber to every broker's
// events_out when some broker has events. close stops it, after the
// frontend.
func frontendEvents(cfg *config.Config) (o frontend.EventOptions, close func(), err error) {
	e := cfg.Events
	o = frontend.EventOptions{Path: e.Path, Heartbeat: e.Heartbeat.D(), Buffer: e.ClientBuffer,
		MaxTopics: e.MaxTopics, MaxClients: e.MaxClients}
	eps := cfg.EventsOutEndpoints()
	if len(eps) == 0 {
		return o, func() {}, nil
	}
	sub, err := broker.NewSubscriber(broker.SubscriberOptions{Endpoints: eps, Heartbeat: cfg.Broker.Heartbeat.D(),
		Liveness: cfg.Broker.Liveness, Transport: transport(cfg), Logger: slog.Default()})
	if err != nil {
		return o, nil, err
	}
	o.Source = sub
	return o, sub.Close, nil
}

// TaskEvent is the body of the events a queue consumer publishes when a
// task finishes: topic "task.<id>.done" or "task.<id>.dead", so that a
// client holding a task id (from a 202) can watch
// /events?topic=task.<id>.
type TaskEvent struct {
	ID      string `msgpack:"id"`
	Type    string `msgpack:"type"`
	Queue   string `msgpack:"queue"`
	State   string `msgpack:"state"` // "done" or "dead"
	Retried int    `msgpack:"retried"`
	TookMS  int64  `msgpack:"took_ms,omitempty"` // done: how long the successful run took
	Error   string `msgpack:"error,omitempty"`   // dead: what it died of
}

// taskEventHooks returns the OnDone and OnDead hooks of a queue consumer
// that publish task events through every broker's events_in, and the
// function that stops the publisher (after the consumer). Without
// events_in or with events.task_events off it returns nil hooks.
// runConsumer installs them.
func taskEventHooks(cfg *config.Config) (onDone func(*queue.Task, time.Duration), onDead func(*queue.Task, error), stop func(), err error) {
	eps := cfg.EventsInEndpoints()
	if len(eps) == 0 || !cfg.Events.TaskEvents {
		return nil, nil, func() {}, nil
	}
	pub, err := broker.NewPublisher(broker.PublisherOptions{Endpoints: eps, Heartbeat: cfg.Broker.Heartbeat.D(),
		Liveness: cfg.Broker.Liveness, Transport: transport(cfg), Logger: slog.Default()})
	if err != nil {
		return nil, nil, nil, err
	}
	// Tasks finish from the first second on: give the links a moment, so
	// that the first outcomes are not lost to a link still connecting.
	for deadline := time.Now().Add(2 * time.Second); !pub.Ready() && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	onDone = func(t *queue.Task, took time.Duration) {
		publishTaskEvent(pub, t, TaskEvent{State: "done", TookMS: took.Milliseconds()})
	}
	onDead = func(t *queue.Task, err error) {
		ev := TaskEvent{State: "dead"}
		if err != nil {
			ev.Error = err.Error()
		}
		publishTaskEvent(pub, t, ev)
	}
	return onDone, onDead, pub.Close, nil
}

// publishTaskEvent runs on the consumer's acknowledging goroutine:
// Publish only queues the event.
func publishTaskEvent(pub *broker.Publisher, t *queue.Task, te TaskEvent) {
	te.ID, te.Type, te.Queue, te.Retried = t.ID(), t.Type(), t.Queue(), t.Retried()
	body, err := msgpack.Marshal(te)
	if err != nil {
		return
	}
	ev := wire.Event{Topic: "task." + te.ID + "." + te.State, Body: body, RID: t.RequestID(), Trace: t.Trace()}
	if err := pub.Publish(&ev); err != nil {
		level := slog.LevelDebug
		if !errors.Is(err, broker.ErrUnavailable) {
			level = slog.LevelWarn
		}
		slog.Log(context.Background(), level, "cannot publish task event", "topic", ev.Topic, "err", err)
	}
}
