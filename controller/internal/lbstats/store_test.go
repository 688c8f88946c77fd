package lbstats

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func report(backends ...*pb.BackendCounters) *pb.ReportStatsRequest {
	return &pb.ReportStatsRequest{BucketBounds: []float64{0.01, 0.1}, Backends: backends}
}

func TestWindow_ratesSumOverBalancersAndSurviveRestarts(t *testing.T) {
	s := New(time.Minute)
	for i := range 11 {
		at := t0.Add(time.Duration(i) * time.Second)
		s.Record("lb1", at, report(&pb.BackendCounters{Pool: "web", Address: "a:1", Requests: uint64(100 * i), LatencyCounts: []uint64{uint64(90 * i), uint64(10 * i), 0}}))
		s.Record("lb2", at, report(&pb.BackendCounters{Pool: "web", Address: "a:1", Requests: uint64(50 * i), LatencyCounts: []uint64{uint64(50 * i), 0, 0}}))
		s.Record("lb1", at, report(&pb.BackendCounters{Pool: "other", Address: "b:1", Requests: uint64(7 * i)}))
	}
	u, bounds, hist := s.Window("web", t0.Add(10*time.Second), 5*time.Second)
	require.InDelta(t, 150, u["a:1"].RequestsPerSecond, 0.01)
	require.Len(t, u, 1)
	require.Equal(t, []float64{0.01, 0.1}, bounds)
	// Five seconds of both balancers: 450+250 fast, 50 slower.
	require.Equal(t, []uint64{700, 50, 0}, hist)
	require.InDelta(t, 0.01*375/700, Quantile(bounds, hist, 0.5), 1e-9)

	// lb1's counters restart (the backend left its table and came back).
	s.Record("lb1", t0.Add(11*time.Second), report(&pb.BackendCounters{Pool: "web", Address: "a:1", Requests: 10}))
	s.Record("lb1", t0.Add(12*time.Second), report(&pb.BackendCounters{Pool: "web", Address: "a:1", Requests: 30}))
	u, _, _ = s.Window("web", t0.Add(12*time.Second), 5*time.Second)
	require.InDelta(t, 20+50, u["a:1"].RequestsPerSecond, 0.01)
}

func TestWindow_oneReportGivesNoRateAndOldSeriesAreForgotten(t *testing.T) {
	s := New(10 * time.Second)
	s.Record("lb1", t0, report(&pb.BackendCounters{Pool: "web", Address: "a:1", Requests: 5}))
	u, _, _ := s.Window("web", t0, 5*time.Second)
	require.Empty(t, u)
	s.Record("lb1", t0.Add(time.Minute), report(&pb.BackendCounters{Pool: "web", Address: "b:1", Requests: 5}))
	s.mu.Lock()
	require.Len(t, s.series, 1)
	s.mu.Unlock()
}

func TestQuantile(t *testing.T) {
	bounds := []float64{0.1, 0.2, 0.4}
	require.InDelta(t, 0.1, Quantile(bounds, []uint64{100, 0, 0, 0}, 1), 1e-9)
	require.InDelta(t, 0.125, Quantile(bounds, []uint64{50, 100, 0, 0}, 0.5), 1e-9)
	require.InDelta(t, 0.4, Quantile(bounds, []uint64{0, 0, 0, 10}, 0.95), 1e-9)
	require.True(t, math.IsNaN(Quantile(bounds, []uint64{0, 0, 0, 0}, 0.95)))
}
