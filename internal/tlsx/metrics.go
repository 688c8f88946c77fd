package tlsx

import "github.com/prometheus/client_golang/prometheus"

var descNotAfter = prometheus.NewDesc("hostscale_tls_certificate_not_after_timestamp_seconds",
	"When this process's -tls-cert in force expires (Unix time); a SIGHUP that loads a new one moves it.", []string{"cert"}, nil)

// Collector exports when id's certificate in force expires, so that an
// alert can fire before a rotation is missed.
func Collector(id *Identity) prometheus.Collector { return identityCollector{id} }

type identityCollector struct{ id *Identity }

func (identityCollector) Describe(chan<- *prometheus.Desc) {}

func (c identityCollector) Collect(ch chan<- prometheus.Metric) {
	if t := c.id.NotAfter(); !t.IsZero() {
		ch <- prometheus.MustNewConstMetric(descNotAfter, prometheus.GaugeValue, float64(t.Unix()), c.id.files.Cert)
	}
}
