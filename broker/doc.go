// Package broker routes Shoal requests from clients to worker processes by
// service name, and holds Client, the requesting side used by the frontend
// and by workers that call other services.
//
// A Broker binds two ZeroMQ ROUTER endpoints — clients and workers — and
// an admin HTTP endpoint (/stats, /metrics, /healthz, POST /died). Workers
// announce their services and credit with READY; requests queue per
// service (bounded: a full queue answers "overloaded" at once) and go to
// the live worker with the most free credit. The broker:
//
//   - answers an unknown service ("no_service") or a service without live
//     workers ("no_worker") at once;
//   - never dispatches a request whose deadline has passed, and answers
//     "deadline" when it passes while queued or while a worker holds it;
//   - declares a worker dead after `liveness` silent heartbeat intervals or
//     as soon as its TCP connection closes, and re-dispatches what it held
//     (attempt+1) while attempts and deadline allow, else "worker_died";
//   - ignores a reply for a request that worker no longer holds (late,
//     duplicate, or already re-dispatched), counting it;
//   - counts and drops malformed messages, never crashing on them.
//
// All routing state belongs to the single goroutine in Run; socket readers
// feed it through channels, and everything that queued while it worked is
// flushed as one message per peer (batching without timers). Protocol
// details: docs/protocol.md.
//
// Running one:
//
//	b, err := broker.New(broker.Options{Clients: "tcp://127.0.0.1:5555", Workers: "tcp://127.0.0.1:5556"})
//	…
//	err = b.Run(ctx)
//
// Asking a service:
//
//	c, _ := broker.NewClient(broker.ClientOptions{Endpoints: []string{"tcp://127.0.0.1:5555"}})
//	rep, err := c.Do(ctx, &wire.Request{Service: "echo", Body: []byte("hi")})
package broker
