package lbstats

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/timestamppb"

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

func TestWindow_concurrencyIsTheRateOfRequestSeconds(t *testing.T) {
	s := New(time.Minute)
	f := func(v float64) *float64 { return &v }
	for i := range 11 {
		at := t0.Add(time.Duration(i) * time.Second)
		// lb1 holds 3 requests in flight at a:1, lb2 1.5 on average.
		s.Record("lb1", at, report(&pb.BackendCounters{Pool: "web", Address: "a:1", Requests: uint64(10 * i), InFlightSeconds: f(3 * float64(i))}))
		s.Record("lb2", at, report(&pb.BackendCounters{Pool: "web", Address: "a:1", Requests: uint64(10 * i), InFlightSeconds: f(1.5 * float64(i))}))
		// An older balancer measures no concurrency at b:1.
		s.Record("lb1", at, report(&pb.BackendCounters{Pool: "web", Address: "b:1", Requests: uint64(10 * i), InFlightSeconds: f(2 * float64(i))}))
		s.Record("old", at, report(&pb.BackendCounters{Pool: "web", Address: "b:1", Requests: uint64(10 * i)}))
	}
	u, _, _ := s.Window("web", t0.Add(10*time.Second), 5*time.Second)
	require.InDelta(t, 4.5, u["a:1"].Concurrency, 1e-9)
	require.False(t, u["a:1"].NoConcurrency)
	require.True(t, u["b:1"].NoConcurrency, "a balancer that does not measure it leaves it unknown")
	require.InDelta(t, 20, u["b:1"].RequestsPerSecond, 1e-9, "requests are still counted")

	// lb1's counters restart: only the part after the restart counts, even
	// when the request count alone would not show it.
	s.Record("lb1", t0.Add(11*time.Second), report(&pb.BackendCounters{Pool: "web", Address: "a:1", Requests: 500, InFlightSeconds: f(1)}))
	s.Record("lb1", t0.Add(12*time.Second), report(&pb.BackendCounters{Pool: "web", Address: "a:1", Requests: 510, InFlightSeconds: f(7)}))
	u, _, _ = s.Window("web", t0.Add(12*time.Second), 5*time.Second)
	require.InDelta(t, 6+1.5, u["a:1"].Concurrency, 1e-9)
}

func TestWindow_oneReportGivesNoRateAndOldSeriesAreForgotten(t *testing.T) {
	s := New(10 * time.Second)
	s.Record("lb1", t0, report(&pb.BackendCounters{Pool: "web", Address: "a:1", Requests: 5}))
	u, _, _ := s.Window("web", t0, 5*time.Second)
	require.Empty(t, u)
	s.Record("lb1", t0.Add(time.Minute), report(&pb.BackendCounters{Pool: "web", Address: "b:1", Requests: 5}))
	s.mu.Lock()
	require.Len(t, s.series, 1)
	require.Len(t, s.byPool["web"], 1, "the pool's index forgets them too")
	s.mu.Unlock()
}

func TestQuantile(t *testing.T) {
	bounds := []float64{0.1, 0.2, 0.4}
	require.InDelta(t, 0.1, Quantile(bounds, []uint64{100, 0, 0, 0}, 1), 1e-9)
	require.InDelta(t, 0.125, Quantile(bounds, []uint64{50, 100, 0, 0}, 0.5), 1e-9)
	require.InDelta(t, 0.4, Quantile(bounds, []uint64{0, 0, 0, 10}, 0.95), 1e-9)
	require.True(t, math.IsNaN(Quantile(bounds, []uint64{0, 0, 0, 0}, 0.95)))
}

func pools(ps ...*pb.PoolCounters) *pb.ReportStatsRequest {
	return &pb.ReportStatsRequest{Pools: ps}
}

func TestActivity_idleAndWaitingOverBalancers(t *testing.T) {
	const fresh = 5 * time.Second
	s := New(time.Minute)
	require.False(t, s.Activity("web", t0, fresh).Known, "no report: unknown")

	// lb1 routes web to a backend whose counter stops moving at t0+2s.
	for i := range 3 {
		s.Record("lb1", t0.Add(time.Duration(i)*time.Second), report(&pb.BackendCounters{Pool: "web", Address: "a:1", Requests: uint64(10 * i)}))
	}
	for i := 3; i <= 10; i++ {
		s.Record("lb1", t0.Add(time.Duration(i)*time.Second), report(&pb.BackendCounters{Pool: "web", Address: "a:1", Requests: 20}))
	}
	a := s.Activity("web", t0.Add(10*time.Second), fresh)
	require.True(t, a.Known)
	require.Equal(t, 8*time.Second, a.Idle, "idle since the last report whose counter moved")
	require.Zero(t, a.Waiting)

	// lb2 first reports web at t0+6s with nothing in flight: idle since.
	s.Record("lb2", t0.Add(6*time.Second), pools(&pb.PoolCounters{Pool: "web"}))
	a = s.Activity("web", t0.Add(10*time.Second), fresh)
	require.Equal(t, 4*time.Second, a.Idle, "the shortest idle of all balancers")

	// A request in flight (a long download, a websocket) is activity.
	s.Record("lb2", t0.Add(11*time.Second), report(&pb.BackendCounters{Pool: "web", Address: "a:1", Requests: 0, InFlight: 1}))
	require.Zero(t, s.Activity("web", t0.Add(11*time.Second), fresh).Idle)

	// lb1 stops reporting: it may be routing requests it cannot report.
	a = s.Activity("web", t0.Add(16*time.Second), fresh)
	require.False(t, a.Known)
	require.Zero(t, a.Idle)

	// Once the store has forgotten lb1 (Keep), lb2's word is enough.
	s.Record("lb2", t0.Add(80*time.Second), report(&pb.BackendCounters{Pool: "web", Address: "a:1", Requests: 0}))
	a = s.Activity("web", t0.Add(80*time.Second), fresh)
	require.True(t, a.Known)
	require.Equal(t, 69*time.Second, a.Idle)
}

// A balancer that left (ReportStatsRequest.leaving) is forgotten at once:
// its silence no longer makes the pool's activity unknown, and its
// counters stay for the windows.
func TestActivity_aBalancerThatLeftIsForgotten(t *testing.T) {
	const fresh = 5 * time.Second
	s := New(time.Hour)
	for i := range 3 {
		at := t0.Add(time.Duration(i) * time.Second)
		s.Record("lb1", at, report(&pb.BackendCounters{Pool: "web", Address: "a:1", Requests: uint64(10 * i)}))
		s.Record("lb2", at, pools(&pb.PoolCounters{Pool: "web"}))
	}
	a := s.Activity("web", t0.Add(20*time.Second), fresh)
	require.False(t, a.Known, "lb1 silent for 18s")

	s.Forget("lb1")
	s.Forget("lb9") // never reported: nothing to forget
	s.Record("lb2", t0.Add(20*time.Second), pools(&pb.PoolCounters{Pool: "web"}))
	a = s.Activity("web", t0.Add(20*time.Second), fresh)
	require.True(t, a.Known, "lb2's word is enough once lb1 left")
	require.Equal(t, 18*time.Second, a.Idle, "idle since lb1's last request, though lb2 never saw one")
	usage, _, _ := s.Window("web", t0.Add(2*time.Second), 2*time.Second)
	require.InDelta(t, 10, usage["a:1"].RequestsPerSecond, 1e-9, "lb1's counters stay")

	// The last balancer of a pool leaving leaves it unknown, as before
	// any report.
	s.Forget("lb2")
	require.False(t, s.Activity("web", t0.Add(21*time.Second), fresh).Known)
}

// A balancer silent for Lost is presumed gone: it no longer makes the
// pool's activity unknown, its last request still counts, and a report
// brings it back.
func TestActivity_aBalancerSilentForLostIsPresumedGone(t *testing.T) {
	const fresh = 5 * time.Second
	s := New(time.Hour)
	s.Lost = time.Minute
	for i := range 3 {
		at := t0.Add(time.Duration(i) * time.Second)
		s.Record("lb1", at, report(&pb.BackendCounters{Pool: "web", Address: "a:1", Requests: uint64(10 * i)}))
	}
	// lb1 showed requests until 2s, then went silent; lb2 reports on.
	for at := t0; at.Before(t0.Add(3 * time.Minute)); at = at.Add(time.Second) {
		s.Record("lb2", at, pools(&pb.PoolCounters{Pool: "web"}))
	}
	require.False(t, s.Activity("web", t0.Add(62*time.Second), fresh).Known, "lb1 silent for 60s: it may be routing requests")
	a := s.Activity("web", t0.Add(63*time.Second), fresh)
	require.True(t, a.Known, "lb1 silent for 61s is presumed gone")
	require.Equal(t, 61*time.Second, a.Idle, "idle since lb1's last request, though lb2 never saw one")

	// A report under the same name: it is waited for again.
	s.Record("lb1", t0.Add(70*time.Second), pools(&pb.PoolCounters{Pool: "web"}))
	require.True(t, s.Activity("web", t0.Add(70*time.Second), fresh).Known)
	require.False(t, s.Activity("web", t0.Add(80*time.Second), fresh).Known, "silent for 10s again")

	// A balancer that reports but no longer names the pool stays stale:
	// it is alive and may still route it.
	for at := t0.Add(81 * time.Second); at.Before(t0.Add(150 * time.Second)); at = at.Add(time.Second) {
		s.Record("lb1", at, pools(&pb.PoolCounters{Pool: "other"}))
	}
	require.False(t, s.Activity("web", t0.Add(149*time.Second), fresh).Known, "lb1 still reports")

	// Without Lost, a silent balancer is waited for as long as its reports
	// are kept.
	s.Lost = 0
	require.False(t, s.Activity("web", t0.Add(30*time.Minute), fresh).Known)
}

func TestActivity_requestsThatFoundNoBackendWakeThePool(t *testing.T) {
	const fresh = 5 * time.Second
	s := New(time.Minute)
	s.Record("lb1", t0, pools(&pb.PoolCounters{Pool: "web", Unserved: 7}))
	select {
	case <-s.Demand():
		t.Fatal("requests turned away before the store heard of the pool are not demand")
	default:
	}
	a := s.Activity("web", t0.Add(time.Second), fresh)
	require.Zero(t, a.Waiting)
	require.Equal(t, time.Second, a.Idle, "but they are activity")

	// A request held now.
	s.Record("lb1", t0.Add(2*time.Second), pools(&pb.PoolCounters{Pool: "web", Waiting: 1, Unserved: 8}))
	select {
	case <-s.Demand():
	default:
		t.Fatal("a held request is demand")
	}
	a = s.Activity("web", t0.Add(2*time.Second), fresh)
	require.Equal(t, uint64(1), a.Waiting, "held and turned away is one request")
	require.Zero(t, a.Idle)

	// Two more turned away between reports, none held now; another
	// balancer holds two.
	s.Record("lb1", t0.Add(3*time.Second), pools(&pb.PoolCounters{Pool: "web", Unserved: 10}))
	s.Record("lb2", t0.Add(3*time.Second), pools(&pb.PoolCounters{Pool: "web", Waiting: 2, Unserved: 2}))
	require.Equal(t, uint64(4), s.Activity("web", t0.Add(3*time.Second), fresh).Waiting)
	s.Record("lb1", t0.Add(7*time.Second), pools(&pb.PoolCounters{Pool: "web", Unserved: 10}))
	s.Record("lb2", t0.Add(7*time.Second), pools(&pb.PoolCounters{Pool: "web", Waiting: 2, Unserved: 2}))
	require.Equal(t, uint64(2), s.Activity("web", t0.Add(3*time.Second+fresh+time.Millisecond), fresh).Waiting,
		"turned-away requests count only within fresh")

	// The pool left lb1's table and came back: its counter restarted.
	s.Record("lb1", t0.Add(8*time.Second), pools(&pb.PoolCounters{Pool: "web", Unserved: 1}))
	s.Record("lb2", t0.Add(8*time.Second), pools(&pb.PoolCounters{Pool: "web", Unserved: 2}))
	require.Equal(t, uint64(1), s.Activity("web", t0.Add(8*time.Second), fresh).Waiting)
	require.Zero(t, s.Activity("other", t0.Add(8*time.Second), fresh).Waiting)

	s.Reset()
	require.False(t, s.Activity("web", t0.Add(8*time.Second), fresh).Known)
}

// A balancer restarted under the same name starts its counters again: its
// first report, even with the counts of the old process, shows a request.
func TestActivity_aRestartedBalancerStartsItsCountersAgain(t *testing.T) {
	const fresh = 5 * time.Second
	s := New(time.Hour)
	first, second := timestamppb.New(t0), timestamppb.New(t0.Add(20*time.Second))
	rep := func(started *timestamppb.Timestamp, requests uint64) *pb.ReportStatsRequest {
		r := report(&pb.BackendCounters{Pool: "web", Address: "a:1", Requests: requests})
		r.Started = started
		return r
	}
	s.Record("lb1", t0.Add(time.Second), rep(first, 0))
	s.Record("lb1", t0.Add(2*time.Second), rep(first, 1))
	s.Record("lb1", t0.Add(3*time.Second), rep(first, 1))
	require.Equal(t, 2*time.Second, s.Activity("web", t0.Add(4*time.Second), fresh).Idle)

	// The same count from a new process: one request since its start.
	s.Record("lb1", t0.Add(21*time.Second), rep(second, 1))
	require.Zero(t, s.Activity("web", t0.Add(21*time.Second), fresh).Idle)
	s.Record("lb1", t0.Add(22*time.Second), rep(second, 1))
	usage, _, _ := s.Window("web", t0.Add(22*time.Second), 5*time.Second)
	require.Zero(t, usage["a:1"].RequestsPerSecond, "no rate across the restart: the old points are gone")
	// Reports without a start (an older balancer) compare as before.
	s.Record("lb1", t0.Add(23*time.Second), report(&pb.BackendCounters{Pool: "web", Address: "a:1", Requests: 1}))
	require.Equal(t, 2*time.Second, s.Activity("web", t0.Add(23*time.Second), fresh).Idle)
}
