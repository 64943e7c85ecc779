package supervisor

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/shoal-dev/shoal/config"
)

// notifier tells the brokers that a child died (POST /died?process=
// host/pid on each admin endpoint), so that a broker re-dispatches that
// worker's requests now instead of after missed heartbeats. Notices go
// out from one goroutine, in order; the loop only queues them.
type notifier struct {
	log     *slog.Logger
	queue   chan string
	brokers atomic.Pointer[brokerSet]
	client  *http.Client
}

type brokerSet struct {
	on     bool
	host   string
	admins []string
}

func newNotifier(log *slog.Logger) *notifier {
	return &notifier{
		log:   log,
		queue: make(chan string, 256),
		client: &http.Client{
			Timeout: 2 * time.Second,
			Transport: &http.Transport{
				Proxy:               nil,
				DialContext:         (&net.Dialer{Timeout: time.Second}).DialContext,
				MaxIdleConnsPerHost: 1,
				IdleConnTimeout:     time.Minute,
			},
		},
	}
}

// setBrokers takes the brokers (and notify_brokers) from c.
func (n *notifier) setBrokers(c *config.Config, host string) {
	bs := &brokerSet{on: c.Supervisor.NotifyBrokers, host: host}
	for _, b := range c.Brokers {
		if b.Admin != "" {
			bs.admins = append(bs.admins, b.Admin)
		}
	}
	n.brokers.Store(bs)
}

// died queues the notice that pid died. It never blocks.
func (n *notifier) died(pid int) {
	bs := n.brokers.Load()
	if !bs.on || len(bs.admins) == 0 || pid <= 0 {
		return
	}
	select {
	case n.queue <- bs.host + "/" + strconv.Itoa(pid):
	default:
		n.log.Warn("too many notices for the brokers; dropping one (heartbeats will catch it)", "pid", pid)
	}
}

func (n *notifier) run() {
	for process := range n.queue {
		bs := n.brokers.Load()
		for _, a := range bs.admins {
			start := time.Now()
			workers, err := n.post(a, process)
			if err != nil {
				n.log.Debug("cannot tell the broker a process died", "broker", a, "process", process, "err", err)
				continue
			}
			n.log.Debug("told the broker a process died", "broker", a, "process", process, "workers", workers, "took", time.Since(start))
		}
	}
}

func (n *notifier) post(admin, process string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+admin+"/died?process="+url.QueryEscape(process), nil)
	if err != nil {
		return "", err
	}
	resp, err := n.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
	if resp.StatusCode != http.StatusOK {
		return "", &httpError{resp.Status, string(b)}
	}
	return string(trimNL(b)), nil
}

// close ends run once the queue is empty. The loop must have ended.
func (n *notifier) close() { close(n.queue) }

type httpError struct{ status, body string }

func (e *httpError) Error() string { return "answered " + e.status + ": " + e.body }

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}
