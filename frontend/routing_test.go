package frontend_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/frontend"
	"github.com/shoal-dev/shoal/wire"
)

var testRoutes = []frontend.Route{
	{Method: "GET", Path: "/users/{id}", Service: "users", Call: "get", Timeout: 2 * time.Second, Idempotent: true, Attempts: 3},
	{Method: "POST", Path: "/users", Service: "users", Attempts: 3}, // not idempotent: 1 attempt
	{Method: "GET", Path: "/users/{id}/posts/{post}", Service: "posts"},
	{Method: "GET", Path: "/files/{path:*}", Service: "files"},
	{Method: "GET", Path: "/items/{id:[0-9]+}", Service: "items"},
	{Method: "GET", Path: "/opt/{a?}", Service: "opt"},
	{Method: "*", Path: "/any/{x}", Service: "any"},
}

func TestRoutes(t *testing.T) {
	d := okDoer()
	ts := start(t, frontend.Options{Routes: testRoutes, Timeout: 5 * time.Second, Process: "host/1"}, d, false)

	tests := []struct {
		name, method, target string
		service, call        string
		verb, path, query    string
		params               []wire.KV
		timeout              time.Duration
		attempts             int
	}{
		{"param", "GET", "/users/42", "users", "get", "GET", "/users/42", "", kvs("id", "42"), 2 * time.Second, 3},
		{"query", "GET", "/users/42?a=1&b=x%20y", "users", "get", "GET", "/users/42", "a=1&b=x%20y", kvs("id", "42"), 2 * time.Second, 3},
		{"decoded param", "GET", "/users/a%20b%2Fc", "users", "get", "GET", "/users/a%20b%2Fc", "", kvs("id", "a b/c"), 2 * time.Second, 3},
		{"default call", "POST", "/users", "users", "POST /users", "POST", "/users", "", nil, 5 * time.Second, 1},
		{"params in pattern order", "GET", "/users/7/posts/9", "posts", "GET /users/{id}/posts/{post}", "GET", "/users/7/posts/9", "", kvs("id", "7", "post", "9"), 5 * time.Second, 1},
		{"catch-all", "GET", "/files/a/b/c.txt", "files", "GET /files/{path:*}", "GET", "/files/a/b/c.txt", "", kvs("path", "a/b/c.txt"), 5 * time.Second, 1},
		{"regexp", "GET", "/items/123", "items", "GET /items/{id:[0-9]+}", "GET", "/items/123", "", kvs("id", "123"), 5 * time.Second, 1},
		{"optional present", "GET", "/opt/z", "opt", "GET /opt/{a?}", "GET", "/opt/z", "", kvs("a", "z"), 5 * time.Second, 1},
		{"optional absent", "GET", "/opt", "opt", "GET /opt/{a?}", "GET", "/opt", "", nil, 5 * time.Second, 1},
		{"any method", "DELETE", "/any/q", "any", "* /any/{x}", "DELETE", "/any/q", "", kvs("x", "q"), 5 * time.Second, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := time.Now()
			r := ts.do(t, tt.method, tt.target, nil)
			if r.status != 200 {
				t.Fatalf("status %d, body %q", r.status, r.body)
			}
			got := d.last(t)
			for _, c := range []struct{ field, got, want string }{
				{"Service", got.Service, tt.service},
				{"Method", got.Method, tt.call},
				{"Verb", got.Verb, tt.verb},
				{"Path", got.Path, tt.path},
				{"Query", got.Query, tt.query},
			} {
				if c.got != c.want {
					t.Errorf("%s = %q, want %q", c.field, c.got, c.want)
				}
			}
			if !sameKVs(got.Params, tt.params) {
				t.Errorf("Params (-want +got):\n-%s\n+%s", showKVs(tt.params), showKVs(got.Params))
			}
			if got.MaxAttempts != tt.attempts || got.Attempt != 1 {
				t.Errorf("Attempt %d/%d, want 1/%d", got.Attempt, got.MaxAttempts, tt.attempts)
			}
			lo, hi := before.Add(tt.timeout).UnixMilli(), time.Now().Add(tt.timeout).UnixMilli()
			if got.Deadline < lo || got.Deadline > hi {
				t.Errorf("Deadline %d, want within [%d, %d]", got.Deadline, lo, hi)
			}
			if got.ID == 0 || got.RID == "" {
				t.Errorf("ID %d, RID %q: want both set", got.ID, got.RID)
			}
			if len(got.Trace) != 1 || got.Trace[0].Service != "frontend" || got.Trace[0].Process != "host/1" ||
				got.Trace[0].Start < before.UnixMicro() {
				t.Errorf("Trace = %+v, want one frontend hop from host/1", got.Trace)
			}
		})
	}
}

func TestMalformedParam(t *testing.T) {
	d := okDoer()
	ts := start(t, frontend.Options{Routes: testRoutes}, d, false)
	out := rawRequest(t, ts.addr, "GET /users/%zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if !strings.HasPrefix(out, "HTTP/1.1 400 ") || !strings.Contains(out, `"error":"bad_request"`) {
		t.Errorf("answered %q, want a 400 bad_request", out)
	}
	if d.count() != 0 {
		t.Errorf("the Doer got %d requests, want none", d.count())
	}
}

func TestNotFoundAndMethodNotAllowed(t *testing.T) {
	d := okDoer()
	ts := start(t, frontend.Options{Routes: testRoutes}, d, false)

	r := ts.do(t, "GET", "/nope", nil)
	if r.status != 404 {
		t.Fatalf("GET /nope: status %d, want 404", r.status)
	}
	if e := decodeError(t, r); e.Error != "not_found" || e.RequestID == "" || e.RequestID != r.header.Get("X-Request-Id") {
		t.Errorf("404 body %+v, X-Request-Id %q", e, r.header.Get("X-Request-Id"))
	}
	if r := ts.do(t, "GET", "/users/42/", nil); r.status != 404 {
		t.Errorf("trailing slash: status %d, want 404 (no redirects)", r.status)
	}

	r = ts.do(t, "PUT", "/users", nil)
	if r.status != 405 {
		t.Fatalf("PUT /users: status %d, want 405", r.status)
	}
	if allow := r.header.Get("Allow"); !strings.Contains(allow, "POST") {
		t.Errorf("Allow = %q, want POST in it", allow)
	}
	if e := decodeError(t, r); e.Error != "method_not_allowed" {
		t.Errorf("405 error %q", e.Error)
	}
	if d.count() != 0 {
		t.Errorf("the Doer got %d requests, want none", d.count())
	}
}

func TestHeadersForwarded(t *testing.T) {
	d := okDoer()
	ts := start(t, frontend.Options{Routes: testRoutes, ForwardHeaders: []string{"x-tenant", "AUTHORIZATION", "Content-Type"}}, d, false)
	r := ts.do(t, "POST", "/users", strings.NewReader("{}"),
		"X-Tenant", "acme", "x-tenant", "second", "Authorization", "Bearer t",
		"X-Secret", "no", "Content-Type", "application/json", "Cookie", "a=b")
	if r.status != 200 {
		t.Fatalf("status %d", r.status)
	}
	got := d.last(t).Headers
	want := kvs("Content-Type", "application/json", "Authorization", "Bearer t", "X-Tenant", "acme", "X-Tenant", "second")
	// fasthttp yields its special headers (Content-Type) first, then the
	// others in the order received (net/http sends them sorted).
	if !sameKVs(got, want) {
		t.Errorf("Headers (-want +got):\n-%s\n+%s", showKVs(want), showKVs(got))
	}

	// Nothing configured: nothing forwarded.
	d2 := okDoer()
	ts2 := start(t, frontend.Options{Routes: testRoutes}, d2, false)
	ts2.do(t, "GET", "/users/1", nil, "X-Tenant", "acme")
	if h := d2.last(t).Headers; len(h) != 0 {
		t.Errorf("Headers = %s, want none", showKVs(h))
	}
}

// TestBodyCopied sends many bodies at once: pooled envelopes must never let
// one request see another's body.
func TestBodyCopied(t *testing.T) {
	d := newFake(func(_ context.Context, req *wire.Request) (*wire.Reply, error) {
		time.Sleep(time.Millisecond) // let other requests reuse buffers meanwhile
		return &wire.Reply{Status: 200, Body: append([]byte("echo:"), req.Body...)}, nil
	})
	ts := start(t, frontend.Options{Routes: testRoutes}, d, false)
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Go(func() {
			body := fmt.Sprintf("body-%d-%s", i, strings.Repeat("x", i*37))
			r, err := fetch(ts.client, "POST", ts.url+"/users", strings.NewReader(body))
			if err != nil {
				t.Error(err)
			} else if r.status != 200 || r.body != "echo:"+body {
				t.Errorf("request %d: status %d, body %.40q…", i, r.status, r.body)
			}
		})
	}
	wg.Wait()
}

var generatedRID = regexp.MustCompile(`^[0-9a-f]{12}-[0-9a-f]+$`)

func TestRequestID(t *testing.T) {
	d := okDoer()
	ts := start(t, frontend.Options{Routes: testRoutes}, d, false)

	t.Run("generated", func(t *testing.T) {
		r1 := ts.do(t, "GET", "/users/1", nil)
		rid1 := r1.header.Get("X-Request-Id")
		if !generatedRID.MatchString(rid1) || d.last(t).RID != rid1 {
			t.Errorf("X-Request-Id %q, envelope RID %q: want the same generated id", rid1, d.last(t).RID)
		}
		r2 := ts.do(t, "GET", "/users/1", nil)
		if rid2 := r2.header.Get("X-Request-Id"); rid2 == rid1 || !generatedRID.MatchString(rid2) {
			t.Errorf("second id %q, first %q: want a new one", rid2, rid1)
		}
	})
	t.Run("propagated", func(t *testing.T) {
		r := ts.do(t, "GET", "/users/1", nil, "X-Request-Id", "abc-123 from:lb")
		if got := r.header.Get("X-Request-Id"); got != "abc-123 from:lb" || d.last(t).RID != got {
			t.Errorf("X-Request-Id %q, RID %q: want abc-123 from:lb", got, d.last(t).RID)
		}
	})
	t.Run("too long is replaced", func(t *testing.T) {
		long := strings.Repeat("a", 129)
		r := ts.do(t, "GET", "/users/1", nil, "X-Request-Id", long)
		if got := r.header.Get("X-Request-Id"); !generatedRID.MatchString(got) {
			t.Errorf("X-Request-Id %q, want a generated one", got)
		}
	})
	t.Run("non-printable is replaced", func(t *testing.T) {
		r := ts.do(t, "GET", "/users/1", nil, "X-Request-Id", "caf\u00e9")
		if got := r.header.Get("X-Request-Id"); !generatedRID.MatchString(got) {
			t.Errorf("X-Request-Id %q, want a generated one", got)
		}
	})
	t.Run("on errors too", func(t *testing.T) {
		r := ts.do(t, "GET", "/nowhere", nil, "X-Request-Id", "lost-1")
		if got := r.header.Get("X-Request-Id"); got != "lost-1" || decodeError(t, r).RequestID != "lost-1" {
			t.Errorf("404: X-Request-Id %q, body %q", got, r.body)
		}
	})
}

func TestNewValidation(t *testing.T) {
	ok := frontend.Route{Method: "GET", Path: "/ok", Service: "svc"}
	tests := []struct {
		name  string
		o     frontend.Options
		want  []string // substrings of the error
		index int      // RouteError index, -1 for none
	}{
		{"bad service", frontend.Options{Routes: []frontend.Route{ok, {Method: "GET", Path: "/x", Service: "Bad Name"}}}, []string{"route 1 (GET /x)", "invalid service"}, 1},
		{"no slash", frontend.Options{Routes: []frontend.Route{{Method: "GET", Path: "x", Service: "s"}}}, []string{"must begin with '/'"}, 0},
		{"bad method", frontend.Options{Routes: []frontend.Route{{Method: "GE T", Path: "/x", Service: "s"}}}, []string{"invalid method"}, 0},
		{"duplicate", frontend.Options{Routes: []frontend.Route{ok, ok}}, []string{"route 1 (GET /ok)", "same method and path as route 0"}, 1},
		{"healthz", frontend.Options{Routes: []frontend.Route{{Method: "GET", Path: "/healthz", Service: "s"}}}, []string{"/healthz is served by the frontend"}, 0},
		{"readyz", frontend.Options{Routes: []frontend.Route{{Method: "POST", Path: "/readyz/", Service: "s"}}}, []string{"/readyz is served by the frontend"}, 0},
		{"router conflict", frontend.Options{Routes: []frontend.Route{
			{Method: "GET", Path: "/a/{x}", Service: "s"}, {Method: "GET", Path: "/a/{y}", Service: "s"}}}, []string{"route 1 (GET /a/{y})", "router:"}, 1},
		{"catch-all not last", frontend.Options{Routes: []frontend.Route{{Method: "GET", Path: "/a/{p:*}/b", Service: "s"}}}, []string{"route 0", "router:"}, 0},
		{"unbalanced", frontend.Options{Routes: []frontend.Route{{Method: "GET", Path: "/a/{x", Service: "s"}}}, []string{"unbalanced"}, 0},
		{"negative timeout", frontend.Options{Routes: []frontend.Route{{Method: "GET", Path: "/a", Service: "s", Timeout: -1}}}, []string{"timeout -1ns is negative"}, 0},
		{"hop-by-hop forward", frontend.Options{ForwardHeaders: []string{"Connection"}}, []string{`forward header "Connection" is hop-by-hop`}, -1},
		{"bad forward", frontend.Options{ForwardHeaders: []string{"X Y"}}, []string{"not a valid header name"}, -1},
		{"negative body", frontend.Options{MaxBody: -1}, []string{"max body -1 is negative"}, -1},
		{"all at once", frontend.Options{MaxBody: -1, ReadTimeout: -1, Routes: []frontend.Route{{Method: "GET", Path: "/a", Service: ""}}},
			[]string{"max body", "read timeout", "route 0"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := frontend.New(tt.o, okDoer())
			if err == nil {
				t.Fatal("New succeeded, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			var re *frontend.RouteError
			switch {
			case tt.index < 0 && errors.As(err, &re):
				t.Errorf("got a RouteError %v, want none", re)
			case tt.index >= 0 && (!errors.As(err, &re) || re.Index != tt.index):
				t.Errorf("RouteError %v, want index %d", re, tt.index)
			}
		})
	}
	if _, err := frontend.New(frontend.Options{Routes: []frontend.Route{ok}}, nil); err == nil {
		t.Error("New with a nil Doer succeeded")
	}
}

func TestHealth(t *testing.T) {
	d := okDoer()
	d.ready.Store(false)
	ts := start(t, frontend.Options{Routes: []frontend.Route{{Method: "GET", Path: "/{name}", Service: "s"}}}, d, false)

	if r := ts.do(t, "GET", "/healthz", nil); r.status != 200 {
		t.Errorf("/healthz: %d, want 200", r.status)
	}
	if r := ts.do(t, "GET", "/readyz", nil); r.status != 503 {
		t.Errorf("/readyz with no broker: %d, want 503", r.status)
	}
	d.ready.Store(true)
	if r := ts.do(t, "GET", "/readyz", nil); r.status != 200 {
		t.Errorf("/readyz with a broker: %d, want 200", r.status)
	}
	d.ready.Store(false)
	if r := ts.do(t, "HEAD", "/readyz", nil); r.status != 503 {
		t.Errorf("HEAD /readyz with no broker: %d, want 503", r.status)
	}
	if r := ts.do(t, "POST", "/healthz", nil); r.status != http.StatusMethodNotAllowed {
		t.Errorf("POST /healthz: %d, want 405", r.status)
	}
	if d.count() != 0 {
		t.Errorf("the catch-all route got %d health checks", d.count())
	}
	// The catch-all route still serves everything else.
	if r := ts.do(t, "GET", "/other", nil); r.status != 200 || d.last(t).Params[0].Value != "other" {
		t.Errorf("/other: %d", r.status)
	}
}

// sameKVs compares KV lists, nil and empty being the same.
func sameKVs(a, b []wire.KV) bool {
	return len(a) == len(b) && (len(a) == 0 || reflect.DeepEqual(a, b))
}
