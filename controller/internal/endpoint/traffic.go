package endpoint

import (
	"cmp"
	"context"
	"math"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
			ErrorRatio:   orZero(t.ErrorRatio()),
			P50LatencyMs: orZero(t.LatencyMs(0.5)), P95LatencyMs: orZero(t.LatencyMs(0.95)), P99LatencyMs: orZero(t.LatencyMs(0.99)),
		}
		if req.Pool != "" {
			usage, _, _ := s.Traffic.Window(name, now, window)
			for addr, u := range usage {
				pt.Backends = append(pt.Backends, &pb.BackendTraffic{
					Address: addr, Instance: instances[addr],
					RequestRate: u.RequestsPerSecond, ErrorRate: u.ErrorsPerSecond, InFlight: u.Concurrency,
				})
			}
			slices.SortFunc(pt.Backends, func(a, b *pb.BackendTraffic) int { return cmp.Compare(a.Address, b.Address) })
		}
		resp.Pools = append(resp.Pools, pt)
	}
	return resp, nil
}

// orZero is v, or 0 for NaN (a window without requests).
func orZero(v float64) float64 {
	if math.IsNaN(v) {
		return 0
	}
	return v
}

// GetUnplaced serves the pools the leader's scheduler found no node for.
func (s *Pools) GetUnplaced(ctx context.Context, req *pb.GetUnplacedRequest) (*pb.GetUnplacedResponse, error) {
	if req.Pool != "" {
		if err := checkName("pool", req.Pool); err != nil {
			return nil, err
		}
	}
	resp := &pb.GetUnplacedResponse{}
	if s.Leading == nil || s.Unplaced == nil || !s.Leading() {
		return orNil(resp, s.Core.forward(ctx, req, resp))
	}
	if req.Pool != "" {
		if p, _ := s.pool(req.Pool); p == nil {
			return nil, status.Errorf(codes.NotFound, "pool %q not found", req.Pool)
		}
	}
	resp.Pools = s.Unplaced(req.Pool)
	return resp, nil
}
