package supervisor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// ErrNotRunning means nothing answers on the control socket.
var ErrNotRunning = errors.New("no supervisor answers on the control socket")

// Client talks to a running supervisor over its control socket: what
// `shoal ctl` uses.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client of the supervisor listening on socket.
func NewClient(socket string) *Client {
	return &Client{socket: socket, hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableCompression: true,
		MaxIdleConns:       2,
	}}}
}

// APIError is an error the supervisor answered with.
type APIError struct {
	Status int
	Msg    string
}

func (e *APIError) Error() string { return e.Msg }

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	resp, err := c.send(ctx, method, path, rd)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("reading the supervisor's answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var er errorReply
		if json.Unmarshal(b, &er) == nil && er.Error != "" {
			return &APIError{resp.StatusCode, er.Error}
		}
		return &APIError{resp.StatusCode, fmt.Sprintf("the supervisor answered %s", resp.Status)}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("reading the supervisor's answer: %w", err)
		}
	}
	return nil
}

func (c *Client) send(ctx context.Context, method, path string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://supervisor"+path, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Op == "dial" {
			return nil, fmt.Errorf("%w (%s): %v", ErrNotRunning, c.socket, oe.Err)
		}
		return nil, err
	}
	return resp, nil
}

// Status returns the named instances' status (every instance when none
// is named).
func (c *Client) Status(ctx context.Context, names ...string) ([]Status, error) {
	q := url.Values{"name": names}
	var r StatusReply
	err := c.do(ctx, http.MethodGet, "/v1/status?"+q.Encode(), nil, &r)
	return r.Instances, err
}

func (c *Client) action(ctx context.Context, path string, req Request) ([]Result, error) {
	if dl, ok := ctx.Deadline(); ok && req.TimeoutMS == 0 {
		req.TimeoutMS = max(1, time.Until(dl).Milliseconds())
	}
	var r ActionReply
	if err := c.do(ctx, http.MethodPost, path, req, &r); err != nil {
		return nil, err
	}
	if r.Error != "" {
		return r.Results, errors.New(r.Error)
	}
	return r.Results, nil
}

// Start starts the named instances and waits until each is RUNNING (or
// failed), at most timeout (0: the supervisor's default, 2m).
func (c *Client) Start(ctx context.Context, names []string, timeout time.Duration) ([]Result, error) {
	return c.action(ctx, "/v1/start", Request{Names: names, TimeoutMS: timeout.Milliseconds()})
}

// Stop stops the named instances and waits until they have exited.
func (c *Client) Stop(ctx context.Context, names []string, timeout time.Duration) ([]Result, error) {
	return c.action(ctx, "/v1/stop", Request{Names: names, TimeoutMS: timeout.Milliseconds()})
}

// Restart restarts the named instances, all at once or rolling (one at a
// time, each once its replacement is RUNNING).
func (c *Client) Restart(ctx context.Context, names []string, rolling bool, timeout time.Duration) ([]Result, error) {
	return c.action(ctx, "/v1/restart", Request{Names: names, Rolling: rolling, TimeoutMS: timeout.Milliseconds()})
}

// Signal sends a signal (TERM, HUP, USR1, …) to the named instances' main
// processes.
func (c *Client) Signal(ctx context.Context, signal string, names []string) ([]Result, error) {
	return c.action(ctx, "/v1/signal", Request{Names: names, Signal: signal})
}

// Reload makes the supervisor read its config file again.
func (c *Client) Reload(ctx context.Context) (ReloadResult, error) {
	var r ReloadResult
	err := c.do(ctx, http.MethodPost, "/v1/reload", nil, &r)
	return r, err
}

// Gaps returns the recent death-to-restart gaps.
func (c *Client) Gaps(ctx context.Context) ([]time.Duration, error) {
	var r GapsReply
	if err := c.do(ctx, http.MethodGet, "/v1/gaps", nil, &r); err != nil {
		return nil, err
	}
	out := make([]time.Duration, len(r.GapsUS))
	for i, us := range r.GapsUS {
		out[i] = time.Duration(us) * time.Microsecond
	}
	return out, nil
}

// TailOptions select what Tail shows.
type TailOptions struct {
	Names  []string
	Lines  int    // last lines of each log: 0 means 20, negative none
	Stream string // stdout, stderr or "" for both
	Follow bool   // keep writing what comes, until ctx ends
}

// Tail writes the named instances' recent output to w, and with Follow
// what they write from then on, until ctx ends.
func (c *Client) Tail(ctx context.Context, w io.Writer, o TailOptions) error {
	q := url.Values{"name": o.Names}
	switch {
	case o.Lines == 0:
		o.Lines = 20
	case o.Lines < 0:
		o.Lines = 0
	}
	q.Set("n", strconv.Itoa(o.Lines))
	if o.Stream != "" {
		q.Set("stream", o.Stream)
	}
	if o.Follow {
		q.Set("follow", "1")
	}
	resp, err := c.send(ctx, http.MethodGet, "/v1/tail?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var er errorReply
		b, _ := io.ReadAll(resp.Body)
		if json.Unmarshal(b, &er) == nil && er.Error != "" {
			return &APIError{resp.StatusCode, er.Error}
		}
		return &APIError{resp.StatusCode, "the supervisor answered " + resp.Status}
	}
	_, err = io.Copy(w, resp.Body)
	if ctx.Err() != nil {
		return nil
	}
	return err
}
