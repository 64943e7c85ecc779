// Package frontend is Shoal's HTTP gateway. It turns each HTTP request into
// a wire.Request envelope, sends it through the brokers to a worker, and
// turns the worker's wire.Reply into the HTTP response:
//
//	HTTP client ──► frontend (fasthttp) ──Doer──► broker ──► worker
//	            ◄──        response      ◄─Reply─        ◄──
//
// # Running one
//
// A Server needs Options (the lead fills them from shoal.yaml) and a Doer,
// the thing that carries envelopes to the brokers; *broker.Client is one:
//
//	client, err := broker.NewClient(broker.ClientOptions{Endpoints: eps})
//	…
//	srv, err := frontend.New(frontend.Options{
//		Listen: ":8080",
//		Admin:  "127.0.0.1:9100", // /metrics
//		ForwardHeaders: []string{"Authorization", "Content-Type"},
//		Routes: []frontend.Route{
//			{Method: "GET", Path: "/users/{id}", Service: "users", Call: "get",
//				Timeout: 2 * time.Second, Idempotent: true, Attempts: 3},
//			{Method: "POST", Path: "/users", Service: "users", Call: "create"},
//			{Method: "GET", Path: "/files/{path:*}", Service: "files"},
//		},
//	}, client)
//	if err != nil { … } // every problem at once; *RouteError names the route
//	err = srv.Run(ctx)  // until ctx is done, then a graceful shutdown
//
// Run listens on Listen and Admin. To bring your own listeners, call Serve
// (and ServeAdmin) and later Shutdown. Handler returns the main handler for
// in-process tests and benchmarks. A Server is not restarted after Shutdown.
//
// # Routes and the envelope
//
// Routing is github.com/fasthttp/router: a method ("*" for any) and a
// pattern with {name}, {name:regexp}, {name?} (optional) and {name:*}
// (catch-all, last) parameters. A matched request becomes:
//
//	Service, Method   the route's Service and Call ("GET /users/{id}" if Call is "")
//	Verb, Path, Query the HTTP method, the path as received, the raw query without '?'
//	Params            the path parameters in pattern order, percent-decoded
//	                  (an absent optional one is left out; a malformed escape is 400)
//	Headers           the ForwardHeaders present, canonical names, repeats kept
//	Body              a copy of the request body (at most MaxBody bytes)
//	RID               X-Request-Id (below)
//	Deadline          now + the route's Timeout, in unix ms; the Doer gets a
//	                  context with the same deadline
//	Attempt           1; MaxAttempts: Attempts for Idempotent routes, else 1
//	Trace             one hop {Service: "frontend", Process, Start}
//
// /healthz and /readyz are the frontend's own and no route may claim them.
// There are no trailing-slash or case redirects: an unknown path is 404, a
// known path with another method 405 (with Allow).
//
// # Replies and errors
//
// One function, respond, maps every outcome to a status:
//
//	reply Code ""            reply Status (0 = 200), reply headers, reply body
//	handler                  reply Status if 4xx/5xx, else 500
//	no_service, no_worker,   503
//	shutdown, unavailable
//	overloaded               503 with Retry-After: 1
//	deadline                 504
//	worker_died              502
//	bad_request / panic      400 / 500
//	Doer: context deadline   504 deadline, answered at the route's timeout
//	Doer: any other error    503 unavailable
//
// Reply headers pass through except hop-by-hop ones (Connection,
// Transfer-Encoding, Content-Length, …) and X-Request-Id. Every error, the
// frontend's own included, has a JSON body:
//
//	{"error":"overloaded","message":"queue full","request_id":"9f2c41a07be3-1a"}
//
// The frontend's own codes are not_found, method_not_allowed, bad_request
// (malformed HTTP), body_too_large (413), headers_too_large (431),
// request_timeout (408), bad_reply (a worker status outside 200-599, 502)
// and internal (a panic in the frontend, 500: it is logged with its stack
// and the server keeps serving).
//
// # Request ids
//
// A request's X-Request-Id is kept if it is 1 to 128 printable ASCII
// characters; otherwise the frontend makes one: a random per-process prefix
// and a counter, in hex. It travels as Request.RID and comes back in the
// response's X-Request-Id, errors included.
//
// # Health, metrics, logs
//
// GET /healthz answers 200 while the process serves. GET /readyz answers
// 200 while Doer.Ready() (a broker link is up) and 503 otherwise or once
// shutdown began. The Admin listener serves /metrics, and only that, in
// Prometheus text format:
//
//	shoal_frontend_requests_total{route="GET /users/{id}",status="2xx"}
//	shoal_frontend_request_duration_seconds_bucket{route="GET /users/{id}",le="…"}
//	shoal_frontend_requests_in_flight
//	shoal_frontend_panics_total
//
// plus the Go and process metrics. The route label is the configured
// pattern, or unmatched (404/405), health, or invalid (rejected by
// fasthttp), so its cardinality is bounded by the config. Each Server has
// its own metrics.Set.
//
// Every 5xx is logged at warn. Options.AccessLog adds an info line for
// every request; it is off by default because at tens of thousands of
// requests a second the log would cost more than the requests.
//
// # The hot path and the Doer's contract
//
// A request runs on fasthttp's connection goroutine: no goroutine is started
// for it and no lock is held across I/O. Envelopes and their buffers are
// pooled, and every string in an envelope comes from one allocation (see
// TestAllocsPerRequest for the count). That is why a Doer must not keep the
// *wire.Request, nor anything it points to, after Do returns; and why the
// frontend takes the returned *wire.Reply as its own (its Body becomes the
// response body without a copy). The context passed to Do carries the
// route's deadline; fasthttp's RequestCtx never leaves the handler.
//
// # Shutdown
//
// When Run's context is done, the listeners close (new connections are
// refused), idle keep-alive connections close, and requests in flight get
// up to ShutdownTimeout to finish, their responses carrying Connection:
// close. Run then returns nil, or the shutdown's error if time ran out (the
// remaining requests still end at their own deadlines).
package frontend
