//go:build deploy

package deploytest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

var httpClient = &http.Client{
	Timeout:   15 * time.Second,
	Transport: &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 30 * time.Second},
}

// echoReply is the JSON body of the echo service.
type echoReply struct {
	Method string `json:"method"`
	Path   string `json:"path"`
	Worker string `json:"worker"` // "<hostname>/<pid>"
}

// workerHost is the host part of an echo reply's "worker".
func (r echoReply) host() string { h, _, _ := strings.Cut(r.Worker, "/"); return h }

// getEcho sends GET url and decodes the echo reply; any status but 200 is
// an error.
func getEcho(ctx context.Context, client *http.Client, url string) (echoReply, error) {
	var r echoReply
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return r, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return r, err
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if err != nil {
		return r, fmt.Errorf("reading the reply: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return r, fmt.Errorf("status %d: %.200s", resp.StatusCode, body)
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return r, fmt.Errorf("reply %.200q: %w", body, err)
	}
	if r.Worker == "" {
		return r, fmt.Errorf("reply %.200q names no worker", body)
	}
	return r, nil
}

// brokerStats is the part of a broker's /stats the test reads.
type brokerStats struct {
	Broker   any `json:"broker"`
	Services []struct {
		Service string `json:"service"`
		Workers int    `json:"workers"`
	} `json:"services"`
	Workers []struct {
		Name     string   `json:"name"`
		Process  string   `json:"process"` // host/pid
		Services []string `json:"services"`
		Draining bool     `json:"draining"`
	} `json:"workers"`
}

func getStats(ctx context.Context, url string) (brokerStats, error) {
	var s brokerStats
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return s, err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return s, err
	}
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("%s: status %d: %.200s", url, resp.StatusCode, body)
	}
	if err := json.Unmarshal(body, &s); err != nil {
		return s, fmt.Errorf("%s: %.200q: %w", url, body, err)
	}
	return s, nil
}

// echoWorkersByHost counts the broker's registered (not draining) workers
// serving echo, by host.
func (s brokerStats) echoWorkersByHost() map[string]int {
	n := map[string]int{}
	for _, w := range s.Workers {
		for _, svc := range w.Services {
			if svc == "echo" && !w.Draining {
				h, _, _ := strings.Cut(w.Process, "/")
				n[h]++
			}
		}
	}
	return n
}

// load sends GET requests to one URL from a few goroutines, each pausing
// between its requests: steady load. Any answer but 200 with an echo
// reply, and any transport error, is a failure.
type load struct {
	ok, failed atomic.Int64
	cancel     context.CancelFunc
	wg         sync.WaitGroup
	start      time.Time

	mu     sync.Mutex
	byHost map[string]int64
	errs   map[string]int // failure → count
	first  []string       // the first failures, with their time
	maxLat time.Duration
}

type loadResult struct {
	OK, Failed int64
	Took       time.Duration
	ByHost     map[string]int64
	Errors     map[string]int
	First      []string
	MaxLatency time.Duration
}

func (r loadResult) String() string {
	var hosts []string
	for h, n := range r.ByHost {
		hosts = append(hosts, fmt.Sprintf("%s:%d", h, n))
	}
	sort.Strings(hosts)
	rate := float64(r.OK+r.Failed) / r.Took.Seconds()
	return fmt.Sprintf("%d requests in %v (%.0f/s): %d ok, %d failed; answered by %s; max latency %v",
		r.OK+r.Failed, r.Took.Round(time.Millisecond), rate, r.OK, r.Failed, strings.Join(hosts, " "), r.MaxLatency.Round(time.Millisecond))
}

func startLoad(url string, workers int, pause time.Duration) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{cancel: cancel, start: time.Now(), byHost: map[string]int64{}, errs: map[string]int{}}
	client := &http.Client{
		Timeout:   15 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: workers, IdleConnTimeout: time.Minute},
	}
	for i := 0; i < workers; i++ {
		l.wg.Add(1)
		go func(i int) {
			defer l.wg.Done()
			for n := 0; ctx.Err() == nil; n++ {
				t0 := time.Now()
				// A request started before Stop is counted whatever
				// happens: it is not cancelled by Stop.
				r, err := getEcho(context.Background(), client, fmt.Sprintf("%s?g=%d&n=%d", url, i, n))
				lat := time.Since(t0)
				l.mu.Lock()
				if lat > l.maxLat {
					l.maxLat = lat
				}
				if err != nil {
					l.failed.Add(1)
					msg := err.Error()
					l.errs[msg]++
					if len(l.first) < 10 {
						l.first = append(l.first, fmt.Sprintf("+%v: %s", time.Since(l.start).Round(time.Millisecond), msg))
					}
				} else {
					l.ok.Add(1)
					l.byHost[r.host()]++
				}
				l.mu.Unlock()
				select {
				case <-ctx.Done():
				case <-time.After(pause):
				}
			}
		}(i)
	}
	return l
}

// waitOK waits until the load has had n successes.
func (l *load) waitOK(ctx context.Context, n int64, timeout time.Duration) error {
	return poll(ctx, timeout, 50*time.Millisecond, func() error {
		if got := l.ok.Load(); got < n {
			return fmt.Errorf("the load has %d successes and %d failures, want %d successes", got, l.failed.Load(), n)
		}
		return nil
	})
}

// Stop ends the load, waits for the requests under way, and returns the
// counts.
func (l *load) Stop() loadResult {
	l.cancel()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	r := loadResult{OK: l.ok.Load(), Failed: l.failed.Load(), Took: time.Since(l.start),
		ByHost: map[string]int64{}, Errors: map[string]int{}, First: l.first, MaxLatency: l.maxLat}
	for k, v := range l.byHost {
		r.ByHost[k] = v
	}
	for k, v := range l.errs {
		r.Errors[k] = v
	}
	return r
}
