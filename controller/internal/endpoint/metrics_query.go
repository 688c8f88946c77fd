package endpoint

import (
	"context"
	"math"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hostscale/hostscale/controller/internal/agents"
	"github.com/hostscale/hostscale/controller/internal/metricstore"
	"github.com/hostscale/hostscale/internal/labels"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// Metrics serves hostscale.v1.MetricsService from the leader's sample
// windows; followers forward.
type MetricsQueries struct {
	pb.UnimplementedMetricsServiceServer
	Core    *Core
	Hub     *agents.Hub
	Leading func() bool
	// Window is how much history the store keeps at most.
	Window time.Duration
	Now    func() time.Time
}

var _ pb.MetricsServiceServer = (*MetricsQueries)(nil)

const (
	defaultQueryWindow = 5 * time.Minute
	defaultQueryStep   = 10 * time.Second
	maxQueryPoints     = 11000
)

func (s *MetricsQueries) QueryMetrics(ctx context.Context, req *pb.QueryMetricsRequest) (*pb.QueryMetricsResponse, error) {
	series, ok := metricstore.SeriesIndex(req.Metric)
	if !ok {
		return nil, invalid("metric", "unknown series %q; one of %s", req.Metric, strings.Join(metricstore.SeriesNames[:], ", "))
	}
	if req.Node != "" && req.Selector != "" {
		return nil, invalid("selector", "give a node or a selector, not both")
	}
	if req.Node != "" {
		if err := checkName("node", req.Node); err != nil {
			return nil, err
		}
	}
	sel, err := labels.Parse(req.Selector)
	if err != nil {
		return nil, invalid("selector", "%v", err)
	}
	window := defaultQueryWindow
	if req.Window != nil {
		if err := req.Window.CheckValid(); err != nil || req.Window.AsDuration() <= 0 {
			return nil, invalid("window", "must be a positive duration")
		}
		window = min(req.Window.AsDuration(), s.Window)
	}
	step := defaultQueryStep
	if req.Step != nil {
		if err := req.Step.CheckValid(); err != nil || req.Step.AsDuration() < time.Second {
			return nil, invalid("step", "must be at least 1s")
		}
		step = req.Step.AsDuration()
	}
	agg := req.Aggregate
	switch agg {
	case pb.Aggregate_AGGREGATE_UNSPECIFIED:
		agg = pb.Aggregate_AGGREGATE_AVG
	case pb.Aggregate_AGGREGATE_AVG, pb.Aggregate_AGGREGATE_MAX, pb.Aggregate_AGGREGATE_P95:
	default:
		return nil, invalid("aggregate", "unknown aggregate %d", agg)
	}
	resp := &pb.QueryMetricsResponse{Metric: req.Metric}
	if !s.Leading() {
		return orNil(resp, s.Core.forward(ctx, req, resp))
	}
	now := time.Now()
	if s.Now != nil {
		now = s.Now()
	}
	from := now.Add(-window)

	var nodes []string
	s.Core.FSM.Read(func(st *pb.State) {
		for name, n := range st.Nodes {
			if (req.Node != "" && name == req.Node) || (req.Node == "" && sel.Matches(n.Labels)) {
				nodes = append(nodes, name)
			}
		}
	})
	if req.Node != "" && len(nodes) == 0 {
		return nil, status.Errorf(codes.NotFound, "node %q not found", req.Node)
	}
	slices.Sort(nodes)

	var all []float64
	if req.Node != "" {
		for _, p := range s.Hub.Store.Series(req.Node, series, from) {
			resp.Points = append(resp.Points, &pb.MetricPoint{Time: timestamppb.New(p.Time), Value: p.Value})
			all = append(all, p.Value)
		}
		if len(all) > 0 {
			resp.Nodes = nodes
		}
	} else {
		if int(window/step) > maxQueryPoints {
			return nil, invalid("step", "window/step gives more than %d points", maxQueryPoints)
		}
		// Each node's mean per step, then combined across nodes.
		buckets := make([][]float64, int(window/step)+1)
		for _, n := range nodes {
			sums := make([]float64, len(buckets))
			counts := make([]int, len(buckets))
			for _, p := range s.Hub.Store.Series(n, series, from) {
				b := int(p.Time.Sub(from) / step)
				if b >= 0 && b < len(buckets) {
					sums[b] += p.Value
					counts[b]++
				}
			}
			contributed := false
			for b := range buckets {
				if counts[b] > 0 {
					buckets[b] = append(buckets[b], sums[b]/float64(counts[b]))
					contributed = true
				}
			}
			if contributed {
				resp.Nodes = append(resp.Nodes, n)
			}
		}
		for b, vs := range buckets {
			if len(vs) == 0 {
				continue
			}
			v := combine(agg, vs)
			resp.Points = append(resp.Points, &pb.MetricPoint{Time: timestamppb.New(from.Add(time.Duration(b) * step)), Value: v})
			all = append(all, v)
		}
	}
	if len(all) > 0 {
		resp.Avg = combine(pb.Aggregate_AGGREGATE_AVG, all)
		resp.Max = combine(pb.Aggregate_AGGREGATE_MAX, all)
		resp.P95 = combine(pb.Aggregate_AGGREGATE_P95, all)
	}
	return resp, nil
}

func combine(agg pb.Aggregate, vs []float64) float64 {
	switch agg {
	case pb.Aggregate_AGGREGATE_MAX:
		m := math.Inf(-1)
		for _, v := range vs {
			m = math.Max(m, v)
		}
		return m
	case pb.Aggregate_AGGREGATE_P95:
		return metricstore.Quantile(slices.Clone(vs), 0.95)
	default:
		sum := 0.0
		for _, v := range vs {
			sum += v
		}
		return sum / float64(len(vs))
	}
}
