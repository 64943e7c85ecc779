package config

import (
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"
)

var (
	brokerNameRE  = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)
	serviceNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)
)

// maxServiceName is the longest service name the wire protocol carries.
const maxServiceName = 128

// routeMethods are the methods a route may name, with whether a request
// of that method is idempotent by default.
var routeMethods = map[string]bool{
	"GET": true, "HEAD": true, "PUT": true, "DELETE": true, "OPTIONS": true,
	"POST": false, "PATCH": false,
}

const methodList = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"

func routePath(i int) string { return "frontend.routes[" + strconv.Itoa(i) + "]" }

// resolve fills in the defaults that depend on other fields: a route's
// call, timeout, idempotent and attempts.
func (d *decoder) resolve(c *Config) {
	d.resolvePrograms(c)
	for i := range c.Frontend.Routes {
		r, p := &c.Frontend.Routes[i], routePath(i)
		if r.Call == "" {
			r.Call = r.Method + " " + r.Path
		}
		if !d.isSet(p + ".timeout") {
			r.Timeout = c.Frontend.Timeout
		}
		if !d.isSet(p + ".idempotent") {
			r.Idempotent = routeMethods[r.Method]
		}
		if !d.isSet(p + ".attempts") {
			r.Attempts = 1
			if r.Idempotent {
				r.Attempts = DefaultAttempts
			}
		}
	}
}

// validate checks every field, recording a problem for each thing wrong.
func (d *decoder) validate(c *Config) {
	d.oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	d.oneOf("log.format", c.Log.Format, "text", "json")

	if len(c.Brokers) == 0 {
		d.problem("brokers", "at least one broker is required")
	}
	names := make(map[string]int)
	endpoints := make(map[string]string) // endpoint → field path
	for i, b := range c.Brokers {
		p := "brokers[" + strconv.Itoa(i) + "]"
		switch j, dup := names[b.Name]; {
		case b.Name == "":
			d.problem(p+".name", "is required")
		case !brokerNameRE.MatchString(b.Name):
			d.problem(p+".name", "must be lower-case letters, digits and '-', starting with a letter or digit, got %s", quote(b.Name))
		case dup:
			d.problem(p+".name", "%s is already the name of brokers[%d]%s", quote(b.Name), j, d.onLine("brokers["+strconv.Itoa(j)+"]"))
		default:
			names[b.Name] = i
		}
		d.endpoint(p+".clients", b.Clients, endpoints)
		d.endpoint(p+".workers", b.Workers, endpoints)
		d.address(p+".admin", b.Admin, true)
		d.eventEndpoints(p, b, endpoints)
	}

	d.atLeast("broker.heartbeat", c.Broker.Heartbeat, MinHeartbeat)
	d.minInt("broker.liveness", c.Broker.Liveness, MinLiveness)
	d.minInt("broker.queue_limit", c.Broker.QueueLimit, 1)
	d.positive("broker.default_timeout", c.Broker.DefaultTimeout)

	d.positiveSize("transport.max_frame", c.Transport.MaxFrame)
	d.positive("transport.handshake_timeout", c.Transport.HandshakeTimeout)
	d.positive("transport.write_timeout", c.Transport.WriteTimeout)

	f := &c.Frontend
	d.address("frontend.listen", f.Listen, false)
	d.address("frontend.admin", f.Admin, true)
	if d.positiveSize("frontend.max_body", f.MaxBody) && c.Transport.MaxFrame > 0 && f.MaxBody >= c.Transport.MaxFrame {
		d.problem("frontend.max_body", "must be smaller than transport.max_frame (%s), since the body travels in one frame; got %s",
			c.Transport.MaxFrame, quote(d.raw("frontend.max_body", f.MaxBody.String())))
	}
	d.positive("frontend.read_timeout", f.ReadTimeout)
	d.positive("frontend.write_timeout", f.WriteTimeout)
	d.positive("frontend.idle_timeout", f.IdleTimeout)
	d.positive("frontend.shutdown_timeout", f.ShutdownTimeout)
	d.positive("frontend.timeout", f.Timeout)
	d.minInt("frontend.max_conns", f.MaxConns, 1)
	headers := make(map[string]int)
	for i, h := range f.ForwardHeaders {
		p := "frontend.forward_headers[" + strconv.Itoa(i) + "]"
		key := strings.ToLower(h)
		j, dup := headers[key]
		switch {
		case !isToken(h):
			d.problem(p, "must be a header name (letters, digits and !#$%%&'*+-.^_`|~), got %s", quote(h))
		case dup:
			d.problem(p, "%s is already listed as frontend.forward_headers[%d]", quote(h), j)
		default:
			headers[key] = i
		}
	}
	routes := make(map[string]int)
	for i := range f.Routes {
		d.route(i, &f.Routes[i], routes)
	}

	d.minInt("workers.concurrency", c.Workers.Concurrency, 1)
	d.positive("workers.drain_timeout", c.Workers.DrainTimeout)
	d.address("workers.metrics", c.Workers.Metrics, true)

	d.validateSupervisor(c)
	d.checkQueue(c)
	d.checkEvents(c)
}

func (d *decoder) route(i int, r *Route, seen map[string]int) {
	p := routePath(i)
	_, methodOK := routeMethods[r.Method]
	switch {
	case r.Method == "":
		d.problem(p+".method", "is required (one of %s)", methodList)
	case !methodOK:
		d.problem(p+".method", "must be one of %s, got %s", methodList, quote(r.Method))
	}
	pathMsg := ""
	if r.Path == "" {
		pathMsg = "is required, such as /users/{id}"
	} else {
		pathMsg = checkPattern(r.Path)
	}
	if pathMsg != "" {
		d.problem(p+".path", "%s", pathMsg)
	}
	if methodOK && pathMsg == "" {
		key := r.Method + " " + normalizePattern(r.Path)
		if j, dup := seen[key]; dup {
			d.problem(p+".path", "%s %s is already routed by %s%s", r.Method, r.Path, routePath(j), d.onLine(routePath(j)))
		} else {
			seen[key] = i
		}
	}
	switch {
	case r.Service == "":
		d.problem(p+".service", "is required")
	case len(r.Service) > maxServiceName || !serviceNameRE.MatchString(r.Service):
		d.problem(p+".service", "must be 1-%d of a-z 0-9 . _ -, starting with a letter or digit, got %s", maxServiceName, quote(r.Service))
	}
	if d.isSet(p + ".timeout") { // else frontend.timeout, checked by itself
		d.positive(p+".timeout", r.Timeout)
	}
	switch {
	case r.Attempts < 1 || r.Attempts > MaxAttempts:
		d.problem(p+".attempts", "must be from 1 to %d, got %d", MaxAttempts, r.Attempts)
	case r.Attempts > 1 && !r.Idempotent:
		d.problem(p+".attempts", "must be 1 on a route that is not idempotent, got %d: a retry could run the request twice (set idempotent: true if that is harmless)", r.Attempts)
	}
}

// onLine returns " (line N)" when the file gives the line of path.
func (d *decoder) onLine(path string) string {
	if l := d.line(path); l > 0 {
		return " (line " + strconv.Itoa(l) + ")"
	}
	return ""
}

func (d *decoder) oneOf(path, v string, allowed ...string) {
	for _, a := range allowed {
		if v == a {
			return
		}
	}
	d.problem(path, "must be one of %s, got %s", strings.Join(allowed, ", "), quote(v))
}

func (d *decoder) positive(path string, v Duration) {
	if v <= 0 {
		d.problem(path, "must be positive, got %s", quote(d.raw(path, v.String())))
	}
}

func (d *decoder) atLeast(path string, v Duration, min time.Duration) {
	if v.D() < min {
		d.problem(path, "must be at least %s, got %s", min, quote(d.raw(path, v.String())))
	}
}

// positiveSize reports whether v is positive, recording a problem if not.
func (d *decoder) positiveSize(path string, v Size) bool {
	if v <= 0 {
		got := d.raw(path, strconv.FormatInt(int64(v), 10))
		if _, err := strconv.ParseInt(got, 10, 64); err != nil {
			got = quote(got) // "-1KiB", not a bare number
		}
		d.problem(path, "must be positive, got %s", got)
		return false
	}
	return true
}

func (d *decoder) minInt(path string, v, min int) {
	if v < min {
		if min == 1 {
			d.problem(path, "must be positive, got %d", v)
			return
		}
		d.problem(path, "must be at least %d, got %d", min, v)
	}
}

// endpoint checks a ZeroMQ endpoint, tcp://host:port, and that no other
// endpoint in seen is the same.
func (d *decoder) endpoint(path, v string, seen map[string]string) {
	if v == "" {
		d.problem(path, "is required, such as tcp://127.0.0.1:5555")
		return
	}
	hostport, ok := strings.CutPrefix(v, "tcp://")
	if !ok {
		d.problem(path, "must be an endpoint like tcp://127.0.0.1:5555, got %s", quote(v))
		return
	}
	host, port, msg := splitAddress(hostport)
	if msg == "" && host == "" {
		msg = "needs a host"
	}
	if msg != "" {
		d.problem(path, "must be an endpoint like tcp://127.0.0.1:5555 (%s), got %s", msg, quote(v))
		return
	}
	if port == 0 {
		return // a free port each time: never the same as another
	}
	if other, dup := seen[v]; dup {
		d.problem(path, "%s is also %s", quote(v), other)
		return
	}
	seen[v] = path
}

// address checks a host:port to listen on; an empty host means every
// interface. An empty address is allowed when optional.
func (d *decoder) address(path, v string, optional bool) {
	if v == "" {
		if !optional {
			d.problem(path, "is required, such as 127.0.0.1:8080")
		}
		return
	}
	if _, _, msg := splitAddress(v); msg != "" {
		d.problem(path, "must be host:port like 127.0.0.1:8080 (%s), got %s", msg, quote(v))
	}
}

// splitAddress splits host:port, returning what is wrong with it, if
// anything. Port 0 is allowed: it asks for a free port.
func splitAddress(s string) (host string, port int, msg string) {
	host, ps, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, "no port"
	}
	for _, r := range host {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(".-_:%", r)) {
			return "", 0, "bad host"
		}
	}
	port, err = strconv.Atoi(ps)
	if err != nil || port < 0 || port > 65535 || ps[0] == '+' || ps[0] == '-' {
		return "", 0, "port must be a number from 0 to 65535"
	}
	return host, port, ""
}

// checkPattern returns what is wrong with a fasthttp/router path pattern,
// or "".
func checkPattern(p string) string {
	if !strings.HasPrefix(p, "/") {
		return `must start with "/", got ` + quote(p)
	}
	depth := 0
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case c <= ' ' || c == 0x7f:
			return "must not contain spaces or control characters, got " + quote(p)
		case depth == 0 && (c == '?' || c == '#'):
			return "must not contain '?' or '#' (the query is forwarded by itself), got " + quote(p)
		case c == '{':
			depth++
			if depth == 1 && (i+1 == len(p) || strings.IndexByte(":}?", p[i+1]) >= 0) {
				return "has a parameter without a name, got " + quote(p)
			}
		case c == '}':
			depth--
			if depth < 0 {
				return "has a '}' without its '{', got " + quote(p)
			}
		}
	}
	if depth != 0 {
		return "has a '{' without its '}', got " + quote(p)
	}
	if i := strings.Index(p, ":*}"); i >= 0 && i != len(p)-3 {
		return "may have a catch-all {name:*} only as its last segment, got " + quote(p)
	}
	return ""
}

// normalizePattern drops parameter names, so that /users/{id} and
// /users/{name}, which the router cannot tell apart, compare equal.
func normalizePattern(p string) string {
	var b strings.Builder
	depth := 0
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '{':
			depth++
			b.WriteByte(c)
			if depth == 1 {
				for i+1 < len(p) && strings.IndexByte(":}?", p[i+1]) < 0 {
					i++
				}
			}
		case c == '}':
			depth--
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// isToken reports whether s is an HTTP token (RFC 9110), as header names
// are.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}
