package endpoint

import (
	"context"
	"math"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostscale/hostscale/controller/internal/lbstats"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// Traffic windows: GetTrafficRequest.window.
const (
	defaultTrafficWindow = time.Minute
	minTrafficWindow     = time.Second
	maxTrafficWindow     = 10 * time.Minute
	// trafficFresh is how recent a balancer's report must be for the
	// traffic to count as covered, as for the autoscaler.
	trafficFresh = 5 * time.Second
)

// GetTraffic serves the balancers' traffic from the leader's lbstats.
func (s *Pools) GetTraffic(ctx context.Context, req *pb.GetTrafficRequest) (*pb.GetTrafficResponse, error) {
	if req.Pool != "" {
		if err := checkName("pool", req.Pool); err != nil {
			return nil, err
		}
	}
	window := defaultTrafficWindow
	if req.Window != nil {
		if err := req.Window.CheckValid(); err != nil {
			return nil, invalid("window", "not a valid duration")
		}
		window = req.Window.AsDuration()
		if window < minTrafficWindow || window > maxTrafficWindow {
			return nil, invalid("window", "must be between %v and %v, got %v", minTrafficWindow, maxTrafficWindow, window)
		}
	}
	resp := &pb.GetTrafficResponse{}
	if s.Leading == nil || s.Traffic == nil || !s.Leading() {
		return orNil(resp, s.Core.forward(ctx, req, resp))
	}
	now := time.Now()
	var names []string
	instances := map[string]string{} // by address, for the named pool
	s.Core.FSM.Read(func(st *pb.State) {
		for name := range st.Pools {
			if req.Pool == "" || name == req.Pool {
				names = append(names, name)
			}
		}
		if req.Pool != "" {
			for _, inst := range st.Instances {
				if inst.Pool == req.Pool && inst.Address != "" {
					instances[inst.Address] = inst.Id
				}
			}
		}
	})
	if req.Pool != "" && len(names) == 0 {
		return nil, status.Errorf(codes.NotFound, "pool %q not found", req.Pool)
	}
	slices.Sort(names)
	resp.Leader = s.Core.ID
	for _, name := range names {
		t, covered := s.Traffic.Totals(name, now, window, trafficFresh)
		pt := &pb.PoolTraffic{
			Pool: name, RequestRate: t.RequestsPerSecond, ErrorRate: t.ErrorsPerSecond, InFlight: t.Concurrency,
			Waiting: s.Traffic.Activity(name, now, trafficFresh).Waiting, Covered: covered,
			P50LatencyMs: quantileMs(t, 0.5), P95LatencyMs: quantileMs(t, 0.95), P99LatencyMs: quantileMs(t, 0.99),
		}
		if t.RequestsPerSecond > 0 {
			pt.ErrorRatio = t.ErrorsPerSecond / t.RequestsPerSecond
		}
		if req.Pool != "" {
			usage, _, _ := s.Traffic.Window(name, now, window)
			for addr, u := range usage {
				pt.Backends = append(pt.Backends, &pb.BackendTraffic{
					Address: addr, Instance: instances[addr],
					RequestRate: u.RequestsPerSecond, ErrorRate: u.ErrorsPerSecond, InFlight: u.Concurrency,
				})
			}
			slices.SortFunc(pt.Backends, func(a, b *pb.BackendTraffic) int {
				switch {
				case a.Address < b.Address:
					return -1
				case a.Address > b.Address:
					return 1
				}
				return 0
			})
		}
		resp.Pools = append(resp.Pools, pt)
	}
	return resp, nil
}

// quantileMs is a latency quantile of t's histogram in ms, 0 without a
// request.
func quantileMs(t lbstats.Totals, q float64) float64 {
	v := lbstats.Quantile(t.Bounds, t.Counts, q)
	if math.IsNaN(v) {
		return 0
	}
	return v * 1000
}
