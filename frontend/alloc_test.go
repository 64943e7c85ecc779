//go:build !race

// Allocation counts are meaningless under the race detector (sync.Pool drops
// items at random there), so these tests build without -race only; `make
// test` runs them in a second pass without it.

package frontend_test

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/shoal-dev/shoal/frontend"
	"github.com/shoal-dev/shoal/wire"
	"github.com/valyala/fasthttp"
)

// immediate answers at once with a reply built beforehand, as a Doer whose
// broker round trip costs nothing.
type immediate struct{ rep *wire.Reply }

func (d immediate) Do(context.Context, *wire.Request) (*wire.Reply, error) { return d.rep, nil }
func (d immediate) Ready() bool                                            { return true }

// maxAllocsPerRequest pins the handler's allocations for a routed request
// with one path parameter, a query, one forwarded header, a body and a
// generated request id:
//
//	3  the router, per parameter: its value slice, its copy, and boxing it
//	4  context.WithDeadline: the timer context, its timer and timer func,
//	   its cancel func
//	1  every string of the envelope, converted in one piece
//
// The envelope, its body and slices are pooled; the response headers and
// body go into fasthttp's reused buffers.
const maxAllocsPerRequest = 8

func TestAllocsPerRequest(t *testing.T) {
	s, err := frontend.New(frontend.Options{
		Routes:         []frontend.Route{{Method: "POST", Path: "/users/{id}", Service: "users"}},
		ForwardHeaders: []string{"X-Tenant"},
		Logger:         slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, immediate{rep: &wire.Reply{Status: 200, Body: []byte(`{"ok":true}`),
		Headers: []wire.KV{{Key: "Content-Type", Value: "application/json"}}}})
	if err != nil {
		t.Fatal(err)
	}
	h := s.Handler()

	var req fasthttp.Request
	req.Header.SetMethod("POST")
	req.SetRequestURI("/users/42?verbose=1")
	req.Header.Set("X-Tenant", "acme")
	req.SetBodyString(`{"name":"ann"}`)
	var ctx fasthttp.RequestCtx
	ctx.Init(&req, nil, nil)

	run := func() {
		ctx.Response.Reset()
		ctx.ResetUserValues()
		h(&ctx)
	}
	run()
	if ctx.Response.StatusCode() != 200 || string(ctx.Response.Body()) != `{"ok":true}` {
		t.Fatalf("response %d %q", ctx.Response.StatusCode(), ctx.Response.Body())
	}
	allocs := testing.AllocsPerRun(1000, run)
	t.Logf("%.1f allocations per request", allocs)
	if allocs > maxAllocsPerRequest {
		t.Errorf("%.1f allocations per request, want at most %d", allocs, maxAllocsPerRequest)
	}
}

func BenchmarkHandler(b *testing.B) {
	s, err := frontend.New(frontend.Options{
		Routes:         []frontend.Route{{Method: "POST", Path: "/users/{id}", Service: "users"}},
		ForwardHeaders: []string{"X-Tenant"},
		Logger:         slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, immediate{rep: &wire.Reply{Status: 200, Body: []byte(`{"ok":true}`)}})
	if err != nil {
		b.Fatal(err)
	}
	h := s.Handler()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		var req fasthttp.Request
		req.Header.SetMethod("POST")
		req.SetRequestURI("/users/42?verbose=1")
		req.Header.Set("X-Tenant", "acme")
		req.SetBodyString(`{"name":"ann"}`)
		var ctx fasthttp.RequestCtx
		ctx.Init(&req, nil, nil)
		for pb.Next() {
			ctx.Response.Reset()
			ctx.ResetUserValues()
			h(&ctx)
		}
	})
}
