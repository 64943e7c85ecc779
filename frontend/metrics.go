package frontend

import (
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// Metric names. Labels stay bounded: route is a configured pattern (or one
// of the pseudo-routes below), never a raw path; status is a class.
const (
	metricRequests = "shoal_frontend_requests_total"
	metricDuration = "shoal_frontend_request_duration_seconds"
	metricInFlight = "shoal_frontend_requests_in_flight"
	metricPanics   = "shoal_frontend_panics_total"
)

// Pseudo-routes for requests that match no configured route.
const (
	routeUnmatched = "unmatched" // 404 and 405
	routeHealth    = "health"    // /healthz and /readyz
	routeInvalid   = "invalid"   // rejected by fasthttp: malformed, too large, timed out
)

// routeStats are the metrics of one route label.
type routeStats struct {
	classes [6]*metrics.Counter // by status/100; [0] for anything out of range
	dur     *metrics.PrometheusHistogram
}

func newRouteStats(set *metrics.Set, route string) *routeStats {
	label := `{route="` + escapeLabel(route) + `"`
	rs := &routeStats{dur: set.NewPrometheusHistogram(metricDuration + label + "}")}
	for i := range rs.classes {
		class := "other"
		if i > 0 {
			class = string(rune('0'+i)) + "xx"
		}
		rs.classes[i] = set.NewCounter(metricRequests + label + `,status="` + class + `"}`)
	}
	return rs
}

// observe counts one finished request.
func (rs *routeStats) observe(status int, start time.Time) {
	i := status / 100
	if i < 1 || i > 5 {
		i = 0
	}
	rs.classes[i].Inc()
	rs.dur.UpdateDuration(start)
}

// escapeLabel escapes a Prometheus label value.
func escapeLabel(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}
