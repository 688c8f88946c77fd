package server

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hostscale/hostscale/controller/internal/agents"
	"github.com/hostscale/hostscale/controller/internal/autoscale"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// An instance's samples from its initialization period never count on
// instance CPU, even where the window reaches back into it: the tail of a
// boot spike is not averaged. Just past the period, with no sample of its
// own yet, the instance is not counted ready.
func TestAutoscaler_input_instanceCPUSkipsTheInitializationPeriod(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	hub := agents.NewHub(600)
	a := &autoscaler{s: &Server{hub: hub}, start: t0}
	pol := autoscale.Defaults(&pb.ScalingPolicy{
		Metric: pb.ScalingMetric_SCALING_METRIC_INSTANCE_CPU, Target: 40,
		Window: durationpb.New(3 * time.Second), InitializationPeriod: durationpb.New(6 * time.Second),
	})
	// web-1 has served since t0 at 30 %. web-2 turned healthy at t0+20s,
	// burnt a core for 4s (a boot spike), then ran at 30 %.
	for ms := 0; ms <= 40_000; ms += 200 {
		at := t0.Add(time.Duration(ms) * time.Millisecond)
		hub.Instances.Add("web-1", &pb.Sample{Time: timestamppb.New(at), CpuPercent: 30})
		if ms >= 20_000 {
			cpu := 30.0
			if ms < 24_000 {
				cpu = 100
			}
			hub.Instances.Add("web-2", &pb.Sample{Time: timestamppb.New(at), CpuPercent: cpu})
		}
	}
	healthy := func(id string, since time.Time) *pb.Instance {
		return &pb.Instance{Id: id, Pool: "web", Node: "host-a", State: pb.InstanceState_INSTANCE_STATE_HEALTHY, Since: timestamppb.New(since)}
	}
	in := poolInputs{
		pool:      &pb.Pool{Name: "web", Min: 1, Max: 6, Desired: 2},
		policy:    pol,
		instances: []*pb.Instance{healthy("web-1", t0), healthy("web-2", t0.Add(20*time.Second))},
	}

	// Inside web-2's initialization period: counted, not averaged.
	ai := a.input(in, t0.Add(25*time.Second))
	require.Equal(t, uint32(2), ai.Current)
	require.Equal(t, uint32(1), ai.Ready)
	require.Equal(t, map[string]float64{"web-1": 30}, ai.Values)

	// The period ended at t0+26s; the 3s window ending at t0+26.5s reaches
	// back to t0+23.5s, into the spike; only the samples after t0+26s count.
	ai = a.input(in, t0.Add(26500*time.Millisecond))
	require.Equal(t, uint32(2), ai.Ready)
	require.Equal(t, 30.0, ai.Values["web-2"])
	require.False(t, ai.Stale)

	// Later, the whole window is past the period.
	ai = a.input(in, t0.Add(35*time.Second))
	require.Equal(t, map[string]float64{"web-1": 30, "web-2": 30}, ai.Values)

	// An instance whose period ended after the newest sample (t0+40s) is
	// not ready yet and makes nothing stale.
	in.instances[1] = healthy("web-2", t0.Add(40100*time.Millisecond).Add(-6*time.Second))
	ai = a.input(in, t0.Add(40100*time.Millisecond))
	require.Equal(t, uint32(1), ai.Ready, "no sample of web-2 since its period ended")
	require.Equal(t, map[string]float64{"web-1": 30}, ai.Values)
	require.False(t, ai.Stale)
}
