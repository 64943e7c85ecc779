package workers

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/shoal-dev/shoal/wire"
)

// Request is the envelope a handler receives. Its fields are documented in
// package wire; a handler must not keep it after returning.
type Request = wire.Request

// Response is what a handler answers. Status 0 means 200.
type Response struct {
	Status  int
	Headers []wire.KV
	Body    []byte
}

// Handler serves the requests of one service.
type Handler interface {
	Serve(ctx context.Context, req *Request) (Response, error)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, req *Request) (Response, error)

// Serve calls f.
func (f HandlerFunc) Serve(ctx context.Context, req *Request) (Response, error) { return f(ctx, req) }

// StatusError is an error with the HTTP-like status the client should see.
// Return one from a handler to answer 4xx/5xx with a message:
//
//	return workers.Response{}, workers.Errorf(404, "no user %q", id)
type StatusError struct {
	Status int
	Msg    string
}

func (e *StatusError) Error() string { return fmt.Sprintf("%d: %s", e.Status, e.Msg) }

// Errorf returns a *StatusError.
func Errorf(status int, format string, args ...any) error {
	return &StatusError{Status: status, Msg: fmt.Sprintf(format, args...)}
}

// ServeMux routes requests to handlers by service name, as http.ServeMux
// routes by path. One worker process may serve several services.
type ServeMux struct {
	h map[string]Handler
}

// NewServeMux returns an empty mux.
func NewServeMux() *ServeMux { return &ServeMux{h: make(map[string]Handler)} }

// Handle registers h for service. It panics on an invalid or duplicate
// service name, as http.ServeMux does for patterns: both are programming
// errors found at start.
func (m *ServeMux) Handle(service string, h Handler) {
	if !wire.ValidService(service) {
		panic(fmt.Sprintf("workers: invalid service name %q", service))
	}
	if _, dup := m.h[service]; dup {
		panic(fmt.Sprintf("workers: service %q registered twice", service))
	}
	m.h[service] = h
}

// HandleFunc registers f for service.
func (m *ServeMux) HandleFunc(service string, f func(ctx context.Context, req *Request) (Response, error)) {
	m.Handle(service, HandlerFunc(f))
}

// Services lists the registered services, sorted.
func (m *ServeMux) Services() []string {
	s := make([]string, 0, len(m.h))
	for k := range m.h {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

// Serve dispatches to the service's handler.
func (m *ServeMux) Serve(ctx context.Context, req *Request) (Response, error) {
	h := m.h[req.Service]
	if h == nil {
		return Response{}, fmt.Errorf("%w: %s", errNotServed, req.Service)
	}
	return h.Serve(ctx, req)
}

// errNotServed: the broker sent a service this worker did not offer.
var errNotServed = errors.New("this worker does not serve")

// toReply turns a handler's outcome into the reply envelope.
func toReply(id uint64, resp Response, err error) wire.Reply {
	if err == nil {
		st := resp.Status
		if st == 0 {
			st = 200
		}
		return wire.Reply{ID: id, Status: st, Headers: resp.Headers, Body: resp.Body}
	}
	if errors.Is(err, errNotServed) {
		return wire.Reply{ID: id, Status: 400, Code: wire.CodeBadRequest, Error: err.Error()}
	}
	var pe *panicError
	if errors.As(err, &pe) {
		return wire.Reply{ID: id, Status: 500, Code: wire.CodePanic, Error: pe.Error()}
	}
	var se *StatusError
	if errors.As(err, &se) {
		return wire.Reply{ID: id, Status: se.Status, Code: wire.CodeHandler, Error: se.Msg}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return wire.Reply{ID: id, Status: 504, Code: wire.CodeDeadline, Error: err.Error()}
	}
	return wire.Reply{ID: id, Status: 500, Code: wire.CodeHandler, Error: err.Error()}
}
