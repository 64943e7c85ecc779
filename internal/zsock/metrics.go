package zsock

import (
	"io"
	"sync/atomic"

	"github.com/VictoriaMetrics/metrics"
)

// Reasons a connection is dropped, as they appear in Counters.Dropped and in
// the reason label of shoal_zmtp_conns_dropped_total.
const (
	ReasonOversizedFrame    = "oversized_frame"    // a frame announced more than Options.MaxFrame (or a command more than 64 KiB)
	ReasonBadGreeting       = "bad_greeting"       // wrong signature, ZMTP < 3, or a mechanism other than NULL
	ReasonHandshakeTimeout  = "handshake_timeout"  // greeting and READY not complete within Options.HandshakeTimeout
	ReasonMalformedCommand  = "malformed_command"  // a command frame that does not parse, or one we do not accept
	ReasonBadFlags          = "bad_flags"          // reserved flag bits, or a command inside a multipart message
	ReasonWriteTimeout      = "write_timeout"      // the peer did not drain its socket within Options.WriteTimeout
	ReasonIOError           = "io_error"           // the connection failed (reset, ...); a clean close is not counted
	ReasonIncompatiblePeer  = "incompatible_peer"  // the peer's Socket-Type is unknown or cannot talk to ours
	ReasonDuplicateIdentity = "duplicate_identity" // a ROUTER already has a live peer with this identity
	ReasonUnexpectedMessage = "unexpected_message" // a PUB/XPUB got something other than a subscription
	ReasonHandshakeRejected = "handshake_rejected" // zmq4 refused a handshake we had accepted (closed, not leaked)
	ReasonSlowPeer          = "slow_peer"          // more than Options.WriteQueue bytes waited for a peer that reads too slowly
)

// Reasons lists every drop reason, in a fixed order.
func Reasons() []string {
	return []string{
		ReasonOversizedFrame, ReasonBadGreeting, ReasonHandshakeTimeout,
		ReasonMalformedCommand, ReasonBadFlags, ReasonWriteTimeout, ReasonIOError,
		ReasonIncompatiblePeer, ReasonDuplicateIdentity, ReasonUnexpectedMessage,
		ReasonHandshakeRejected, ReasonSlowPeer,
	}
}

// Counters is a snapshot of the process-wide connection counters.
type Counters struct {
	Accepted    uint64            // TCP connections accepted by listeners
	Dialed      uint64            // TCP connections made by Dial
	Established uint64            // connections whose greeting and READY passed validation
	Open        int64             // connections currently open
	Dropped     map[string]uint64 // connections we closed, by reason (see Reasons)
}

// The counters live in their own metrics.Set, registered with
// metrics.RegisterSet so that metrics.WritePrometheus includes them.
var (
	metricSet = metrics.NewSet()

	acceptedTotal    = metricSet.NewCounter("shoal_zmtp_conns_accepted_total")
	dialedTotal      = metricSet.NewCounter("shoal_zmtp_conns_dialed_total")
	establishedTotal = metricSet.NewCounter("shoal_zmtp_conns_established_total")
	openConns        atomic.Int64
	droppedTotal     = func() map[string]*metrics.Counter {
		m := make(map[string]*metrics.Counter)
		for _, r := range Reasons() {
			m[r] = metricSet.NewCounter(`shoal_zmtp_conns_dropped_total{reason="` + r + `"}`)
		}
		return m
	}()
)

func init() {
	metricSet.NewGauge("shoal_zmtp_conns_open", func() float64 { return float64(openConns.Load()) })
	metrics.RegisterSet(metricSet)
}

// Stats returns a snapshot of the process-wide counters.
func Stats() Counters {
	c := Counters{
		Accepted:    acceptedTotal.Get(),
		Dialed:      dialedTotal.Get(),
		Established: establishedTotal.Get(),
		Open:        openConns.Load(),
		Dropped:     make(map[string]uint64, len(droppedTotal)),
	}
	for r, ctr := range droppedTotal {
		c.Dropped[r] = ctr.Get()
	}
	return c
}

// WriteMetrics writes the counters in Prometheus text format:
//
//	shoal_zmtp_conns_accepted_total
//	shoal_zmtp_conns_dialed_total
//	shoal_zmtp_conns_established_total
//	shoal_zmtp_conns_dropped_total{reason="..."}
//	shoal_zmtp_conns_open
//
// The same counters are registered with metrics.RegisterSet, so a process
// that serves metrics.WritePrometheus already exposes them: call one or the
// other, not both, or every series appears twice.
func WriteMetrics(w io.Writer) {
	metricSet.WritePrometheus(w)
}

func countDrop(reason string) {
	if c := droppedTotal[reason]; c != nil {
		c.Inc()
	}
}
