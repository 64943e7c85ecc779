package frontend_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/frontend"
	"github.com/shoal-dev/shoal/wire"
)

// fakeDoer is an in-memory Doer: fn answers, and every request is recorded
// as a deep copy (the frontend reuses the original).
type fakeDoer struct {
	ready atomic.Bool
	fn    func(ctx context.Context, req *wire.Request) (*wire.Reply, error)

	mu   sync.Mutex
	reqs []wire.Request
}

func newFake(fn func(ctx context.Context, req *wire.Request) (*wire.Reply, error)) *fakeDoer {
	f := &fakeDoer{fn: fn}
	f.ready.Store(true)
	return f
}

// okDoer answers 200 with the request's body.
func okDoer() *fakeDoer {
	return newFake(func(_ context.Context, req *wire.Request) (*wire.Reply, error) {
		return &wire.Reply{ID: req.ID, Body: slices.Clone(req.Body)}, nil
	})
}

func (f *fakeDoer) Do(ctx context.Context, req *wire.Request) (*wire.Reply, error) {
	f.mu.Lock()
	f.reqs = append(f.reqs, cloneRequest(req))
	f.mu.Unlock()
	return f.fn(ctx, req)
}

func (f *fakeDoer) Ready() bool { return f.ready.Load() }

func (f *fakeDoer) last(t *testing.T) wire.Request {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reqs) == 0 {
		t.Fatal("the Doer got no request")
	}
	return f.reqs[len(f.reqs)-1]
}

func (f *fakeDoer) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.reqs)
}

func cloneRequest(r *wire.Request) wire.Request {
	c := *r
	c.Params = slices.Clone(r.Params)
	c.Headers = slices.Clone(r.Headers)
	c.Body = slices.Clone(r.Body)
	c.Trace = slices.Clone(r.Trace)
	return c
}

// testLogger logs through t, so that a failing test shows what happened.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// testServer is a Server serving on 127.0.0.1 port 0.
type testServer struct {
	*frontend.Server
	url    string // "http://127.0.0.1:port"
	addr   string
	client *http.Client
}

// start builds a Server and serves it (and its admin listener when admin
// is true) until the test ends.
func start(t *testing.T, o frontend.Options, d frontend.Doer, admin bool) *testServer {
	t.Helper()
	if o.Logger == nil {
		o.Logger = testLogger(t)
	}
	s, err := frontend.New(o, d)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 2)
	go func() { served <- s.Serve(ln) }()
	n := 1
	if admin {
		aln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		n++
		go func() { served <- s.ServeAdmin(aln) }()
		checkFor(t, 2*time.Second, func() error {
			if s.AdminAddr() == nil {
				return errors.New("admin listener not up")
			}
			return nil
		})
	}
	tr := &http.Transport{}
	ts := &testServer{Server: s, url: "http://" + ln.Addr().String(), addr: ln.Addr().String(),
		client: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		for range n {
			if err := <-served; err != nil {
				t.Errorf("Serve: %v", err)
			}
		}
	})
	return ts
}

// response is what a test looks at in an HTTP response.
type response struct {
	status int
	header http.Header
	body   string
	close  bool
}

func (ts *testServer) do(t *testing.T, method, path string, body io.Reader, hdr ...string) response {
	t.Helper()
	return doURL(t, ts.client, method, ts.url+path, body, hdr...)
}

func doURL(t *testing.T, c *http.Client, method, url string, body io.Reader, hdr ...string) response {
	t.Helper()
	r, err := fetch(c, method, url, body, hdr...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// fetch is doURL for goroutines other than the test's.
func fetch(c *http.Client, method, url string, body io.Reader, hdr ...string) (response, error) {
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		return response{}, err
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		return response{}, fmt.Errorf("%s %s: %w", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, fmt.Errorf("%s %s: reading body: %w", method, url, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: string(b), close: resp.Close}, nil
}

// errorBody is the JSON of every error response.
type errorBody struct {
	Error     string `json:"error"`
	Message   string `json:"message"`
	RequestID string `json:"request_id"`
}

func decodeError(t *testing.T, r response) errorBody {
	t.Helper()
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json (body %q)", ct, r.body)
	}
	var e errorBody
	dec := json.NewDecoder(strings.NewReader(r.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		t.Fatalf("error body %q: %v", r.body, err)
	}
	return e
}

// checkFor polls f until it returns nil or the time is up.
func checkFor(t *testing.T, total time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", total, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// rawRequest writes raw bytes on a new TCP connection and returns what the
// server answers until it closes the connection.
func rawRequest(t *testing.T, addr string, raw string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	_, _ = io.Copy(&out, c)
	return out.String()
}

func kvs(pairs ...string) []wire.KV {
	var out []wire.KV
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, wire.KV{Key: pairs[i], Value: pairs[i+1]})
	}
	return out
}

func showKVs(k []wire.KV) string { return fmt.Sprintf("%q", k) }
