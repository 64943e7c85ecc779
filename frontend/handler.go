package frontend

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/shoal-dev/shoal/wire"
	"github.com/valyala/fasthttp"
)

// HeaderRequestID carries the request id in and out.
const HeaderRequestID = "X-Request-Id"

const (
	pathHealthz = "/healthz"
	pathReadyz  = "/readyz"

	maxRIDLen    = 128
	ridPrefixLen = 12 // hex digits of randomness per process
)

// route is a configured Route with what the hot path needs precomputed.
type route struct {
	s       *Server
	r       Route
	label   string // "GET /users/{id}", the metrics and log label
	keys    []any  // parameter names as interface values: no boxing per request
	names   []string
	anyVerb bool // Method "*": the verb comes from the request
	stats   *routeStats
}

func (s *Server) newRoute(r Route) (*route, error) {
	names, err := paramNames(r.Path)
	if err != nil {
		return nil, err
	}
	rt := &route{s: s, r: r, label: r.Method + " " + r.Path, names: names, anyVerb: r.Method == "*"}
	for _, n := range names {
		rt.keys = append(rt.keys, n)
	}
	rt.stats = newRouteStats(s.set, rt.label)
	return rt, nil
}

// exchange is the pooled per-request state. The Doer must not keep req
// after Do returns (see Doer), so everything here is reused.
type exchange struct {
	req    wire.Request
	params [4]wire.KV
	hdrs   [8]wire.KV
	hop    [1]wire.Hop
	ends   []int  // end offsets in buf of the header values, then the params
	buf    []byte // request strings before their one conversion; then scratch
}

// Buffers above these sizes are dropped rather than pooled, so that one
// large request does not pin its memory forever.
const (
	maxPooledBody = 64 << 10
	maxPooledBuf  = 16 << 10
)

var exchanges = sync.Pool{New: func() any { return new(exchange) }}

func getExchange() *exchange {
	x := exchanges.Get().(*exchange)
	x.req.Params = x.params[:0]
	x.req.Headers = x.hdrs[:0]
	return x
}

func putExchange(x *exchange) {
	body := x.req.Body
	if cap(body) > maxPooledBody {
		body = nil
	}
	if cap(x.buf) > maxPooledBuf {
		x.buf = nil
	}
	clear(x.params[:])
	clear(x.hdrs[:])
	x.hop[0] = wire.Hop{}
	x.req = wire.Request{Body: body[:0]}
	x.ends = x.ends[:0]
	exchanges.Put(x)
}

// serveHTTP is the main listener's handler: health checks first (they are
// not routable), then the router.
func (s *Server) serveHTTP(ctx *fasthttp.RequestCtx) {
	defer func() {
		if v := recover(); v != nil {
			s.recovered(ctx, v, s.unmatched, time.Now())
		}
	}()
	switch string(ctx.Request.URI().PathOriginal()) {
	case pathHealthz:
		s.serveHealth(ctx, true, "ok\n")
	case pathReadyz:
		switch {
		case s.draining.Load():
			s.serveHealth(ctx, false, "draining\n")
		case !s.d.Ready():
			s.serveHealth(ctx, false, "no broker reachable\n")
		default:
			s.serveHealth(ctx, true, "ready\n")
		}
	default:
		s.router.Handler(ctx)
	}
}

func (s *Server) serveHealth(ctx *fasthttp.RequestCtx, ok bool, msg string) {
	start := time.Now()
	status := fasthttp.StatusOK
	if !ok {
		status = fasthttp.StatusServiceUnavailable
	}
	if !ctx.IsGet() && !ctx.IsHead() {
		ctx.Response.Header.Set("Allow", "GET, HEAD")
		s.writeError(ctx, fasthttp.StatusMethodNotAllowed, "method_not_allowed", "", "")
		s.health.observe(fasthttp.StatusMethodNotAllowed, start)
		return
	}
	ctx.SetStatusCode(status)
	ctx.SetContentType("text/plain; charset=utf-8")
	ctx.SetBodyString(msg)
	s.health.observe(status, start)
}

func (s *Server) notFound(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	s.writeError(ctx, fasthttp.StatusNotFound, "not_found", "no route for this path", s.requestID(ctx))
	s.unmatched.observe(fasthttp.StatusNotFound, start)
}

func (s *Server) methodNotAllowed(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	s.writeError(ctx, fasthttp.StatusMethodNotAllowed, "method_not_allowed", "", s.requestID(ctx))
	s.unmatched.observe(fasthttp.StatusMethodNotAllowed, start)
}

// errorHandler answers what fasthttp could not read as a request. The
// connection is closed after the response.
func (s *Server) errorHandler(ctx *fasthttp.RequestCtx, err error) {
	start := time.Now()
	var small *fasthttp.ErrSmallBuffer
	var status int
	var code string
	var netErr interface{ Timeout() bool }
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		status, code = fasthttp.StatusRequestEntityTooLarge, "body_too_large"
	case errors.As(err, &small):
		status, code = fasthttp.StatusRequestHeaderFieldsTooLarge, "headers_too_large"
	case errors.As(err, &netErr) && netErr.Timeout():
		status, code = fasthttp.StatusRequestTimeout, "request_timeout"
	default:
		status, code = fasthttp.StatusBadRequest, "bad_request"
	}
	msg := fasthttp.StatusMessage(status)
	if status == fasthttp.StatusRequestEntityTooLarge {
		msg = "request body larger than " + strconv.Itoa(s.o.MaxBody) + " bytes"
	}
	rid := s.requestID(ctx)
	s.writeError(ctx, status, code, msg, rid)
	s.invalid.observe(status, start)
	s.log.Debug("invalid request", "status", status, "error", err, "remote", ctx.RemoteAddr().String(), "request_id", rid)
}

// serve is the handler of one route: request → envelope → Doer → reply.
func (rt *route) serve(ctx *fasthttp.RequestCtx) {
	s := rt.s
	start := time.Now()
	s.inFlight.Add(1)
	x := getExchange()
	rid := ""
	defer func() {
		if v := recover(); v != nil {
			// x is dropped, not pooled: the Doer's state is unknown.
			s.inFlight.Add(-1)
			s.recoveredRID(ctx, v, rt.stats, start, rid)
		}
	}()

	req := &x.req
	rid, ok := rt.fill(ctx, x, start)
	if !ok {
		s.writeError(ctx, fasthttp.StatusBadRequest, "bad_request", "malformed percent-encoding in path", rid)
		rt.finish(ctx, x, start, rid, outcome{status: fasthttp.StatusBadRequest, code: "bad_request"})
		return
	}

	dctx, cancel := context.WithDeadline(context.Background(), start.Add(rt.r.Timeout))
	rep, err := s.d.Do(dctx, req)
	cancel()
	out := s.respond(ctx, x, rid, rep, err)
	rt.finish(ctx, x, start, rid, out)
}

// fill builds the envelope from the request. Every string it needs comes
// from one allocation: the bytes are gathered in x.buf, converted once,
// and sliced. It reports false for a malformed percent-encoded parameter.
func (rt *route) fill(ctx *fasthttp.RequestCtx, x *exchange, start time.Time) (rid string, ok bool) {
	s := rt.s
	req := &x.req
	b := x.buf[:0]

	b = append(b, ctx.Request.URI().PathOriginal()...)
	endPath := len(b)
	b = append(b, ctx.URI().QueryString()...)
	endQuery := len(b)
	if in := ctx.Request.Header.Peek(HeaderRequestID); saneRID(in) {
		b = append(b, in...)
	} else {
		b = s.appendRID(b)
	}
	endRID := len(b)
	endVerb := endRID
	if rt.anyVerb {
		b = append(b, ctx.Method()...)
		endVerb = len(b)
	}
	if len(s.fwd) > 0 {
		for k, v := range ctx.Request.Header.All() {
			if key, fwd := s.fwd[string(k)]; fwd {
				req.Headers = append(req.Headers, wire.KV{Key: key})
				b = append(b, v...)
				x.ends = append(x.ends, len(b))
			}
		}
	}
	ok = true
	for i, key := range rt.keys {
		v, set := ctx.UserValue(key).(string)
		if !set {
			continue // an optional parameter that is absent
		}
		req.Params = append(req.Params, wire.KV{Key: rt.names[i]})
		if b, ok = appendUnescaped(b, v); !ok {
			break
		}
		x.ends = append(x.ends, len(b))
	}

	all := string(b)
	x.buf = b
	rid = all[endQuery:endRID]
	if !ok {
		return rid, false
	}
	req.Path = all[:endPath]
	req.Query = all[endPath:endQuery]
	req.RID = rid
	if rt.anyVerb {
		req.Verb = all[endRID:endVerb]
	} else {
		req.Verb = rt.r.Method
	}
	at, e := endVerb, 0
	for i := range req.Headers {
		req.Headers[i].Value = all[at:x.ends[e]]
		at = x.ends[e]
		e++
	}
	for i := range req.Params {
		req.Params[i].Value = all[at:x.ends[e]]
		at = x.ends[e]
		e++
	}

	req.ID = s.ids.Add(1)
	req.Service = rt.r.Service
	req.Method = rt.r.Call
	req.Body = append(req.Body[:0], ctx.PostBody()...)
	req.Deadline = start.Add(rt.r.Timeout).UnixMilli()
	req.Attempt = 1
	req.MaxAttempts = rt.r.Attempts
	x.hop[0] = wire.Hop{Service: "frontend", Process: s.o.Process, Start: start.UnixMicro()}
	req.Trace = x.hop[:]
	return rid, true
}

// outcome is what the access log and metrics need to know of a response.
type outcome struct {
	status int
	code   string // "" on success
	msg    string // error detail for the log
}

// finish records a routed request and recycles its exchange.
func (rt *route) finish(ctx *fasthttp.RequestCtx, x *exchange, start time.Time, rid string, out outcome) {
	s := rt.s
	rt.stats.observe(out.status, start)
	s.inFlight.Add(-1)
	if out.status >= 500 || s.o.AccessLog {
		level := slog.LevelInfo
		if out.status >= 500 {
			level = slog.LevelWarn
		}
		s.log.LogAttrs(context.Background(), level, "request",
			slog.String("route", rt.label),
			slog.String("method", string(ctx.Method())),
			slog.String("path", string(ctx.Request.URI().PathOriginal())),
			slog.Int("status", out.status),
			slog.String("code", out.code),
			slog.String("error", out.msg),
			slog.Duration("dur", time.Since(start)),
			slog.String("request_id", rid),
			slog.String("remote", ctx.RemoteAddr().String()),
		)
	}
	putExchange(x)
}

// recovered answers 500 for a panic in a handler, logs it with its stack,
// and keeps the server serving.
func (s *Server) recovered(ctx *fasthttp.RequestCtx, v any, rs *routeStats, start time.Time) {
	s.recoveredRID(ctx, v, rs, start, "")
}

func (s *Server) recoveredRID(ctx *fasthttp.RequestCtx, v any, rs *routeStats, start time.Time, rid string) {
	s.panics.Inc()
	if rid == "" {
		rid = s.requestID(ctx)
	}
	s.log.Error("panic in request handler", "panic", v, "path", string(ctx.Request.URI().PathOriginal()),
		"request_id", rid, "stack", string(debug.Stack()))
	ctx.Response.Reset()
	s.writeError(ctx, fasthttp.StatusInternalServerError, "internal", "internal error", rid)
	rs.observe(fasthttp.StatusInternalServerError, start)
}

// ---- request ids ----

func newRIDPrefix(p *[ridPrefixLen]byte) {
	var r [ridPrefixLen / 2]byte
	_, _ = rand.Read(r[:])
	hex.Encode(p[:], r[:])
}

// appendRID appends a new request id: the process's random prefix, '-',
// and a counter in hex.
func (s *Server) appendRID(b []byte) []byte {
	b = append(b, s.ridPfx[:]...)
	b = append(b, '-')
	return strconv.AppendUint(b, s.rids.Add(1), 16)
}

// requestID returns the request's X-Request-Id if it is sane, or a new
// one. Off the hot path.
func (s *Server) requestID(ctx *fasthttp.RequestCtx) string {
	var rid string
	if in := ctx.Request.Header.Peek(HeaderRequestID); saneRID(in) {
		rid = string(in)
	} else {
		rid = string(s.appendRID(make([]byte, 0, 32)))
	}
	return rid
}

// saneRID accepts 1 to 128 printable ASCII characters.
func saneRID(b []byte) bool {
	if len(b) == 0 || len(b) > maxRIDLen {
		return false
	}
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

// appendUnescaped appends the percent-decoding of s to b ('+' stays '+',
// as it does in a path).
func appendUnescaped(b []byte, s string) ([]byte, bool) {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '%' {
			b = append(b, c)
			continue
		}
		if i+2 >= len(s) {
			return b, false
		}
		hi, ok1 := unhex(s[i+1])
		lo, ok2 := unhex(s[i+2])
		if !ok1 || !ok2 {
			return b, false
		}
		b = append(b, hi<<4|lo)
		i += 2
	}
	return b, true
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
