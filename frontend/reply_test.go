package frontend_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/frontend"
	"github.com/shoal-dev/shoal/wire"
)

func TestReplyMapping(t *testing.T) {
	type answer struct {
		rep *wire.Reply
		err error
	}
	var current atomic.Pointer[answer] // the HTTP round trip is no happens-before edge for the race detector
	d := newFake(func(context.Context, *wire.Request) (*wire.Reply, error) {
		a := current.Load()
		return a.rep, a.err
	})
	ts := start(t, frontend.Options{Routes: testRoutes}, d, false)

	tests := []struct {
		name       string
		answer     answer
		status     int
		code       string // JSON error code; "" = not an error body
		message    string
		retryAfter string
		headers    map[string]string // must be present with these values ("" = absent)
		body       string
	}{
		{
			name: "worker status and headers",
			answer: answer{rep: &wire.Reply{Status: 201, Body: []byte(`{"id":7}`), Headers: kvs(
				"Content-Type", "application/json", "X-Custom", "v", "Location", "/users/7",
				"Connection", "close", "Transfer-Encoding", "chunked", "Content-Length", "999",
				"Keep-Alive", "timeout=1", "Upgrade", "h2c", "X-Request-Id", "forged", "Bad Name", "x")}},
			status: 201, body: `{"id":7}`,
			headers: map[string]string{"Content-Type": "application/json", "X-Custom": "v", "Location": "/users/7",
				"Content-Length": "8", "Transfer-Encoding": "", "Keep-Alive": "", "Upgrade": "", "Bad Name": ""},
		},
		{name: "status 0 is 200", answer: answer{rep: &wire.Reply{Body: []byte("hi")}}, status: 200, body: "hi",
			headers: map[string]string{"Content-Type": ""}},
		{name: "worker 404 with its own body", answer: answer{rep: &wire.Reply{Status: 404, Body: []byte("gone")}}, status: 404, body: "gone"},
		{name: "no_service", answer: answer{rep: &wire.Reply{Code: wire.CodeNoService, Error: "no such service: users"}},
			status: 503, code: "no_service", message: "no such service: users"},
		{name: "no_worker", answer: answer{rep: &wire.Reply{Code: wire.CodeNoWorker}}, status: 503, code: "no_worker", message: "Service Unavailable"},
		{name: "overloaded", answer: answer{rep: &wire.Reply{Code: wire.CodeOverloaded, Error: "queue full"}},
			status: 503, code: "overloaded", message: "queue full", retryAfter: "1"},
		{name: "deadline", answer: answer{rep: &wire.Reply{Code: wire.CodeDeadline}}, status: 504, code: "deadline"},
		{name: "worker_died", answer: answer{rep: &wire.Reply{Code: wire.CodeWorkerDied}}, status: 502, code: "worker_died"},
		{name: "bad_request", answer: answer{rep: &wire.Reply{Code: wire.CodeBadRequest, Error: "id must be a number"}},
			status: 400, code: "bad_request", message: "id must be a number"},
		{name: "handler 404", answer: answer{rep: &wire.Reply{Code: wire.CodeHandler, Status: 404, Error: "no user 7",
			Headers: kvs("X-Why", "gone")}}, status: 404, code: "handler", message: "no user 7",
			headers: map[string]string{"X-Why": "gone"}},
		{name: "handler 503", answer: answer{rep: &wire.Reply{Code: wire.CodeHandler, Status: 503}}, status: 503, code: "handler"},
		{name: "handler without status", answer: answer{rep: &wire.Reply{Code: wire.CodeHandler}}, status: 500, code: "handler"},
		{name: "handler with 2xx status", answer: answer{rep: &wire.Reply{Code: wire.CodeHandler, Status: 200}}, status: 500, code: "handler"},
		{name: "panic", answer: answer{rep: &wire.Reply{Code: wire.CodePanic, Error: "runtime error"}}, status: 500, code: "panic"},
		{name: "shutdown", answer: answer{rep: &wire.Reply{Code: wire.CodeShutdown}}, status: 503, code: "shutdown"},
		{name: "unknown code", answer: answer{rep: &wire.Reply{Code: "from_the_future"}}, status: 502, code: "from_the_future"},
		{name: "invalid worker status", answer: answer{rep: &wire.Reply{Status: 99}}, status: 502, code: "bad_reply"},
		{name: "Doer deadline", answer: answer{err: context.DeadlineExceeded}, status: 504, code: "deadline"},
		{name: "Doer wrapped deadline", answer: answer{err: errors.Join(errors.New("waiting"), context.DeadlineExceeded)}, status: 504, code: "deadline"},
		{name: "Doer other error", answer: answer{err: errors.New("broker: no broker reachable")}, status: 503, code: "unavailable",
			message: "service unavailable"},
		{name: "Doer nothing", answer: answer{}, status: 503, code: "unavailable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			current.Store(&tt.answer) // requests run one at a time
			r := ts.do(t, "GET", "/users/7", nil, "X-Request-Id", "rid-"+strings.ReplaceAll(tt.name, " ", "_"))
			if r.status != tt.status {
				t.Errorf("status %d, want %d (body %q)", r.status, tt.status, r.body)
			}
			rid := r.header.Get("X-Request-Id")
			if rid != "rid-"+strings.ReplaceAll(tt.name, " ", "_") {
				t.Errorf("X-Request-Id %q", rid)
			}
			if r.close {
				t.Error("the response closes the connection")
			}
			if got := r.header.Get("Retry-After"); got != tt.retryAfter {
				t.Errorf("Retry-After %q, want %q", got, tt.retryAfter)
			}
			for k, v := range tt.headers {
				if got := r.header.Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
			if tt.code == "" {
				if r.body != tt.body {
					t.Errorf("body %q, want %q", r.body, tt.body)
				}
				return
			}
			e := decodeError(t, r)
			if e.Error != tt.code || e.RequestID != rid {
				t.Errorf("error body %+v, want code %q and request_id %q", e, tt.code, rid)
			}
			if tt.message != "" && e.Message != tt.message {
				t.Errorf("message %q, want %q", e.Message, tt.message)
			}
			if e.Message == "" {
				t.Error("empty message")
			}
		})
	}
}

// TestDoerDeadline: a Doer that waits for its context must be cut off at
// the route's timeout, and the client answered 504 then, not later.
func TestDoerDeadline(t *testing.T) {
	const timeout = 300 * time.Millisecond
	var gotDeadline, reqDeadline atomic.Int64
	d := newFake(func(ctx context.Context, req *wire.Request) (*wire.Reply, error) {
		dl, _ := ctx.Deadline()
		gotDeadline.Store(dl.UnixMilli())
		reqDeadline.Store(req.Deadline)
		<-ctx.Done()
		return nil, ctx.Err()
	})
	ts := start(t, frontend.Options{Routes: []frontend.Route{{Method: "GET", Path: "/slow", Service: "slow", Timeout: timeout}}}, d, false)

	begin := time.Now()
	r := ts.do(t, "GET", "/slow", nil)
	took := time.Since(begin)
	if r.status != 504 || decodeError(t, r).Error != "deadline" {
		t.Errorf("status %d, body %q: want 504 deadline", r.status, r.body)
	}
	if took < timeout-10*time.Millisecond || took > timeout+250*time.Millisecond {
		t.Errorf("answered after %v, want about %v", took, timeout)
	}
	if gotDeadline.Load() != reqDeadline.Load() {
		t.Errorf("context deadline %d ms, envelope deadline %d ms: want equal", gotDeadline.Load(), reqDeadline.Load())
	}
}

// TestPanickingDoer: a panic becomes a 500 and the server keeps serving.
func TestPanickingDoer(t *testing.T) {
	var calls atomic.Int32
	d := newFake(func(_ context.Context, req *wire.Request) (*wire.Reply, error) {
		if calls.Add(1) == 1 {
			panic("doer exploded")
		}
		return &wire.Reply{Body: []byte("fine")}, nil
	})
	ts := start(t, frontend.Options{Routes: testRoutes}, d, true)

	r := ts.do(t, "GET", "/users/1", nil, "X-Request-Id", "boom-1")
	if r.status != 500 {
		t.Fatalf("status %d, want 500", r.status)
	}
	if e := decodeError(t, r); e.Error != "internal" || e.RequestID != "boom-1" {
		t.Errorf("error body %+v", e)
	}
	if r := ts.do(t, "GET", "/users/1", nil); r.status != 200 || r.body != "fine" {
		t.Errorf("after the panic: status %d, body %q", r.status, r.body)
	}
	m := ts.do(t, "GET", "/metrics", nil) // not on the main listener
	if m.status != 404 {
		t.Errorf("/metrics on the main listener: %d, want 404", m.status)
	}
	metrics := doURL(t, ts.client, "GET", "http://"+ts.AdminAddr().String()+"/metrics", nil).body
	for _, want := range []string{
		"shoal_frontend_panics_total 1",
		`shoal_frontend_requests_total{route="GET /users/{id}",status="5xx"} 1`,
		`shoal_frontend_requests_total{route="GET /users/{id}",status="2xx"} 1`,
		"shoal_frontend_requests_in_flight 0",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
