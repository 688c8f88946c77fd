package endpoint

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the write path's Prometheus metrics. A nil *Metrics records
// nothing.
type Metrics struct {
	forwards *prometheus.CounterVec
	waits    *prometheus.HistogramVec
	serves   prometheus.Histogram
	applies  *prometheus.HistogramVec
	batches  prometheus.Histogram
	holds    *prometheus.CounterVec
}

// forwardBuckets resolve a forwarding hop on a LAN, tens of microseconds,
// as well as a call that waits seconds for Raft.
var forwardBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// NewMetrics registers the write path's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		forwards: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hostscale_controller_forwarded_total",
			Help: "Calls this follower forwarded to the leader, by method and transport: raft (a connection to the leader's Raft port) or api (a Forward stream to its API, for a leader that does not take them on its Raft port).",
		}, []string{"grpc_method", "transport"}),
		waits: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hostscale_controller_forward_wait_seconds",
			Help:    "Time this follower waited for the leader's answer to a call it forwarded, by transport; the leader's share is hostscale_controller_forward_serve_seconds on the leader.",
			Buckets: forwardBuckets,
		}, []string{"transport"}),
		serves: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "hostscale_controller_forward_serve_seconds",
			Help:    "Time this leader took to run calls followers forwarded to it, from the decoded request to the encoded answer.",
			Buckets: forwardBuckets,
		}),
		applies: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hostscale_controller_apply_seconds",
			Help:    "Time from proposing a command to its application on this leader, by result.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"result"}),
		batches: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "hostscale_controller_entry_commands",
			Help:    "Commands in each Raft entry this leader proposed: more than one when commands waited for the entry before them.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024},
		}),
		holds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hostscale_controller_entry_holds_total",
			Help: "Entries this leader held under load until as many commands waited as in the entry before (outcome filled) or until the hold ended (timed_out).",
		}, []string{"outcome"}),
	}
	reg.MustRegister(m.forwards, m.waits, m.serves, m.applies, m.batches, m.holds)
	return m
}

// forwarded counts a call forwarded to the leader since start.
func (m *Metrics) forwarded(method, transport string, start time.Time) {
	if m != nil {
		m.forwards.WithLabelValues(method, transport).Inc()
		m.waits.WithLabelValues(transport).Observe(time.Since(start).Seconds())
	}
}

// served records a forwarded call this leader ran since start.
func (m *Metrics) served(start time.Time) {
	if m != nil {
		m.serves.Observe(time.Since(start).Seconds())
	}
}

func (m *Metrics) applied(start time.Time, result string) {
	if m != nil {
		m.applies.WithLabelValues(result).Observe(time.Since(start).Seconds())
	}
}

// heldEntry counts an entry held under load, by how its hold ended.
func (m *Metrics) heldEntry(outcome string) {
	if m != nil {
		m.holds.WithLabelValues(outcome).Inc()
	}
}

func (m *Metrics) proposed(commands int) {
	if m != nil {
		m.batches.Observe(float64(commands))
	}
}
