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
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/shoal-dev/shoal/config"
)

// check is one try of a readiness check: nil when ready.
type check func(ctx context.Context) error

// probeClient serves the HTTP readiness checks and the broker's /stats.
var probeClient = &http.Client{
	Timeout: 2 * time.Second,
	Transport: &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: time.Second}).DialContext,
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     30 * time.Second,
	},
}

func (s *Supervisor) placeholders(in *instance) config.Placeholders {
	return config.Placeholders{Shoal: s.exe, Config: absPath(s.cfg.File), RunDir: s.run, Index: in.index}
}

func (s *Supervisor) expand(in *instance, v string) string {
	out, err := config.ExpandPlaceholders(v, s.placeholders(in))
	if err != nil {
		return v // the config checked it
	}
	return out
}

// readiness returns in's readiness check, or nil when it has none.
func (s *Supervisor) readiness(in *instance) check {
	r := in.prog.cfg.Ready
	switch r.Kind() {
	case "tcp":
		addr := s.expand(in, r.TCP)
		return func(ctx context.Context) error {
			c, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", addr)
			if err != nil {
				return err
			}
			return c.Close()
		}
	case "http":
		u := s.expand(in, r.HTTP)
		return func(ctx context.Context) error { return httpOK(ctx, u) }
	case "zmq":
		addr := strings.TrimPrefix(s.expand(in, r.ZMQ), "tcp://")
		return func(ctx context.Context) error { return zmtpGreets(ctx, addr) }
	case "broker_service":
		var admins []string
		for _, b := range s.cfg.Brokers {
			if b.Admin != "" {
				admins = append(admins, b.Admin)
			}
		}
		process := s.host + "/" + strconv.Itoa(in.pid)
		return func(ctx context.Context) error { return brokersServe(ctx, admins, process, r.BrokerService) }
	}
	return nil
}

// ownPort returns the host:port the instance's check probes, which must
// be free before it starts: if something answers there already, the
// check would pass for the wrong process.
func (s *Supervisor) ownPort(in *instance) string {
	r := in.prog.cfg.Ready
	switch r.Kind() {
	case "tcp":
		return s.expand(in, r.TCP)
	case "zmq":
		return strings.TrimPrefix(s.expand(in, r.ZMQ), "tcp://")
	case "http":
		u, err := url.Parse(s.expand(in, r.HTTP))
		if err != nil {
			return ""
		}
		if u.Port() != "" {
			return u.Host
		}
		if u.Scheme == "https" {
			return net.JoinHostPort(u.Hostname(), "443")
		}
		return net.JoinHostPort(u.Hostname(), "80")
	}
	return ""
}

// portInUse reports whether something accepts connections at addr.
func portInUse(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// waitReady tries chk until it passes, ctx ends or timeout passes. Tries
// start 5ms apart and slow down to 100ms.
func waitReady(ctx context.Context, chk check, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	wait := 5 * time.Millisecond
	var last error
	for {
		tctx, cancel := context.WithDeadline(ctx, deadline)
		last = chk(tctx)
		cancel()
		if last == nil {
			return nil
		}
		if ctx.Err() != nil {
			return context.Canceled
		}
		if time.Now().Add(wait).After(deadline) {
			return fmt.Errorf("not ready within %s (last check: %v)", timeout, last)
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return context.Canceled
		}
		wait = min(wait*3/2, 100*time.Millisecond)
	}
}

func httpOK(ctx context.Context, u string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := probeClient.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %s", u, resp.Status)
	}
	return nil
}

// zmtpGreeting is a ZMTP 3.0 greeting with the NULL mechanism.
var zmtpGreeting = func() []byte {
	g := make([]byte, 64)
	g[0], g[8], g[9], g[10] = 0xff, 0x01, 0x7f, 3
	copy(g[12:], "NULL")
	return g
}()

// zmtpGreets reports whether a ZeroMQ peer at addr answers the greeting
// with its own ZMTP signature.
func zmtpGreets(ctx context.Context, addr string) error {
	c, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write(zmtpGreeting); err != nil {
		return err
	}
	sig := make([]byte, 10)
	if _, err := io.ReadFull(c, sig); err != nil {
		return fmt.Errorf("no ZMTP greeting from %s: %w", addr, err)
	}
	if sig[0] != 0xff || sig[9] != 0x7f {
		return fmt.Errorf("%s answered something other than ZMTP: % x", addr, sig)
	}
	return nil
}

// brokerStats is the part of a broker's /stats the supervisor reads.
type brokerStats struct {
	Workers []struct {
		Process  string   `json:"process"`
		Services []string `json:"services"`
		Draining bool     `json:"draining"`
	} `json:"workers"`
}

// brokersServe reports whether every broker lists a worker of process
// serving service and not draining.
func brokersServe(ctx context.Context, admins []string, process, service string) error {
	for _, a := range admins {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a+"/stats", nil)
		if err != nil {
			return err
		}
		resp, err := probeClient.Do(req)
		if err != nil {
			return fmt.Errorf("broker %s: %w", a, err)
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
		resp.Body.Close()
		if err != nil {
			return fmt.Errorf("broker %s: %w", a, err)
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("broker %s answered %s", a, resp.Status)
		}
		if !bytes.Contains(body, []byte(process)) {
			return fmt.Errorf("broker %s has no worker of process %s yet", a, process)
		}
		var st brokerStats
		if err := json.Unmarshal(body, &st); err != nil {
			return fmt.Errorf("broker %s: cannot read /stats: %w", a, err)
		}
		found := false
		for _, w := range st.Workers {
			if w.Process == process && !w.Draining && slices.Contains(w.Services, service) {
				found = true
				break
			}
		}
		if !found {
			return fmt.Errorf("broker %s has no worker of process %s serving %s yet", a, process, service)
		}
	}
	if len(admins) == 0 {
		return errors.New("no broker has an admin address")
	}
	return nil
}
