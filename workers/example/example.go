// Package example holds the example workers that `shoal worker NAME` runs:
//
//	echo     replies with the request's HTTP method, path, query and body as JSON
//	greeter  answers GET /hello/{name} by calling echo through the broker,
//	         showing a service that calls another with the deadline and
//	         trace carried over
//	notes    answers POST /notes at once (202 and a task id) and leaves the
//	         write to the queue consumer `shoal consumer notes` (persist.go)
//
// Each is a function that registers its service on a mux; Registry maps the
// names the CLI accepts to them.
package example

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"

	"github.com/shoal-dev/shoal/wire"
	"github.com/shoal-dev/shoal/workers"
)

// Registry maps `shoal worker NAME` to the function that registers NAME's
// services. needsCalls says whether the worker calls other services.
var Registry = map[string]struct {
	Register   func(*workers.ServeMux)
	NeedsCalls bool
}{
	"echo":    {Register: Echo},
	"greeter": {Register: Greeter, NeedsCalls: true},
	"notes":   {Register: Notes}, // persist.go: enqueues writes for `shoal consumer notes`
}

// Names lists the example workers.
func Names() []string {
	n := make([]string, 0, len(Registry))
	for k := range Registry {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

var jsonHeaders = []wire.KV{{Key: "Content-Type", Value: "application/json"}}

type echoReply struct {
	Method string            `json:"method"`
	Path   string            `json:"path"`
	Query  string            `json:"query"`
	Params map[string]string `json:"params,omitempty"`
	Body   string            `json:"body"`
	Worker string            `json:"worker"` // host/pid of the process that answered
}

// workerID names this process in echo replies: which host and process
// served a request, as a deployment test or an operator wants to see.
var workerID = func() string {
	host, _ := os.Hostname()
	return host + "/" + strconv.Itoa(os.Getpid())
}()

// Echo registers the echo service.
func Echo(mux *workers.ServeMux) {
	mux.HandleFunc("echo", func(ctx context.Context, req *workers.Request) (workers.Response, error) {
		r := echoReply{Method: req.Verb, Path: req.Path, Query: req.Query, Body: string(req.Body), Worker: workerID}
		if len(req.Params) > 0 {
			r.Params = make(map[string]string, len(req.Params))
			for _, p := range req.Params {
				r.Params[p.Key] = p.Value
			}
		}
		b, err := json.Marshal(r)
		if err != nil {
			return workers.Response{}, err
		}
		return workers.Response{Headers: jsonHeaders, Body: append(b, '\n')}, nil
	})
}

// Greeter registers the greeter service, which calls echo.
func Greeter(mux *workers.ServeMux) {
	mux.HandleFunc("greeter", func(ctx context.Context, req *workers.Request) (workers.Response, error) {
		name := wire.Get(req.Params, "name")
		if name == "" {
			return workers.Response{}, workers.Errorf(400, "missing name")
		}
		rep, err := workers.Call(ctx, "echo", "greet", []byte("hello "+name))
		if err != nil {
			return workers.Response{}, fmt.Errorf("asking echo: %w", err)
		}
		var echoed echoReply
		if err := json.Unmarshal(rep.Body, &echoed); err != nil {
			return workers.Response{}, fmt.Errorf("echo answered something else than JSON: %w", err)
		}
		b, _ := json.Marshal(map[string]any{"greeting": echoed.Body, "hops": len(rep.Trace)})
		return workers.Response{Headers: jsonHeaders, Body: append(b, '\n')}, nil
	})
}
