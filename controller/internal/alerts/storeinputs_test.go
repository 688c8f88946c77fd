package alerts

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hostscale/hostscale/controller/internal/lbstats"
	"github.com/hostscale/hostscale/controller/internal/metricstore"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

func TestStoreInputs_readsNewestValueAndWindow(t *testing.T) {
	st := metricstore.New(10)
	for i, cpu := range []float64{95, 40, 97} {
		st.Add("n1", &pb.Sample{Time: timestamppb.New(t0.Add(time.Duration(i) * time.Second)), CpuPercent: cpu,
			Disks: []*pb.DiskUsage{{UsedPercent: 50}, {UsedPercent: 93}}})
	}
	in := &StoreInputs{Store: st, NodeList: []NodeInfo{{Name: "n1"}}, From: t0}
	v, at, ok := in.Value("n1", "cpu_percent")
	require.True(t, ok)
	require.Equal(t, 97.0, v)
	require.Equal(t, t0.Add(2*time.Second), at)
	v, _, _ = in.Value("n1", "disk_used_percent")
	require.Equal(t, 93.0, v, "the fullest mount")
	_, _, ok = in.Value("n1", "nope")
	require.False(t, ok)
	_, _, ok = in.Value("n2", "cpu_percent")
	require.False(t, ok)
	in.From = t0.Add(time.Minute)
	_, _, ok = in.Value("n1", "cpu_percent")
	require.False(t, ok, "nothing since From")

	w := in.Window("n1", "cpu_percent", t0.Add(time.Second))
	require.Equal(t, []Sample{{t0.Add(time.Second), 40}, {t0.Add(2 * time.Second), 97}}, w)

	in.Latest = func(node string) (time.Time, [metricstore.NumSeries]float64, bool) {
		var vs [metricstore.NumSeries]float64
		vs[metricstore.CPUPercent] = 12
		return t0, vs, node == "n1"
	}
	v, _, ok = in.Value("n1", "cpu_percent")
	require.True(t, ok)
	require.Equal(t, 12.0, v)

	// A dip in the window keeps a pending alert from firing.
	ev, err := NewEvaluator(DefaultConfig())
	require.NoError(t, err)
	in = &StoreInputs{Store: st, NodeList: []NodeInfo{{Name: "n1"}}, From: t0.Add(-time.Minute)}
	r := cpuRule()
	r.For = 2 * time.Second
	cur := map[Fingerprint]Alert{}
	Apply(cur, ev.Evaluate(t0, []Rule{r}, in, cur)...)
	require.Equal(t, []string{"pending->inactive/flapped"}, kinds(ev.Evaluate(t0.Add(2*time.Second), []Rule{r}, in, cur)))
}

func TestStoreInputs_poolTrafficFromTheBalancersReports(t *testing.T) {
	traffic := lbstats.New(11 * time.Minute)
	in := &StoreInputs{Traffic: traffic, TrafficFresh: 5 * time.Second}
	report := func(at time.Duration, requests, errors uint64, busy float64, counts ...uint64) {
		traffic.Record("lb1", t0.Add(at), &pb.ReportStatsRequest{BucketBounds: []float64{0.01, 0.1},
			Backends: []*pb.BackendCounters{{Pool: "web", Address: "127.0.0.1:1", Requests: requests, Errors: errors,
				InFlightSeconds: &busy, LatencyCounts: counts}},
			Pools: []*pb.PoolCounters{{Pool: "web"}, {Pool: "idle"}}})
		traffic.Record("lb1", t0.Add(at), &pb.ReportStatsRequest{Pools: []*pb.PoolCounters{{Pool: "idle"}}})
	}
	// 10 s of reports: 100 requests/s, 5 of them failing, 3 in flight,
	// 90 % under 10 ms and the rest under 100 ms.
	for i := range 11 {
		n := uint64(100 * i)
		report(time.Duration(i)*time.Second, n, n/20, 3*float64(i), n*9/10, n/10, 0)
	}
	now := t0.Add(10 * time.Second)
	get := func(pool, metric string, window time.Duration) (float64, bool) {
		return in.PoolTraffic(pool, metric, now, window)
	}
	_, ok := get("web", "request_rate", 20*time.Second)
	require.False(t, ok, "10 s of reports do not cover a 20 s window")
	for metric, want := range map[string]float64{"request_rate": 100, "error_rate": 5, "error_ratio": 0.05, "in_flight": 3,
		"p95_latency_ms": 10 + 90*0.5, "p99_latency_ms": 10 + 90*0.9} {
		v, ok := get("web", metric, 10*time.Second)
		require.True(t, ok, metric)
		require.InDelta(t, want, v, 1e-9, metric)
	}
	// A pool the balancer reports without traffic: no requests, no ratio.
	v, ok := get("idle", "request_rate", 10*time.Second)
	require.True(t, ok)
	require.Zero(t, v)
	v, ok = get("idle", "error_ratio", 10*time.Second)
	require.True(t, ok)
	require.True(t, math.IsNaN(v))
	// Reports older than TrafficFresh: no data.
	_, ok = in.PoolTraffic("web", "request_rate", now.Add(6*time.Second), 10*time.Second)
	require.False(t, ok)
	_, ok = get("web", "cpu_percent", 10*time.Second)
	require.False(t, ok)
	_, ok = (&StoreInputs{}).PoolTraffic("web", "request_rate", now, 10*time.Second)
	require.False(t, ok, "no traffic store")
}
