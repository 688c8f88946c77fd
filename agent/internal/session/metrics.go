package session

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	connected  prometheus.Gauge
	reconnects prometheus.Counter
	dropped    prometheus.Counter
	buffered   prometheus.Gauge
	batches    prometheus.Counter
	acked      prometheus.Counter
	rejected   prometheus.Counter
	heartbeats prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hostscale_agent_connected",
			Help: "1 while the agent has a stream to the controller leader, else 0.",
		}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hostscale_agent_reconnects_total",
			Help: "Connection attempts made after a stream ended or an attempt failed.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hostscale_agent_samples_dropped_total",
			Help: "Samples dropped unsent: the oldest beyond the buffer bound, or one the controller could not take.",
		}),
		buffered: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hostscale_agent_samples_buffered",
			Help: "Samples kept until the controller acknowledges them.",
		}),
		batches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hostscale_agent_batches_sent_total",
			Help: "Sample batches sent.",
		}),
		acked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hostscale_agent_samples_acked_total",
			Help: "Samples the controller acknowledged as kept.",
		}),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hostscale_agent_samples_rejected_total",
			Help: "Samples the controller acknowledged as rejected (e.g. out of order).",
		}),
		heartbeats: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hostscale_agent_heartbeats_sent_total",
			Help: "Heartbeats sent because there was no sample to send.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.connected, m.reconnects, m.dropped, m.buffered, m.batches, m.acked, m.rejected, m.heartbeats)
	}
	return m
}
