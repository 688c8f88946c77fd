package watch

import "github.com/prometheus/client_golang/prometheus"

var (
	connectedDesc = prometheus.NewDesc("hostscale_balancer_controller_connected",
		"1 for the controller whose table stream is open, 0 for the others.", []string{"controller"}, nil)
	streamsDesc = prometheus.NewDesc("hostscale_balancer_controller_streams_total",
		"Table streams opened to controllers.", nil, nil)
	failuresDesc = prometheus.NewDesc("hostscale_balancer_controller_failures_total",
		"Attempts to watch a controller that ended in an error.", nil, nil)
	tablesDesc = prometheus.NewDesc("hostscale_balancer_controller_tables_total",
		"Tables received from controllers, by result: applied, stale (older than the table in force) or refused (invalid).",
		[]string{"result"}, nil)
	ackFailuresDesc = prometheus.NewDesc("hostscale_balancer_controller_ack_failures_total",
		"AckTable calls that failed.", nil, nil)
	statsReportsDesc = prometheus.NewDesc("hostscale_balancer_controller_stats_reports_total",
		"ReportStats calls: per-backend and per-pool counters sent to the controller (calls cut short by the end of their stream aside).", nil, nil)
	statsFailuresDesc = prometheus.NewDesc("hostscale_balancer_controller_stats_failures_total",
		"ReportStats calls that failed; they are not retried.", nil, nil)
)

var _ prometheus.Collector = (*Watcher)(nil)

// Describe implements prometheus.Collector.
func (w *Watcher) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{connectedDesc, streamsDesc, failuresDesc, tablesDesc, ackFailuresDesc,
		statsReportsDesc, statsFailuresDesc} {
		ch <- d
	}
}

// Collect implements prometheus.Collector from a Status snapshot.
func (w *Watcher) Collect(ch chan<- prometheus.Metric) {
	s := w.Status()
	for _, a := range w.cfg.Controllers {
		v := 0.0
		if a == s.Controller {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(connectedDesc, prometheus.GaugeValue, v, a)
	}
	ch <- prometheus.MustNewConstMetric(streamsDesc, prometheus.CounterValue, float64(s.Streams))
	ch <- prometheus.MustNewConstMetric(failuresDesc, prometheus.CounterValue, float64(s.Failures))
	ch <- prometheus.MustNewConstMetric(tablesDesc, prometheus.CounterValue, float64(s.Applied), "applied")
	ch <- prometheus.MustNewConstMetric(tablesDesc, prometheus.CounterValue, float64(s.Stale), "stale")
	ch <- prometheus.MustNewConstMetric(tablesDesc, prometheus.CounterValue, float64(s.Refused), "refused")
	ch <- prometheus.MustNewConstMetric(ackFailuresDesc, prometheus.CounterValue, float64(s.AckFailures))
	ch <- prometheus.MustNewConstMetric(statsReportsDesc, prometheus.CounterValue, float64(s.StatsReports))
	ch <- prometheus.MustNewConstMetric(statsFailuresDesc, prometheus.CounterValue, float64(s.StatsFailures))
}
