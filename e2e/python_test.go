package e2e

import (
	"encoding/json"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestPythonWorkerServesHTTP proves that docs/protocol.md is enough to write
// a worker in another language: workers/python/echo_worker.py (pyzmq and
// msgpack only) registers with a shoal broker and serves HTTP requests
// coming through the shoal frontend, GET and POST, with the request id
// carried end to end.
func TestPythonWorkerServesHTTP(t *testing.T) {
	t.Parallel()
	requirePythonZMQ(t)
	s := newStack(t, settings{Routes: []route{
		{Method: "GET", Path: "/py", Service: "pyecho", Timeout: 3 * time.Second},
		{Method: "POST", Path: "/py", Service: "pyecho", Timeout: 3 * time.Second},
	}})
	b := s.startBroker(0)
	fe := s.startFrontend()
	py := s.start("worker-python", python, filepath.Join(repoRoot, "workers", "python", "echo_worker.py"),
		"--broker", s.brokers[0].Workers, "--service", "pyecho",
		"--heartbeat", strconv.FormatFloat(s.set.Heartbeat.Seconds(), 'f', -1, 64), "--liveness", strconv.Itoa(s.set.Liveness))
	s.waitWorkers(0, "pyecho", 1, 10*time.Second)

	type echoed struct {
		Method, Path, Query, Body, Service, Worker string
	}
	call := func(method, path, body, rid string) echoed {
		t.Helper()
		req, err := http.NewRequest(method, s.url(path), strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-Request-Id", rid)
		if body != "" {
			req.Header.Set("Content-Type", "text/plain")
		}
		resp, err := s.http.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		var e echoed
		dec := json.NewDecoder(resp.Body)
		if resp.StatusCode != 200 {
			var raw json.RawMessage
			dec.Decode(&raw)
			t.Fatalf("%s %s: status %d, body %s", method, path, resp.StatusCode, raw)
		}
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Errorf("%s %s: Content-Type %q, want application/json from the worker's reply headers", method, path, ct)
		}
		if got := resp.Header.Get("X-Request-Id"); got != rid {
			t.Errorf("%s %s: X-Request-Id %q, want %q back", method, path, got, rid)
		}
		if err := dec.Decode(&e); err != nil {
			t.Fatalf("%s %s: reply is not JSON: %v", method, path, err)
		}
		return e
	}

	got := call("GET", "/py?a=1&b=two%20words", "", "e2e-python-get")
	want := echoed{Method: "GET", Path: "/py", Query: "a=1&b=two%20words", Service: "pyecho", Worker: "python"}
	if got != want {
		t.Errorf("GET /py echoed %+v, want %+v", got, want)
	}

	body := `{"hello": "from e2e", "n": 42, "utf8": "héllo"}`
	got = call("POST", "/py?x=y", body, "e2e-python-post")
	want = echoed{Method: "POST", Path: "/py", Query: "x=y", Body: body, Service: "pyecho", Worker: "python"}
	if got != want {
		t.Errorf("POST /py echoed %+v, want %+v", got, want)
	}

	// A little concurrency: the worker answers envelopes batched together.
	rep := runLoad(t, load{Name: "GET /py", Method: "GET", URL: s.url("/py?n=1"), Deadline: 3 * time.Second,
		Clients: 8, Duration: 5 * time.Second, Max: 200})
	t.Log(rep.summary())
	if n := rep.byStatus()["200"]; n != len(rep.Results) || n != 200 {
		t.Errorf("concurrent GET /py: %v, want 200 × 200", rep.byStatus())
	}
	requireAlive(t, b, fe, py)
}
