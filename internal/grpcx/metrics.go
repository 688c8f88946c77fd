package grpcx

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
)

type serverMetrics struct {
	handled  *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newServerMetrics(reg prometheus.Registerer) *serverMetrics {
	if reg == nil {
		return nil
	}
	m := &serverMetrics{
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_handled_total",
			Help: "RPCs completed on the server, by method and status code.",
		}, []string{"grpc_method", "grpc_code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "grpc_server_handling_seconds",
			Help:    "Time from the start of an RPC to its end, by method.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"grpc_method"}),
	}
	reg.MustRegister(m.handled, m.duration)
	return m
}

func (m *serverMetrics) observe(method string, code codes.Code, elapsed time.Duration) {
	if m == nil {
		return
	}
	m.handled.WithLabelValues(method, code.String()).Inc()
	m.duration.WithLabelValues(method).Observe(elapsed.Seconds())
}
