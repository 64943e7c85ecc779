package workers

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/shoal-dev/shoal/broker"
	"github.com/shoal-dev/shoal/internal/link"
	"github.com/shoal-dev/shoal/internal/reqctx"
	"github.com/shoal-dev/shoal/internal/zsock"
	"github.com/shoal-dev/shoal/wire"
)

// Options configure a Server.
type Options struct {
	Brokers      []string      // workers endpoint of every broker
	CallBrokers  []string      // clients endpoint of every broker, for Call; nil = no calls
	Concurrency  int           // requests handled at once by this process (default 64)
	Heartbeat    time.Duration // default 1s
	Liveness     int           // default 3
	DrainTimeout time.Duration // default 10s
	Transport    zsock.Options
	Name         string // e.g. "echo:0"; default the first service
	Logger       *slog.Logger
	Metrics      *metrics.Set // where the worker's metrics go; default a new set

	// Events (events.go). A server with EventsOut and no services only
	// subscribes.
	EventsIn    []string // events_in endpoint of every broker, for Publish; nil = none
	EventsOut   []string // events_out endpoint of every broker, for Subscribe; nil = none
	EventBuffer int      // events waiting per subscription before new ones drop (default 1024)
}

// Server connects to every broker, offers the mux's services and serves
// requests with at most Concurrency handlers running at once.
type Server struct {
	o       Options
	mux     *ServeMux
	log     *slog.Logger
	process string
	links   []*link.Link
	jobs    chan job
	caller  *broker.Client
	ev      eventState

	inflight atomic.Int64
	draining atomic.Bool
	wg       sync.WaitGroup

	mReqs     *metrics.Set
	served    map[string]*serviceMetrics
	panics    *metrics.Counter
	inflightG *metrics.Gauge
}

type serviceMetrics struct {
	ok, failed *metrics.Counter
	dur        *metrics.Histogram
}

type job struct {
	l   *link.Link
	env []byte
}

// NewServer prepares a server for mux's services; Run starts it.
func NewServer(o Options, mux *ServeMux) (*Server, error) {
	if len(o.Brokers) == 0 {
		return nil, fmt.Errorf("workers: no broker endpoints")
	}
	if len(mux.h) == 0 && len(o.EventsOut) == 0 {
		return nil, fmt.Errorf("workers: no services registered")
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 64
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = time.Second
	}
	if o.Liveness < 2 {
		o.Liveness = 3
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Name == "" {
		o.Name = firstOr(mux.Services(), "subscriber")
	}
	if o.Metrics == nil {
		o.Metrics = metrics.NewSet()
	}
	host, _ := os.Hostname()
	s := &Server{
		o: o, mux: mux, log: o.Logger.With("worker", o.Name),
		process: fmt.Sprintf("%s/%d", host, os.Getpid()),
		jobs:    make(chan job, o.Concurrency*len(o.Brokers)),
		mReqs:   o.Metrics,
		served:  make(map[string]*serviceMetrics),
	}
	for _, svc := range mux.Services() {
		s.served[svc] = &serviceMetrics{
			ok:     o.Metrics.NewCounter(fmt.Sprintf(`shoal_worker_requests_total{service=%q,outcome="ok"}`, svc)),
			failed: o.Metrics.NewCounter(fmt.Sprintf(`shoal_worker_requests_total{service=%q,outcome="error"}`, svc)),
			dur:    o.Metrics.NewHistogram(fmt.Sprintf(`shoal_worker_request_duration_seconds{service=%q}`, svc)),
		}
	}
	s.panics = o.Metrics.NewCounter(`shoal_worker_panics_total`)
	s.inflightG = o.Metrics.NewGauge(`shoal_worker_in_flight`, func() float64 { return float64(s.inflight.Load()) })
	if len(o.CallBrokers) > 0 {
		c, err := broker.NewClient(broker.ClientOptions{Endpoints: o.CallBrokers, Heartbeat: o.Heartbeat,
			Liveness: o.Liveness, Transport: o.Transport, Logger: o.Logger})
		if err != nil {
			return nil, err
		}
		s.caller = c
	}
	if err := s.startEvents(); err != nil {
		if s.caller != nil {
			s.caller.Close()
		}
		return nil, err
	}
	return s, nil
}

// Process is this worker's "host/pid", as sent in READY.
func (s *Server) Process() string { return s.process }

// Connected reports how many broker links are up.
func (s *Server) Connected() int {
	n := 0
	for _, l := range s.links {
		if l.Up() {
			n++
		}
	}
	return n
}

// credit is what each broker may send: the process's concurrency split
// over the brokers, so that all of them together never exceed it.
func (s *Server) credit() int { return max(1, s.o.Concurrency/len(s.o.Brokers)) }

func (s *Server) readyFrames() [][]byte {
	rd := wire.Ready{Services: s.mux.Services(), Credit: s.credit(),
		Heartbeat: int(s.o.Heartbeat / time.Millisecond), Name: s.o.Name, Process: s.process}
	return wire.Frames(wire.CmdReady, rd.AppendMsgpack(nil))
}

// Run serves until ctx ends, then drains: it tells every broker to send
// nothing more, finishes what it holds (at most DrainTimeout) and returns.
func (s *Server) Run(ctx context.Context) error {
	for range s.o.Concurrency {
		s.wg.Add(1)
		go s.handlerLoop()
	}
	for _, ep := range s.requestBrokers() {
		s.links = append(s.links, link.Start(link.Options{
			Endpoint:  ep,
			Heartbeat: s.o.Heartbeat,
			Liveness:  s.o.Liveness,
			Transport: s.o.Transport,
			Logger:    s.o.Logger,
			Batch:     wire.CmdReply,
			OnUp: func(l *link.Link) {
				if s.draining.Load() {
					return
				}
				if err := l.SendNow(s.readyFrames()); err != nil {
					s.log.Warn("cannot send READY", "err", err)
				}
			},
			Handle: s.handle,
		}))
	}
	s.log.Info("worker serving", "services", s.mux.Services(), "concurrency", s.o.Concurrency, "brokers", s.o.Brokers)
	<-ctx.Done()
	return s.drain()
}

func (s *Server) drain() error {
	s.draining.Store(true)
	s.log.Info("draining", "in_flight", s.inflight.Load())
	bye := wire.Frames(wire.CmdDisconnect)
	for _, l := range s.links {
		_ = l.SendNow(bye)
	}
	// Requests the broker sent before it read DISCONNECT may still be on
	// the wire: keep reading for one heartbeat interval at least.
	quiet := time.Now().Add(s.o.Heartbeat)
	deadline := time.Now().Add(s.o.DrainTimeout)
	for s.inflight.Load() > 0 || len(s.jobs) > 0 || time.Now().Before(quiet) {
		if time.Now().After(deadline) {
			s.log.Warn("drain timeout; abandoning requests", "in_flight", s.inflight.Load())
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Replies queued on the links go out before they close.
	for _, l := range s.links {
		l.Close()
	}
	close(s.jobs)
	s.wg.Wait()
	s.stopEvents()
	if s.caller != nil {
		s.caller.Close()
	}
	s.log.Info("drained")
	return nil
}

// handle runs on a link's receive goroutine.
func (s *Server) handle(l *link.Link, m wire.Message) {
	switch m.Cmd {
	case wire.CmdRequest:
		for _, env := range m.Body {
			s.inflight.Add(1)
			s.jobs <- job{l: l, env: env}
		}
	case wire.CmdDisconnect:
		// The broker does not know us (it restarted or buried us): offer
		// our services again.
		if !s.draining.Load() {
			_ = l.SendNow(s.readyFrames())
		}
	}
}

func (s *Server) handlerLoop() {
	defer s.wg.Done()
	for j := range s.jobs {
		s.serveOne(j)
		s.inflight.Add(-1)
	}
}

func (s *Server) serveOne(j job) {
	var req wire.Request
	if err := req.UnmarshalMsgpack(j.env); err != nil {
		// Without a trustworthy id no reply can be matched; the broker
		// gives the client an error at the deadline.
		s.log.Warn("dropping malformed request envelope", "err", err)
		if id, perr := wire.PeekReplyID(j.env); perr == nil {
			rep := wire.Reply{ID: id, Status: 400, Code: wire.CodeBadRequest, Error: err.Error()}
			j.l.Send(rep.AppendMsgpack(nil))
		}
		return
	}
	start := time.Now()
	ctx := context.Background()
	var cancel context.CancelFunc
	if req.Deadline > 0 {
		ctx, cancel = context.WithDeadline(ctx, time.UnixMilli(req.Deadline))
	} else {
		ctx, cancel = context.WithCancel(ctx)
	}
	ctx = reqctx.With(ctx, &callInfo{s: s, req: &req, start: start})
	resp, err := s.call(ctx, &req)
	cancel()
	rep := toReply(req.ID, resp, err)
	if rep.Code == "" || rep.Code == wire.CodeHandler && rep.Status < 500 {
		rep.Trace = append(req.Trace, s.hop(req.Service, start))
	} else {
		rep.Trace = append(req.Trace, s.hop(req.Service, start, wire.KV{Key: "error", Value: string(rep.Code)}))
	}
	if m := s.served[req.Service]; m != nil {
		if rep.Code == "" {
			m.ok.Inc()
		} else {
			m.failed.Inc()
		}
		m.dur.UpdateDuration(start)
	}
	j.l.Send(rep.AppendMsgpack(make([]byte, 0, 64+len(rep.Body))))
}

// call runs the handler, turning a panic into an error reply.
func (s *Server) call(ctx context.Context, req *wire.Request) (resp Response, err error) {
	defer func() {
		if p := recover(); p != nil {
			s.panics.Inc()
			s.log.Error("handler panicked", "service", req.Service, "panic", p, "stack", string(debug.Stack()))
			resp, err = Response{}, &panicError{p}
		}
	}()
	return s.mux.Serve(ctx, req)
}

type panicError struct{ v any }

func (e *panicError) Error() string { return fmt.Sprintf("handler panicked: %v", e.v) }

func (s *Server) hop(service string, start time.Time, tags ...wire.KV) wire.Hop {
	return wire.Hop{Service: service, Process: s.process, Start: start.UnixMicro(),
		Dur: time.Since(start).Microseconds(), Tags: tags}
}
