// Package workers is the SDK for Shoal worker processes: register handlers
// by service name, and Serve them through every broker.
//
//	mux := workers.NewServeMux()
//	mux.HandleFunc("echo", func(ctx context.Context, req *workers.Request) (workers.Response, error) {
//		return workers.Response{Body: req.Body}, nil
//	})
//	srv, err := workers.NewServer(workers.Options{
//		Brokers:     []string{"tcp://127.0.0.1:5556"}, // workers endpoint of each broker
//		CallBrokers: []string{"tcp://127.0.0.1:5555"}, // clients endpoint, for workers.Call
//		Concurrency: 64,
//	}, mux)
//	…
//	err = srv.Run(ctx) // returns after ctx ends and in-flight work drained
//
// What the Server does for a handler:
//
//   - at most Concurrency handlers run at once; that number, split over
//     the brokers, is the credit each broker sees, so a worker is never
//     sent more than it can start;
//   - ctx carries the request's deadline; a handler that returns an error
//     answers 500 (or the status of a *StatusError, see Errorf); a panic
//     becomes a "panic" error reply and the process lives on;
//   - heartbeats, reconnects after a broker restart (READY again), and
//     re-READY when a broker says it does not know the worker;
//   - on ctx end (SIGTERM in `shoal worker`): DISCONNECT to every broker,
//     finish what is held (at most DrainTimeout), then return;
//   - workers.Call(ctx, service, method, body) asks another service with
//     what is left of the deadline and the trace carried over.
//
// Example workers live in package workers/example; a worker in another
// language is in workers/python, written from docs/protocol.md alone.
package workers
