package lbstats

import (
	"fmt"
	"testing"
	"time"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// BenchmarkTotals_1000Pools is one pass over every pool of a fleet of
// 1,000 pools of 3 backends behind 2 balancers, 60 reports each: what a
// pool alert rule or GetTraffic reads in one round.
func BenchmarkTotals_1000Pools(b *testing.B) {
	s := New(11 * time.Minute)
	const pools, backends, reports = 1000, 3, 60
	for r := range reports {
		at := t0.Add(time.Duration(r) * time.Second)
		for _, lb := range []string{"lb1", "lb2"} {
			req := &pb.ReportStatsRequest{BucketBounds: []float64{0.01, 0.1}}
			for p := range pools {
				name := fmt.Sprintf("pool-%d", p)
				req.Pools = append(req.Pools, &pb.PoolCounters{Pool: name})
				for k := range backends {
					busy := float64(r)
					req.Backends = append(req.Backends, &pb.BackendCounters{Pool: name, Address: fmt.Sprintf("10.0.%d.%d:80", p/250, k),
						Requests: uint64(10 * r), Errors: uint64(r), InFlightSeconds: &busy, LatencyCounts: []uint64{uint64(r), 0, 0}})
				}
			}
			s.Record(lb, at, req)
		}
	}
	now := t0.Add(reports * time.Second)
	b.ResetTimer()
	for b.Loop() {
		for p := range pools {
			if _, ok := s.Totals(fmt.Sprintf("pool-%d", p), now, 30*time.Second, 5*time.Second); !ok {
				b.Fatal("not covered")
			}
		}
	}
}
