package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// ServiceStats are one service's figures on one broker.
type ServiceStats struct {
	Service    string `json:"service"`
	Queued     int    `json:"queued"`
	Workers    int    `json:"workers"`
	InFlight   int    `json:"in_flight"`
	Received   uint64 `json:"received"`
	Dispatched uint64 `json:"dispatched"`
	Replied    uint64 `json:"replied"`
	Requeued   uint64 `json:"requeued"`
	Expired    uint64 `json:"expired"`
	Dropped    uint64 `json:"dropped"` // refused: overloaded or no live worker
}

// WorkerStats describe one registered worker.
type WorkerStats struct {
	Name     string   `json:"name"`
	Process  string   `json:"process"`
	Services []string `json:"services"`
	Credit   int      `json:"credit"`
	InFlight int      `json:"in_flight"`
	Draining bool     `json:"draining"`
}

// Stats is a snapshot of a broker.
type Stats struct {
	Broker      string            `json:"broker"`
	Services    []ServiceStats    `json:"services"`
	Workers     []WorkerStats     `json:"workers"`
	Clients     int               `json:"clients"`
	Live        int               `json:"live_requests"`
	Malformed   map[string]uint64 `json:"malformed"`
	LateReplies uint64            `json:"late_replies"`
	DupIDs      uint64            `json:"duplicate_ids"`
	NoService   uint64            `json:"no_service"`
	WorkersDied uint64            `json:"workers_died"`
	Unknown     uint64            `json:"unknown_peers"`
	Events      *EventStats       `json:"events,omitempty"` // nil without an event forwarder
}

// Stats returns a snapshot taken on the broker's loop. It blocks until the
// loop runs it or ctx ends.
func (b *Broker) Stats(ctx context.Context) (Stats, error) {
	ch := make(chan Stats, 1)
	select {
	case b.queries <- func(b *Broker) { ch <- b.snapshot() }:
	case <-ctx.Done():
		return Stats{}, ctx.Err()
	}
	st := <-ch
	b.eventStats(ctx, &st)
	return st, nil
}

// ProcessDied tells the broker that a process (its "host/pid" as the worker
// sent it in READY) has died, so that its requests are re-dispatched now
// rather than after missed heartbeats. It returns how many workers it had.
func (b *Broker) ProcessDied(ctx context.Context, process string) (int, error) {
	n := deadWorkerNotice{process: process, reply: make(chan int, 1)}
	select {
	case b.deadSig <- n:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return <-n.reply, nil
}

func (b *Broker) snapshot() Stats {
	st := Stats{Broker: b.o.Name, Clients: len(b.cl), Live: len(b.live),
		Malformed: make(map[string]uint64, len(b.c.malformed)), LateReplies: b.c.late,
		DupIDs: b.c.dupIDs, NoService: b.c.noService, WorkersDied: b.c.workersDied, Unknown: b.c.unknownPeers}
	for k, v := range b.c.malformed {
		st.Malformed[k] = v
	}
	inflight := make(map[*service]int)
	for _, w := range b.wk {
		ws := WorkerStats{Name: w.name, Process: w.process, Credit: w.credit, InFlight: len(w.inflight), Draining: w.draining}
		for _, s := range w.services {
			ws.Services = append(ws.Services, s.name)
		}
		for _, r := range w.inflight {
			inflight[r.svc]++
		}
		st.Workers = append(st.Workers, ws)
	}
	for _, s := range b.services {
		ss := s.stats
		ss.Service, ss.Queued, ss.Workers, ss.InFlight = s.name, s.queue.len(), len(s.workers), inflight[s]
		st.Services = append(st.Services, ss)
	}
	sort.Slice(st.Services, func(i, j int) bool { return st.Services[i].Service < st.Services[j].Service })
	sort.Slice(st.Workers, func(i, j int) bool { return st.Workers[i].Name < st.Workers[j].Name })
	return st
}

// WritePrometheus writes the snapshot in Prometheus text format.
func (st *Stats) WritePrometheus(w io.Writer) {
	for _, s := range st.Services {
		l := fmt.Sprintf(`{broker=%q,service=%q}`, st.Broker, s.Service)
		metrics.WriteGaugeUint64(w, "shoal_broker_queue_depth"+l, uint64(s.Queued))
		metrics.WriteGaugeUint64(w, "shoal_broker_workers"+l, uint64(s.Workers))
		metrics.WriteGaugeUint64(w, "shoal_broker_in_flight"+l, uint64(s.InFlight))
		metrics.WriteCounterUint64(w, "shoal_broker_received_total"+l, s.Received)
		metrics.WriteCounterUint64(w, "shoal_broker_dispatched_total"+l, s.Dispatched)
		metrics.WriteCounterUint64(w, "shoal_broker_replied_total"+l, s.Replied)
		metrics.WriteCounterUint64(w, "shoal_broker_requeued_total"+l, s.Requeued)
		metrics.WriteCounterUint64(w, "shoal_broker_expired_total"+l, s.Expired)
		metrics.WriteCounterUint64(w, "shoal_broker_dropped_total"+l, s.Dropped)
	}
	b := fmt.Sprintf(`{broker=%q}`, st.Broker)
	reasons := make([]string, 0, len(st.Malformed))
	for r := range st.Malformed {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	for _, r := range reasons {
		metrics.WriteCounterUint64(w, fmt.Sprintf(`shoal_broker_malformed_total{broker=%q,reason=%q}`, st.Broker, r), st.Malformed[r])
	}
	metrics.WriteGaugeUint64(w, "shoal_broker_clients"+b, uint64(st.Clients))
	metrics.WriteGaugeUint64(w, "shoal_broker_live_requests"+b, uint64(st.Live))
	metrics.WriteCounterUint64(w, "shoal_broker_late_replies_total"+b, st.LateReplies)
	metrics.WriteCounterUint64(w, "shoal_broker_duplicate_ids_total"+b, st.DupIDs)
	metrics.WriteCounterUint64(w, "shoal_broker_no_service_total"+b, st.NoService)
	metrics.WriteCounterUint64(w, "shoal_broker_workers_died_total"+b, st.WorkersDied)
	metrics.WriteCounterUint64(w, "shoal_broker_unknown_peers_total"+b, st.Unknown)
	st.Events.writePrometheus(w, st.Broker)
}

// adminServer serves /healthz, /stats (JSON), /metrics (Prometheus) and
// POST /died?process=host/pid (the supervisor's notice of a dead child).
func (b *Broker) adminServer() *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		st, err := b.Stats(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(st)
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		st, err := b.Stats(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		st.WritePrometheus(w)
		metrics.WritePrometheus(w, true)
	})
	mux.HandleFunc("POST /died", func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Query().Get("process")
		if p == "" {
			http.Error(w, "missing process=host/pid", http.StatusBadRequest)
			return
		}
		n, err := b.ProcessDied(r.Context(), p)
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "%d\n", n)
	})
	return &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
}
