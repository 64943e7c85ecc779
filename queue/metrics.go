package queue

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/VictoriaMetrics/metrics"
)

// latencyBuckets are the upper bounds, in seconds, of the wait and run
// histograms: from a millisecond to an hour.
var latencyBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600}

// consumerMetrics are a consumer's Prometheus metrics:
//
//	shoal_queue_tasks{queue,state}          gauge: tasks per state (every queue in Redis), refreshed every poll
//	shoal_queue_paused{queue}               gauge: 1 when paused
//	shoal_queue_processed_total{queue}      tasks done by this consumer
//	shoal_queue_failed_total{queue}         runs that failed (retried or dead)
//	shoal_queue_retried_total{queue}        failed runs scheduled for a retry
//	shoal_queue_dead_total{queue}           tasks this consumer sent to dead letters
//	shoal_queue_unknown_type_total{queue}   tasks of a type with no handler (dead)
//	shoal_queue_bad_payload_total{queue}    payloads that did not decode (dead)
//	shoal_queue_bad_message_total{queue}    stored messages that did not decode (dead)
//	shoal_queue_wait_seconds{queue}         histogram: ready (enqueued, due, retried) → start
//	shoal_queue_run_seconds{queue}          histogram: start → done
//	shoal_queue_panics_total                handler panics (each also a failure)
//	shoal_queue_lease_lost_total            runs whose lease was lost mid-run
//	shoal_queue_late_acks_total             outcomes refused because the lease had expired
//	shoal_queue_recovered_total             expired leases requeued by this consumer's maintenance
//	shoal_queue_lease_dead_total            tasks fetched with no retry left after a lost lease (dead)
//	shoal_queue_promoted_total              scheduled and retry tasks made pending
//	shoal_queue_redis_errors_total{op}      failed Redis calls: fetch wait ack extend maintain requeue ping
//	shoal_queue_redis_up                    gauge: 1 when the last maintenance call succeeded
//	shoal_queue_running                     gauge: handlers running
//	shoal_queue_held                        gauge: tasks leased by this consumer
type consumerMetrics struct {
	set *metrics.Set

	mu     sync.Mutex
	queues map[string]*queueMetrics
	depths map[string]*queueDepth
	errs   map[string]*metrics.Counter

	panics, lateAcks, leaseLost, recovered, leaseDead, promoted *metrics.Counter
	redisUp                                                     atomic.Int64
}

type queueMetrics struct {
	processed, failed, retried, dead    *metrics.Counter
	unknownType, badPayload, badMessage *metrics.Counter
	wait, run                           *metrics.PrometheusHistogram
}

type queueDepth struct {
	n      [6]atomic.Int64 // by States
	paused atomic.Int64
}

func newConsumerMetrics(set *metrics.Set, c *Consumer) *consumerMetrics {
	m := &consumerMetrics{
		set:       set,
		queues:    make(map[string]*queueMetrics),
		depths:    make(map[string]*queueDepth),
		errs:      make(map[string]*metrics.Counter),
		panics:    set.GetOrCreateCounter(`shoal_queue_panics_total`),
		lateAcks:  set.GetOrCreateCounter(`shoal_queue_late_acks_total`),
		leaseLost: set.GetOrCreateCounter(`shoal_queue_lease_lost_total`),
		recovered: set.GetOrCreateCounter(`shoal_queue_recovered_total`),
		leaseDead: set.GetOrCreateCounter(`shoal_queue_lease_dead_total`),
		promoted:  set.GetOrCreateCounter(`shoal_queue_promoted_total`),
	}
	set.GetOrCreateGauge(`shoal_queue_redis_up`, func() float64 { return float64(m.redisUp.Load()) })
	set.GetOrCreateGauge(`shoal_queue_running`, func() float64 { return float64(c.running.Load()) })
	set.GetOrCreateGauge(`shoal_queue_held`, func() float64 { return float64(c.nheld.Load()) })
	for _, op := range []string{"fetch", "wait", "ack", "extend", "maintain", "requeue", "ping"} {
		m.errs[op] = set.GetOrCreateCounter(`shoal_queue_redis_errors_total{op="` + op + `"}`)
	}
	for _, q := range c.queues {
		m.queue(q)
		m.depth(q)
	}
	return m
}

func (m *consumerMetrics) redisErr(op string) {
	if c := m.errs[op]; c != nil {
		c.Inc()
	}
}

// queue returns the metrics of queue q, creating them on first use.
func (m *consumerMetrics) queue(q string) *queueMetrics {
	m.mu.Lock()
	defer m.mu.Unlock()
	if qm := m.queues[q]; qm != nil {
		return qm
	}
	l := fmt.Sprintf(`{queue=%q}`, q)
	qm := &queueMetrics{
		processed:   m.set.GetOrCreateCounter(`shoal_queue_processed_total` + l),
		failed:      m.set.GetOrCreateCounter(`shoal_queue_failed_total` + l),
		retried:     m.set.GetOrCreateCounter(`shoal_queue_retried_total` + l),
		dead:        m.set.GetOrCreateCounter(`shoal_queue_dead_total` + l),
		unknownType: m.set.GetOrCreateCounter(`shoal_queue_unknown_type_total` + l),
		badPayload:  m.set.GetOrCreateCounter(`shoal_queue_bad_payload_total` + l),
		badMessage:  m.set.GetOrCreateCounter(`shoal_queue_bad_message_total` + l),
		wait:        m.set.GetOrCreatePrometheusHistogramExt(`shoal_queue_wait_seconds`+l, latencyBuckets),
		run:         m.set.GetOrCreatePrometheusHistogramExt(`shoal_queue_run_seconds`+l, latencyBuckets),
	}
	m.queues[q] = qm
	return qm
}

// depth returns the depth gauges of queue q, creating them on first use.
func (m *consumerMetrics) depth(q string) *queueDepth {
	m.mu.Lock()
	defer m.mu.Unlock()
	if d := m.depths[q]; d != nil {
		return d
	}
	d := &queueDepth{}
	for i, s := range States {
		m.set.GetOrCreateGauge(fmt.Sprintf(`shoal_queue_tasks{queue=%q,state=%q}`, q, s),
			func() float64 { return float64(d.n[i].Load()) })
	}
	m.set.GetOrCreateGauge(fmt.Sprintf(`shoal_queue_paused{queue=%q}`, q), func() float64 { return float64(d.paused.Load()) })
	m.depths[q] = d
	return d
}
