package frontend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/VictoriaMetrics/metrics"
	"github.com/fasthttp/router"
	"github.com/shoal-dev/shoal/wire"
	"github.com/valyala/fasthttp"
)

// Doer sends one request through the brokers and waits for its reply.
// broker.Client implements it.
//
// Do returns a *wire.Reply for every outcome the system produced, error
// codes such as no_service, overloaded or deadline included; err != nil
// only when no reply can come: ctx done (the context's error) or no broker
// reachable.
//
// Ownership: req is reused by the frontend as soon as Do returns, so Do must
// not keep req, nor anything it points to (Body, Params, Headers, Trace),
// after it returns. It may set req.ID and other fields. The returned Reply
// belongs to the frontend, which may hand its Body to the HTTP response
// without copying: the Doer must not modify or reuse it afterwards.
type Doer interface {
	Do(ctx context.Context, req *wire.Request) (*wire.Reply, error)
	Ready() bool // at least one broker link is up
}

// Server is the HTTP gateway. Create it with New, then call Run (or Serve
// with listeners of your own, and Shutdown).
type Server struct {
	o      Options
	d      Doer
	log    *slog.Logger
	router *router.Router
	http   *fasthttp.Server
	admin  *fasthttp.Server
	set    *metrics.Set

	handler fasthttp.RequestHandler
	fwd     map[string]string // canonical forwarded header names, mapped to themselves
	events  *eventHub         // GET /events, nil without an EventSource (sse.go)

	ids      atomic.Uint64 // Request.ID
	rids     atomic.Uint64 // generated X-Request-Id counter
	ridPfx   [ridPrefixLen]byte
	inFlight atomic.Int64
	draining atomic.Bool

	unmatched, health, invalid *routeStats
	panics                     *metrics.Counter

	mu        sync.Mutex // guards the fields below; never held across I/O
	addr      net.Addr
	adminAddr net.Addr
	lns       []net.Listener // every listener handed to Serve or ServeAdmin
}

// New validates o and builds a Server that sends requests through d. Every
// problem is reported at once; problems with a route are *RouteError.
func New(o Options, d Doer) (*Server, error) {
	if d == nil {
		return nil, errors.New("frontend: nil Doer")
	}
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Server{
		o:   o,
		d:   d,
		log: o.Logger,
		set: metrics.NewSet(),
		fwd: make(map[string]string, len(o.ForwardHeaders)),
	}
	for _, h := range o.ForwardHeaders {
		s.fwd[h] = h
	}
	newRIDPrefix(&s.ridPfx)
	s.unmatched = newRouteStats(s.set, routeUnmatched)
	s.health = newRouteStats(s.set, routeHealth)
	s.invalid = newRouteStats(s.set, routeInvalid)
	s.panics = s.set.NewCounter(metricPanics)
	s.set.NewGauge(metricInFlight, func() float64 { return float64(s.inFlight.Load()) })

	s.router = router.New()
	s.router.RedirectTrailingSlash = false // an API answers 404, not 301
	s.router.RedirectFixedPath = false
	s.router.HandleMethodNotAllowed = true
	s.router.NotFound = s.notFound
	s.router.MethodNotAllowed = s.methodNotAllowed
	var errs []error
	for i, r := range o.Routes {
		rt, err := s.newRoute(r)
		if err == nil {
			err = register(s.router, r.Method, r.Path, rt.serve)
		}
		if err != nil {
			errs = append(errs, &RouteError{Index: i, Method: r.Method, Path: r.Path, Err: err})
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if err := s.setupEvents(); err != nil {
		return nil, err
	}
	s.handler = s.serveHTTP

	s.http = &fasthttp.Server{
		Handler:                      s.handler,
		ErrorHandler:                 s.errorHandler,
		Name:                         "shoal",
		ReadTimeout:                  o.ReadTimeout,
		WriteTimeout:                 o.WriteTimeout,
		IdleTimeout:                  o.IdleTimeout,
		MaxRequestBodySize:           o.MaxBody,
		Concurrency:                  o.MaxConns,
		ReduceMemoryUsage:            false,
		DisablePreParseMultipartForm: true,
		StreamRequestBody:            false,
		NoDefaultContentType:         true, // a reply without Content-Type stays without
		CloseOnShutdown:              true,
		Logger:                       fasthttpLogger{s.log},
	}
	s.admin = &fasthttp.Server{
		Handler:      s.serveAdmin,
		Name:         "shoal",
		ReadTimeout:  o.ReadTimeout,
		WriteTimeout: o.WriteTimeout,
		IdleTimeout:  o.IdleTimeout,
		GetOnly:      true,
		Logger:       fasthttpLogger{s.log},
	}
	return s, nil
}

// register adds a route to the router, turning its panics (conflicting or
// malformed patterns) into errors.
func register(r *router.Router, method, path string, h fasthttp.RequestHandler) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("router: %v", v)
		}
	}()
	if method == "*" {
		method = router.MethodWild
	}
	r.Handle(method, path, h)
	return nil
}

// Handler returns the handler of the main listener: health checks, routes
// and error mapping. Serve uses it; tests and benchmarks may call it
// directly.
func (s *Server) Handler() fasthttp.RequestHandler { return s.handler }

// Addr returns the address of the main listener once Run or Serve has it,
// nil before.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// AdminAddr returns the address of the admin listener, nil if none.
func (s *Server) AdminAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.adminAddr
}

// track records a listener; it refuses (and closes) it once shutdown began.
func (s *Server) track(ln net.Listener, admin bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining.Load() {
		_ = ln.Close()
		return false
	}
	s.lns = append(s.lns, ln)
	if admin {
		s.adminAddr = ln.Addr()
	} else {
		s.addr = ln.Addr()
	}
	return true
}

// Serve serves the main listener (routes, /healthz, /readyz) on ln until
// Shutdown, and then returns nil.
func (s *Server) Serve(ln net.Listener) error { return s.serve(s.http, ln, false) }

// ServeAdmin serves /metrics on ln until Shutdown, and then returns nil.
func (s *Server) ServeAdmin(ln net.Listener) error { return s.serve(s.admin, ln, true) }

func (s *Server) serve(srv *fasthttp.Server, ln net.Listener, admin bool) error {
	if !s.track(ln, admin) {
		return nil
	}
	err := srv.Serve(ln)
	if s.draining.Load() {
		return nil // the listener was closed by Shutdown
	}
	return err
}

// Shutdown stops accepting connections, closes idle ones, and waits until
// in-flight requests are answered or ctx is done (then it returns the
// context's error and those requests end at their own deadlines). After
// Shutdown /readyz answers 503 on connections still open.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining.Store(true)
	lns := s.lns
	s.lns = nil
	s.mu.Unlock()
	s.shutdownEvents() // streams end with a final event, so fasthttp need not wait on them

	errc := make(chan error, 1)
	go func() { errc <- s.admin.ShutdownWithContext(ctx) }()
	err := s.http.ShutdownWithContext(ctx)
	err = errors.Join(err, <-errc)
	// A listener handed to Serve an instant before Shutdown may not have
	// reached fasthttp yet, which then did not close it.
	for _, ln := range lns {
		_ = ln.Close()
	}
	return err
}

// Run listens on Options.Listen (and Options.Admin when set), serves until
// ctx is done, then shuts down gracefully: it stops accepting, lets
// in-flight requests finish for up to ShutdownTimeout, and returns. It
// returns nil after a clean shutdown.
func (s *Server) Run(ctx context.Context) error {
	if s.o.Listen == "" {
		return errors.New("frontend: no listen address")
	}
	ln, err := net.Listen("tcp", s.o.Listen)
	if err != nil {
		return fmt.Errorf("frontend: cannot listen on %s: %w", s.o.Listen, err)
	}
	var aln net.Listener
	if s.o.Admin != "" {
		if aln, err = net.Listen("tcp", s.o.Admin); err != nil {
			_ = ln.Close()
			return fmt.Errorf("frontend: cannot listen on admin %s: %w", s.o.Admin, err)
		}
	}

	errc := make(chan error, 2)
	n := 1
	go func() { errc <- s.Serve(ln) }()
	if aln != nil {
		n++
		go func() { errc <- s.ServeAdmin(aln) }()
	}
	adminAddr := ""
	if aln != nil {
		adminAddr = aln.Addr().String()
	}
	s.log.Info("frontend listening", "addr", ln.Addr().String(), "admin", adminAddr, "routes", len(s.o.Routes))

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
		n--
		if serveErr == nil {
			serveErr = errors.New("frontend: listener stopped")
		}
	}
	s.log.Info("frontend shutting down", "in_flight", s.inFlight.Load(), "timeout", s.o.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), s.o.ShutdownTimeout)
	defer cancel()
	var shutErr error
	if err := s.Shutdown(sctx); err != nil {
		shutErr = fmt.Errorf("frontend: shutdown: %w", err)
	}
	for ; n > 0; n-- {
		if err := <-errc; err != nil && serveErr == nil {
			serveErr = err
		}
	}
	return errors.Join(serveErr, shutErr)
}

// fasthttpLogger sends fasthttp's own messages to slog. Errors serving a
// connection are the client's (malformed requests, resets) and already
// answered by errorHandler: they go to debug, so that a client cannot flood
// the log. The rest (accept errors, connection limit reached) is a warning.
type fasthttpLogger struct{ l *slog.Logger }

func (f fasthttpLogger) Printf(format string, args ...any) {
	level := slog.LevelWarn
	if strings.HasPrefix(format, "error when serving connection") {
		level = slog.LevelDebug
	}
	if f.l.Enabled(context.Background(), level) {
		f.l.Log(context.Background(), level, "fasthttp: "+fmt.Sprintf(format, args...))
	}
}
