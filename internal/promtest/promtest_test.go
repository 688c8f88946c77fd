package promtest

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
)

func TestFindAndValue(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	calls := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "calls_total", Help: "calls"}, []string{"method", "code"})
	open := prometheus.NewGauge(prometheus.GaugeOpts{Name: "open", Help: "open"})
	reg.MustRegister(calls, open)
	calls.WithLabelValues("a", "OK").Add(3)
	calls.WithLabelValues("a", "Internal").Inc()
	calls.WithLabelValues("b", "OK").Add(5)
	open.Set(7)

	require.Equal(t, 3.0, Get(t, reg, "calls_total", map[string]string{"method": "a", "code": "OK"}))
	require.Equal(t, 1.0, Get(t, reg, "calls_total", map[string]string{"method": "a", "code": "Internal"}))
	require.Equal(t, 5.0, Get(t, reg, "calls_total", map[string]string{"method": "b"}))
	require.NotNil(t, Find(t, reg, "calls_total", nil), "any series")
	require.Nil(t, Find(t, reg, "calls_total", map[string]string{"method": "c"}))
	require.Nil(t, Find(t, reg, "absent", nil))
	require.Zero(t, Value(nil))
	require.Equal(t, 7.0, Get(t, reg, "open", nil))
}
