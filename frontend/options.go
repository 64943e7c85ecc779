package frontend

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/shoal-dev/shoal/wire"
)

// Defaults applied by New to zero fields of Options and Route.
const (
	DefaultMaxBody         = 4 << 20 // bytes
	DefaultReadTimeout     = 30 * time.Second
	DefaultWriteTimeout    = 30 * time.Second
	DefaultIdleTimeout     = 120 * time.Second
	DefaultShutdownTimeout = 30 * time.Second
	DefaultTimeout         = 10 * time.Second // per request, when a route sets none
)

// Route maps one HTTP method and path pattern to a service call.
type Route struct {
	// Method is the HTTP method ("GET", "POST", …), or "*" for any method.
	// It is upper-cased.
	Method string
	// Path is a github.com/fasthttp/router pattern: "/users/{id}",
	// "/users/{id:[0-9]+}" (regexp), "/users/{id?}" (optional), or
	// "/files/{path:*}" (catch-all, last segment only).
	Path string
	// Service is the service the broker routes the request to.
	Service string
	// Call is the method within the service; "" means "<METHOD> <Path>",
	// for instance "GET /users/{id}".
	Call string
	// Timeout bounds the whole request; 0 means Options.Timeout.
	Timeout time.Duration
	// Attempts is how many dispatches the broker may make in all (a worker
	// dying with the request is retried on another). 0 means 1. It only
	// applies to Idempotent routes: others always get exactly 1, because a
	// request that may have run must not run twice.
	Attempts int
	// Idempotent says running the request twice is harmless.
	Idempotent bool
}

// Options configure a Server. Zero values take the defaults above.
type Options struct {
	Listen string // address of the main listener, for Run ("host:port")
	Admin  string // address of the admin listener serving /metrics; "" = none

	MaxBody         int           // largest request body in bytes (413 above)
	ReadTimeout     time.Duration // reading one request, headers and body
	WriteTimeout    time.Duration // writing one response
	IdleTimeout     time.Duration // a keep-alive connection waiting for its next request
	ShutdownTimeout time.Duration // how long Run lets in-flight requests finish
	Timeout         time.Duration // per-request timeout of routes that set none
	MaxConns        int           // concurrent connections; 0 = fasthttp's default (262144)

	// ForwardHeaders lists the request headers copied into the envelope
	// (matched case-insensitively, sent in canonical form such as
	// "X-Tenant"). Nothing else is forwarded. Content-Type and Authorization
	// are common choices.
	ForwardHeaders []string

	Routes []Route

	// Events configures GET /events, Server-Sent Events (sse.go).
	Events EventOptions

	// AccessLog logs every request at info level. Off by default: at tens
	// of thousands of requests a second the log costs more than the
	// request. Responses of 5xx are logged at warn either way.
	AccessLog bool

	Logger  *slog.Logger // nil = slog.Default()
	Process string       // "host/pid" for the trace hop; "" = this process
}

// RouteError is a problem with Options.Routes[Index]. The index lets a
// config loader point at the file and line the route came from.
type RouteError struct {
	Index        int
	Method, Path string
	Err          error
}

func (e *RouteError) Error() string {
	return fmt.Sprintf("frontend: route %d (%s %s): %v", e.Index, e.Method, e.Path, e.Err)
}

func (e *RouteError) Unwrap() error { return e.Err }

// reserved paths are served by the frontend itself and cannot be routed.
var reserved = []string{pathHealthz, pathReadyz}

// hopByHop headers describe one connection, not the message: they are
// never forwarded in either direction. Content-Length is fasthttp's to set.
var hopByHop = []string{
	"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
	"Content-Length",
}

func isHopByHop(k string) bool {
	for _, h := range hopByHop {
		if strings.EqualFold(k, h) {
			return true
		}
	}
	return false
}

// withDefaults validates o and fills its zero fields. It reports every
// problem at once.
func (o Options) withDefaults() (Options, error) {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("frontend: "+format, args...))
	}
	if o.MaxBody < 0 {
		bad("max body %d is negative", o.MaxBody)
	}
	if o.MaxConns < 0 {
		bad("max conns %d is negative", o.MaxConns)
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"read timeout", &o.ReadTimeout, DefaultReadTimeout},
		{"write timeout", &o.WriteTimeout, DefaultWriteTimeout},
		{"idle timeout", &o.IdleTimeout, DefaultIdleTimeout},
		{"shutdown timeout", &o.ShutdownTimeout, DefaultShutdownTimeout},
		{"timeout", &o.Timeout, DefaultTimeout},
	} {
		switch {
		case *d.v < 0:
			bad("%s %v is negative", d.name, *d.v)
		case *d.v == 0:
			*d.v = d.def
		}
	}
	if o.MaxBody == 0 {
		o.MaxBody = DefaultMaxBody
	}
	fwd := make([]string, 0, len(o.ForwardHeaders))
	for _, h := range o.ForwardHeaders {
		switch {
		case !validToken(h):
			bad("forward header %q is not a valid header name", h)
		case isHopByHop(h):
			bad("forward header %q is hop-by-hop and cannot be forwarded", h)
		default:
			fwd = append(fwd, canonicalHeader(h))
		}
	}
	o.ForwardHeaders = fwd
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Process == "" {
		host, _ := os.Hostname()
		o.Process = host + "/" + strconv.Itoa(os.Getpid())
	}

	routes := make([]Route, len(o.Routes))
	seen := make(map[string]int, len(o.Routes))
	for i, r := range o.Routes {
		r.Method = strings.ToUpper(r.Method)
		rerr := func(format string, args ...any) {
			errs = append(errs, &RouteError{Index: i, Method: r.Method, Path: r.Path, Err: fmt.Errorf(format, args...)})
		}
		if r.Method != "*" && !validToken(r.Method) {
			rerr("invalid method %q", r.Method)
		}
		if _, err := paramNames(r.Path); err != nil {
			rerr("%v", err)
		}
		for _, p := range reserved {
			if strings.TrimRight(r.Path, "/") == p {
				rerr("path %s is served by the frontend itself", p)
			}
		}
		if !wire.ValidService(r.Service) {
			rerr("invalid service name %q (1-128 of a-z 0-9 . _ -, starting with a letter or digit)", r.Service)
		}
		if r.Timeout < 0 {
			rerr("timeout %v is negative", r.Timeout)
		} else if r.Timeout == 0 {
			r.Timeout = o.Timeout
		}
		if r.Attempts < 0 {
			rerr("attempts %d is negative", r.Attempts)
		}
		if r.Attempts <= 0 || !r.Idempotent {
			r.Attempts = 1
		}
		if r.Call == "" {
			r.Call = r.Method + " " + r.Path
		}
		key := r.Method + " " + r.Path
		if j, dup := seen[key]; dup {
			rerr("same method and path as route %d", j)
		} else {
			seen[key] = i
		}
		routes[i] = r
	}
	o.Routes = routes
	errs = o.eventDefaults(errs)
	return o, errors.Join(errs...)
}

// paramNames returns the names of a pattern's parameters in order, and
// checks what the router would otherwise panic about later.
func paramNames(pattern string) ([]string, error) {
	if !strings.HasPrefix(pattern, "/") {
		return nil, errors.New("path must begin with '/'")
	}
	for i := 0; i < len(pattern); i++ {
		if c := pattern[i]; c <= ' ' || c == '?' && !inBraces(pattern, i) || c == '#' || c >= 0x7f {
			return nil, fmt.Errorf("invalid character %q in path", c)
		}
	}
	var names []string
	for i := 0; i < len(pattern); i++ {
		switch pattern[i] {
		case '}':
			return nil, errors.New("unbalanced '}'")
		case '{':
		default:
			continue
		}
		depth, end := 1, -1
		for j := i + 1; j < len(pattern) && end < 0; j++ {
			switch pattern[j] {
			case '{':
				depth++
			case '}':
				if depth--; depth == 0 {
					end = j
				}
			}
		}
		if end < 0 {
			return nil, errors.New("unbalanced '{'")
		}
		name := pattern[i+1 : end]
		if k := strings.IndexByte(name, ':'); k >= 0 {
			name = name[:k]
		}
		name = strings.TrimSuffix(name, "?")
		if name == "" {
			return nil, errors.New("parameter without a name")
		}
		for _, n := range names {
			if n == name {
				return nil, fmt.Errorf("parameter %q appears twice", name)
			}
		}
		names = append(names, name)
		i = end
	}
	return names, nil
}

// inBraces reports whether pattern[i] is inside a {…} parameter.
func inBraces(pattern string, i int) bool {
	return strings.Count(pattern[:i], "{") > strings.Count(pattern[:i], "}")
}

// validToken reports whether s is an RFC 9110 token (header names, methods).
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// canonicalHeader spells a header name the way fasthttp normalizes
// received ones: upper case after the start and after '-', lower elsewhere.
func canonicalHeader(s string) string {
	b := []byte(s)
	upper := true
	for i, c := range b {
		if upper && c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		} else if !upper && c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		b[i] = c
		upper = c == '-'
	}
	return string(b)
}
