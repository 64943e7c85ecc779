package frontend_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/frontend"
	"github.com/shoal-dev/shoal/internal/testenv"
	"github.com/shoal-dev/shoal/wire"
)

func TestBodyTooLarge(t *testing.T) {
	d := okDoer()
	ts := start(t, frontend.Options{Routes: testRoutes, MaxBody: 1024}, d, false)

	if r := ts.do(t, "POST", "/users", strings.NewReader(strings.Repeat("a", 1024))); r.status != 200 {
		t.Fatalf("body of MaxBody: status %d", r.status)
	}
	t.Run("content-length", func(t *testing.T) {
		r := ts.do(t, "POST", "/users", strings.NewReader(strings.Repeat("a", 4096)), "X-Request-Id", "big-1")
		if r.status != 413 {
			t.Fatalf("status %d, want 413", r.status)
		}
		if e := decodeError(t, r); e.Error != "body_too_large" || e.RequestID != "big-1" {
			t.Errorf("error body %+v", e)
		}
	})
	t.Run("chunked", func(t *testing.T) {
		// An io.Reader of unknown length makes net/http send it chunked.
		r := ts.do(t, "POST", "/users", io.MultiReader(strings.NewReader(strings.Repeat("b", 3000))))
		if r.status != 413 {
			t.Fatalf("status %d, want 413", r.status)
		}
		decodeError(t, r)
	})
	if d.count() != 1 {
		t.Errorf("the Doer got %d requests, want only the first", d.count())
	}
	if r := ts.do(t, "GET", "/users/1", nil); r.status != 200 {
		t.Errorf("after 413: status %d", r.status)
	}
}

func TestMalformedHTTP(t *testing.T) {
	d := okDoer()
	ts := start(t, frontend.Options{Routes: testRoutes}, d, true)
	for _, raw := range []string{
		"GARBAGE\r\n\r\n",
		"GET /users/1 HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
		"GET /users/1 HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
	} {
		out := rawRequest(t, ts.addr, raw)
		if !strings.HasPrefix(out, "HTTP/1.1 400 ") || !strings.Contains(out, `"error":"bad_request"`) {
			t.Errorf("%q answered %q, want a 400 JSON error", raw, out)
		}
	}
	if d.count() != 0 {
		t.Errorf("the Doer got %d requests", d.count())
	}
	if r := ts.do(t, "GET", "/users/1", nil); r.status != 200 {
		t.Errorf("after malformed requests: status %d", r.status)
	}
	m := doURL(t, ts.client, "GET", "http://"+ts.AdminAddr().String()+"/metrics", nil).body
	if !strings.Contains(m, `shoal_frontend_requests_total{route="invalid",status="4xx"} 3`) {
		t.Errorf("metrics do not count the 3 invalid requests:\n%s", grep(m, "requests_total"))
	}
}

func TestMetrics(t *testing.T) {
	d := okDoer()
	ts := start(t, frontend.Options{Routes: testRoutes}, d, true)
	ts.do(t, "GET", "/users/1", nil)
	ts.do(t, "GET", "/users/2", nil)
	ts.do(t, "GET", "/nope", nil)
	admin := "http://" + ts.AdminAddr().String()
	r := doURL(t, ts.client, "GET", admin+"/metrics", nil)
	if r.status != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), "text/plain") {
		t.Fatalf("/metrics: %d %q", r.status, r.header.Get("Content-Type"))
	}
	for _, want := range []string{
		`shoal_frontend_requests_total{route="GET /users/{id}",status="2xx"} 2`,
		`shoal_frontend_requests_total{route="unmatched",status="4xx"} 1`,
		`shoal_frontend_request_duration_seconds_count{route="GET /users/{id}"} 2`,
		`shoal_frontend_request_duration_seconds_bucket{route="GET /users/{id}",le="+Inf"} 2`,
		"shoal_frontend_requests_in_flight 0",
		"go_goroutines ", // process metrics
	} {
		if !strings.Contains(r.body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(r.body, "/users/1") {
		t.Error("a raw path leaked into a label")
	}
	if r := doURL(t, ts.client, "GET", admin+"/users/1", nil); r.status != 404 {
		t.Errorf("admin /users/1: %d, want 404", r.status)
	}
}

func TestAttempts(t *testing.T) {
	d := okDoer()
	ts := start(t, frontend.Options{Routes: testRoutes}, d, false)
	ts.do(t, "GET", "/users/1", nil)
	if got := d.last(t).MaxAttempts; got != 3 {
		t.Errorf("idempotent route: MaxAttempts %d, want 3", got)
	}
	ts.do(t, "POST", "/users", strings.NewReader("x"))
	if got := d.last(t).MaxAttempts; got != 1 {
		t.Errorf("non-idempotent route with Attempts 3: MaxAttempts %d, want 1", got)
	}
}

// TestRunGracefulShutdown: cancelling Run's context refuses new
// connections at once and lets the request in flight finish.
func TestRunGracefulShutdown(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	d := newFake(func(ctx context.Context, req *wire.Request) (*wire.Reply, error) {
		if req.Service == "slow" {
			close(entered)
			select {
			case <-release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return &wire.Reply{Body: []byte("done")}, nil
	})
	s, err := frontend.New(frontend.Options{
		Listen: "127.0.0.1:0", Admin: "127.0.0.1:0", ShutdownTimeout: 10 * time.Second, Logger: testLogger(t),
		Routes: []frontend.Route{
			{Method: "GET", Path: "/slow", Service: "slow", Timeout: 10 * time.Second},
			{Method: "GET", Path: "/fast", Service: "fast"},
		},
	}, d)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- s.Run(ctx) }()
	checkFor(t, 5*time.Second, func() error {
		if s.Addr() == nil || s.AdminAddr() == nil {
			return errors.New("listeners not up")
		}
		return nil
	})
	addr, adminAddr := s.Addr().String(), s.AdminAddr().String()
	client := &http.Client{Transport: &http.Transport{}, Timeout: 20 * time.Second}
	if r := doURL(t, client, "GET", "http://"+addr+"/fast", nil); r.status != 200 {
		t.Fatalf("/fast: %d", r.status)
	}

	slow := make(chan response, 1)
	go func() {
		r, err := fetch(client, "GET", "http://"+addr+"/slow", nil)
		if err != nil {
			r.body = err.Error()
		}
		slow <- r
	}()
	<-entered
	cancel()

	checkFor(t, 5*time.Second, func() error {
		for _, a := range []string{addr, adminAddr} {
			if c, err := net.DialTimeout("tcp", a, time.Second); err == nil {
				c.Close()
				return errors.New(a + " still accepts connections")
			}
		}
		return nil
	})
	select {
	case err := <-ran:
		t.Fatalf("Run returned %v with a request in flight", err)
	case r := <-slow:
		t.Fatalf("slow request ended early: %d %q", r.status, r.body)
	default:
	}

	close(release)
	if r := <-slow; r.status != 200 || r.body != "done" {
		t.Errorf("in-flight request: %d %q, want 200 done", r.status, r.body)
	}
	select {
	case err := <-ran:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after the in-flight request finished")
	}
}

// TestRunShutdownTimeout: a request still running at ShutdownTimeout does
// not hold Run forever.
func TestRunShutdownTimeout(t *testing.T) {
	var entered atomic.Bool
	d := newFake(func(ctx context.Context, req *wire.Request) (*wire.Reply, error) {
		entered.Store(true)
		<-ctx.Done()
		return nil, ctx.Err()
	})
	s, err := frontend.New(frontend.Options{
		Listen: "127.0.0.1:0", ShutdownTimeout: 200 * time.Millisecond, Logger: testLogger(t),
		Routes: []frontend.Route{{Method: "GET", Path: "/stuck", Service: "stuck", Timeout: 2 * time.Second}},
	}, d)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- s.Run(ctx) }()
	checkFor(t, 5*time.Second, func() error {
		if s.Addr() == nil {
			return errors.New("not listening")
		}
		return nil
	})
	stuck := make(chan response, 1)
	client := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	go func() {
		r, err := fetch(client, "GET", "http://"+s.Addr().String()+"/stuck", nil)
		if err != nil {
			r.body = err.Error()
		}
		stuck <- r
	}()
	checkFor(t, 5*time.Second, func() error {
		if !entered.Load() {
			return errors.New("request not in flight")
		}
		return nil
	})
	begin := time.Now()
	cancel()
	err = <-ran
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Run: %v, want a shutdown deadline error", err)
	}
	if took := time.Since(begin); took > time.Second {
		t.Errorf("Run took %v to give up, want about 200ms", took)
	}
	if r := <-stuck; r.status != 504 {
		t.Errorf("stuck request: %d, want 504 at its own deadline", r.status)
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestAccessLog(t *testing.T) {
	for _, on := range []bool{false, true} {
		var buf testenv.SyncBuffer
		logger := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
		d := newFake(func(_ context.Context, req *wire.Request) (*wire.Reply, error) {
			if req.Params[0].Value == "err" {
				return &wire.Reply{Code: wire.CodeNoWorker, Error: "nobody home"}, nil
			}
			return &wire.Reply{}, nil
		})
		ts := start(t, frontend.Options{Routes: testRoutes, AccessLog: on, Logger: logger}, d, false)
		ts.do(t, "GET", "/users/ok", nil, "X-Request-Id", "log-ok")
		ts.do(t, "GET", "/users/err", nil, "X-Request-Id", "log-err")
		out := buf.String()
		okLine := grep(out, `"request_id":"log-ok"`)
		if on != (strings.Contains(okLine, `"level":"INFO"`) && strings.Contains(okLine, `"route":"GET /users/{id}"`) &&
			strings.Contains(okLine, `"status":200`)) {
			t.Errorf("AccessLog %v: the 200 logged %q", on, okLine)
		}
		errLine := grep(out, `"request_id":"log-err"`)
		if !strings.Contains(errLine, `"level":"WARN"`) || !strings.Contains(errLine, `"code":"no_worker"`) ||
			!strings.Contains(errLine, `"error":"nobody home"`) {
			t.Errorf("AccessLog %v: the 503 logged %q, want a warning with its code and error", on, errLine)
		}
	}
}
