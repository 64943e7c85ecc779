package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// The control API: HTTP over the unix socket, JSON bodies.
//
//	GET  /v1/status?name=N…          StatusReply
//	POST /v1/start    Request         ActionReply (waits until RUNNING, EXITED or FATAL)
//	POST /v1/stop     Request         ActionReply (waits until stopped)
//	POST /v1/restart  Request         ActionReply (rolling: one at a time)
//	POST /v1/signal   Request         ActionReply
//	POST /v1/reload                   ReloadResult, or 422 with the config's problems
//	GET  /v1/tail?name=N&n=20&stream=stdout|stderr&follow=1   text
//	GET  /v1/gaps                     GapsReply
//
// Failures are {"error": "..."} with a 4xx or 5xx status.

// Request is the body of the action calls.
type Request struct {
	Names   []string `json:"names"`
	Rolling bool     `json:"rolling,omitempty"`
	Signal  string   `json:"signal,omitempty"`
	// TimeoutMS bounds the wait; default 120000.
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
}

// StatusReply answers /v1/status.
type StatusReply struct {
	Instances []Status `json:"instances"`
}

// ActionReply answers the action calls.
type ActionReply struct {
	Results []Result `json:"results"`
	Error   string   `json:"error,omitempty"` // the wait timed out, or the supervisor is stopping
}

// GapsReply answers /v1/gaps.
type GapsReply struct {
	// GapsUS are the recent death-to-restart gaps, oldest first.
	GapsUS []int64 `json:"gaps_us"`
}

type errorReply struct {
	Error string `json:"error"`
}

const defaultWait = 2 * time.Minute

// listen opens the control socket, mode 0600. A socket file nobody
// answers on is left over from a crash and replaced.
func (s *Supervisor) listen() (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(s.socket), 0o750); err != nil {
		return nil, fmt.Errorf("supervisor: cannot create %s: %w", filepath.Dir(s.socket), unwrapPath(err))
	}
	if _, err := os.Lstat(s.socket); err == nil {
		if c, err := net.DialTimeout("unix", s.socket, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("supervisor: another supervisor is running: its control socket %s answers", s.socket)
		}
		if err := os.Remove(s.socket); err != nil {
			return nil, fmt.Errorf("supervisor: cannot remove the stale control socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", s.socket)
	if err != nil {
		return nil, fmt.Errorf("supervisor: cannot listen on the control socket: %w", err)
	}
	if err := os.Chmod(s.socket, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("supervisor: cannot restrict the control socket: %w", err)
	}
	return ln, nil
}

type peerKey struct{}

// peerUID reads the uid of the process at the other end of a unix
// socket connection.
func peerUID(c net.Conn) (int, bool) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, false
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return 0, false
	}
	return int(cred.Uid), true
}

func (s *Supervisor) controlServer() *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		st, err := s.Statuses(r.Context(), r.URL.Query()["name"]...)
		if err != nil {
			fail(w, err)
			return
		}
		reply(w, http.StatusOK, StatusReply{Instances: st})
	})
	for _, path := range []string{"start", "stop", "restart", "signal"} {
		mux.HandleFunc("POST /v1/"+path, func(w http.ResponseWriter, r *http.Request) { s.serveAction(w, r, path) })
	}
	mux.HandleFunc("POST /v1/reload", func(w http.ResponseWriter, r *http.Request) {
		res, err := s.Reload(r.Context())
		if err != nil {
			if errors.Is(err, ErrShutdown) {
				fail(w, err)
				return
			}
			reply(w, http.StatusUnprocessableEntity, errorReply{err.Error()})
			return
		}
		reply(w, http.StatusOK, res)
	})
	mux.HandleFunc("GET /v1/tail", s.serveTail)
	mux.HandleFunc("GET /v1/gaps", func(w http.ResponseWriter, r *http.Request) {
		var g GapsReply
		for _, d := range s.Gaps() {
			g.GapsUS = append(g.GapsUS, d.Microseconds())
		}
		reply(w, http.StatusOK, g)
	})
	me := os.Geteuid()
	guard := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if uid, ok := r.Context().Value(peerKey{}).(int); !ok || (uid != 0 && uid != me) {
			reply(w, http.StatusForbidden, errorReply{"only root and the supervisor's own user may use the control socket"})
			return
		}
		mux.ServeHTTP(w, r)
		s.trimSoon()
	})
	return &http.Server{
		Handler:           guard,
		ReadHeaderTimeout: 5 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if uid, ok := peerUID(c); ok {
				return context.WithValue(ctx, peerKey{}, uid)
			}
			return ctx
		},
		ErrorLog: nil,
	}
}

func (s *Supervisor) serveAction(w http.ResponseWriter, r *http.Request, action string) {
	var req Request
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		reply(w, http.StatusBadRequest, errorReply{"bad request body: " + err.Error()})
		return
	}
	if len(req.Names) == 0 {
		reply(w, http.StatusBadRequest, errorReply{"name what to " + action + ": NAME, NAME:INDEX, GROUP:* or all"})
		return
	}
	wait := defaultWait
	if req.TimeoutMS > 0 {
		wait = time.Duration(req.TimeoutMS) * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	var results []Result
	var err error
	switch action {
	case "start":
		results, err = s.Start(ctx, req.Names)
	case "stop":
		results, err = s.Stop(ctx, req.Names)
	case "restart":
		if req.Rolling {
			results, err = s.RollingRestart(ctx, req.Names)
		} else {
			results, err = s.Restart(ctx, req.Names)
		}
	case "signal":
		sig, ok := ParseSignal(req.Signal)
		if !ok {
			reply(w, http.StatusBadRequest, errorReply{fmt.Sprintf("unknown signal %q", req.Signal)})
			return
		}
		results, err = s.Signal(ctx, sig, req.Names)
	}
	var ne *NameError
	switch {
	case errors.As(err, &ne):
		reply(w, http.StatusNotFound, errorReply{err.Error()})
	case err != nil && results == nil:
		fail(w, err)
	default:
		ar := ActionReply{Results: results}
		if err != nil {
			ar.Error = err.Error()
		}
		reply(w, http.StatusOK, ar)
	}
}

// serveTail writes the last lines of the named instances' logs and, with
// follow=1, what they write from then on.
func (s *Supervisor) serveTail(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	n := 20
	if v := q.Get("n"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 0 {
			reply(w, http.StatusBadRequest, errorReply{"n must be a whole number"})
			return
		}
	}
	streams := []string{Stdout, Stderr}
	switch v := q.Get("stream"); v {
	case "", "both":
	case Stdout, Stderr:
		streams = []string{v}
	default:
		reply(w, http.StatusBadRequest, errorReply{"stream must be stdout, stderr or both"})
		return
	}
	var logs []*instanceLogs
	var rerr error
	if err := s.call(r.Context(), func() {
		ins, err := s.resolve(q["name"])
		if err != nil {
			rerr = err
			return
		}
		for _, in := range ins {
			logs = append(logs, in.logs)
		}
	}); err != nil {
		fail(w, err)
		return
	}
	if rerr != nil {
		reply(w, http.StatusNotFound, errorReply{rerr.Error()})
		return
	}
	headers := len(logs)*len(streams) > 1
	// Follow before reading the history, so nothing falls between.
	var fs []*follower
	if q.Get("follow") == "1" {
		for _, il := range logs {
			f := il.follow()
			defer il.unfollow(f)
			fs = append(fs, f)
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	tw := &tailWriter{w: w, headers: headers}
	for _, il := range logs {
		for _, st := range streams {
			b, err := lastLines(il.streamFile(st), n)
			if err != nil {
				b = []byte(err.Error() + "\n")
			}
			tw.write(il.name, st, b, true)
		}
	}
	flush(w)
	if fs == nil {
		return
	}
	merged := make(chan chunk, 64)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	defer func() { close(stop); wg.Wait() }()
	for _, f := range fs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case c := <-f.ch:
					select {
					case merged <- c:
					case <-stop:
						return
					}
				case <-stop:
					return
				}
			}
		}()
	}
	want := map[string]bool{}
	for _, st := range streams {
		want[st] = true
	}
	for {
		select {
		case c := <-merged:
			if !want[c.stream] {
				continue
			}
			if c.data == nil {
				c.data = []byte("[… output dropped: this reader fell behind …]\n")
			}
			if tw.write(c.name, c.stream, c.data, false) != nil {
				return
			}
			flush(w)
		case <-r.Context().Done():
			return
		case <-s.done:
			return
		}
	}
}

// tailWriter writes chunks of several logs, with a "==> name stream <=="
// header whenever the source changes, as tail(1) does with several files.
type tailWriter struct {
	w       io.Writer
	headers bool
	last    string
	midLine bool
}

func (t *tailWriter) write(name, stream string, b []byte, history bool) error {
	src := name + " " + stream
	if t.headers && (src != t.last || history) {
		pre := ""
		if t.midLine {
			pre = "\n"
		}
		if t.last != "" {
			pre += "\n"
		}
		if _, err := fmt.Fprintf(t.w, "%s==> %s <==\n", pre, src); err != nil {
			return err
		}
		t.last, t.midLine = src, false
	}
	if len(b) == 0 {
		return nil
	}
	if _, err := t.w.Write(b); err != nil {
		return err
	}
	t.midLine = b[len(b)-1] != '\n'
	if history && t.midLine {
		_, err := t.w.Write([]byte("\n"))
		t.midLine = false
		return err
	}
	return nil
}

func flush(w http.ResponseWriter) {
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
}

func reply(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func fail(w http.ResponseWriter, err error) {
	var ne *NameError
	switch {
	case errors.As(err, &ne):
		reply(w, http.StatusNotFound, errorReply{err.Error()})
	case errors.Is(err, ErrShutdown):
		reply(w, http.StatusServiceUnavailable, errorReply{err.Error()})
	default:
		reply(w, http.StatusInternalServerError, errorReply{err.Error()})
	}
}

// gapRing keeps the last restart gaps.
type gapRing struct {
	mu   sync.Mutex
	buf  [1024]time.Duration
	n    int
	next int
}

func (g *gapRing) add(d time.Duration) {
	g.mu.Lock()
	g.buf[g.next] = d
	g.next = (g.next + 1) % len(g.buf)
	g.n = min(g.n+1, len(g.buf))
	g.mu.Unlock()
}

func (g *gapRing) all() []time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]time.Duration, 0, g.n)
	start := (g.next - g.n + len(g.buf)) % len(g.buf)
	for i := range g.n {
		out = append(out, g.buf[(start+i)%len(g.buf)])
	}
	return out
}
