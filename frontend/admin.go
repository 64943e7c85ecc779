package frontend

import (
	"io"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"
)

// serveAdmin is the admin listener's handler: /metrics and nothing else.
func (s *Server) serveAdmin(ctx *fasthttp.RequestCtx) {
	if string(ctx.Path()) != "/metrics" {
		s.writeError(ctx, fasthttp.StatusNotFound, "not_found", "only /metrics is served here", "")
		return
	}
	ctx.SetContentType("text/plain; version=0.0.4; charset=utf-8")
	if ctx.IsHead() {
		return
	}
	s.WriteMetrics(ctx)
}

// WriteMetrics writes the frontend's metrics, the process-wide ones
// (ZeroMQ transport counters among them) and the process metrics in
// Prometheus text format, as the admin listener's /metrics does.
func (s *Server) WriteMetrics(w io.Writer) {
	s.set.WritePrometheus(w)
	metrics.WritePrometheus(w, true)
}
