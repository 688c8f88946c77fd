package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/hostscale/hostscale/internal/testcluster"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// TestBench_scaleLatency measures, with every binary on loopback (three
// controllers, two agents, a balancer), the time from ScalePool(+1) to the
// new instance answering through the balancer, and from ScalePool(-1) to
// the removed instance's process exiting, under load that must see no
// failed request. Run by `make bench-instances` (HOSTSCALE_BENCH=1).
func TestBench_scaleLatency(t *testing.T) {
	if os.Getenv("HOSTSCALE_BENCH") == "" {
		t.Skip("a benchmark: HOSTSCALE_BENCH=1 (make bench-instances)")
	}
	const runs = 10
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	f := newFleet(t, ctx, 2)
	f.createPool("web", 1, nil)
	f.settled("web", 1, 30*time.Second)
	// Let the leader be old enough to know every balancer (see
	// server.balancerAckInterval), as in a cluster that has been up.
	time.Sleep(7 * time.Second)

	l := f.startLoad(2)
	defer l.end()
	c := &http.Client{Timeout: 5 * time.Second}
	var table, up, down []time.Duration
	for i := range runs {
		start := time.Now()
		_, err := f.pools().ScalePool(ctx, &pb.ScalePoolRequest{Pool: "web", Desired: 2})
		require.NoError(t, err)
		want := fmt.Sprintf("web-%d", i+2)
		require.NoError(t, testcluster.Eventually(ctx, 30*time.Second, func(context.Context) error {
			r, err := f.leader().Pools().ListInstances(ctx, &pb.ListInstancesRequest{Pool: "web"})
			if err != nil {
				return err
			}
			if f.balancerSees(r.Instances) != "" || len(r.Instances) != 2 {
				return fmt.Errorf("not in the balancer's table yet")
			}
			return nil
		}))
		table = append(table, time.Since(start))
		require.NoError(t, testcluster.Eventually(ctx, 30*time.Second, func(context.Context) error {
			resp, err := c.Get("http://" + f.lbAddr + "/")
			if err != nil {
				return err
			}
			resp.Body.Close()
			if got := resp.Header.Get("X-Instance"); got != want {
				return fmt.Errorf("answered by %s", got)
			}
			return nil
		}))
		up = append(up, time.Since(start))
		f.settled("web", 2, 30*time.Second)

		// Remove the older one (the scheduler removes the newest of equals:
		// make it the one to go by scaling the pool down).
		before := instanceProcs()
		start = time.Now()
		_, err = f.pools().ScalePool(ctx, &pb.ScalePoolRequest{Pool: "web", Desired: 1})
		require.NoError(t, err)
		require.NoError(t, testcluster.Eventually(ctx, 30*time.Second, func(context.Context) error {
			if n := len(instanceProcs()); n != len(before)-1 {
				return fmt.Errorf("%d instance processes", n)
			}
			return nil
		}))
		down = append(down, time.Since(start))
		f.settled("web", 1, 30*time.Second)
	}
	l.end()
	require.Zero(t, l.failed.Load(), "failed requests: %v", l.errs)
	med := func(d []time.Duration) time.Duration {
		d = slices.Clone(d)
		slices.Sort(d)
		return (d[len(d)/2-1] + d[len(d)/2]) / 2
	}
	t.Logf("ScalePool +1 to healthy and in the balancer's table: median %v, min %v, max %v (%d runs)",
		med(table).Round(time.Millisecond), slices.Min(table).Round(time.Millisecond), slices.Max(table).Round(time.Millisecond), runs)
	t.Logf("ScalePool +1 to the first request answered through the balancer (slow start 10s): median %v, min %v, max %v (%d runs)",
		med(up).Round(time.Millisecond), slices.Min(up).Round(time.Millisecond), slices.Max(up).Round(time.Millisecond), runs)
	t.Logf("ScalePool -1 to the process exited: median %v, min %v, max %v; %d requests, 0 failed",
		med(down).Round(time.Millisecond), slices.Min(down).Round(time.Millisecond), slices.Max(down).Round(time.Millisecond), l.ok.Load())
}

// TestBench_autoscaleReaction measures the time from a step of load
// (0 → 100 requests/s, target 20 per instance) to the first request a new
// instance answers through the balancer, with agents sampling every second
// and the autoscaler evaluating every 2s; five runs, each on a fresh pool.
// Run by `make bench-autoscale` (HOSTSCALE_BENCH=1).
func TestBench_autoscaleReaction(t *testing.T) {
	if os.Getenv("HOSTSCALE_BENCH") == "" {
		t.Skip("a benchmark: HOSTSCALE_BENCH=1 (make bench-autoscale)")
	}
	const runs = 5
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	f := newFleetArgs(t, ctx, 2, func(int) []string { return []string{"-interval", "1s"} })
	var took []time.Duration
	for i := range runs {
		name := fmt.Sprintf("run%d", i)
		pol := &pb.ScalingPolicy{Metric: pb.ScalingMetric_SCALING_METRIC_REQUESTS_PER_INSTANCE, Target: 20,
			EvaluationPeriod: durationpb.New(2 * time.Second), Window: durationpb.New(2 * time.Second),
			InitializationPeriod: durationpb.New(time.Second)}
		_, err := f.pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{
			Name: name, PathPrefix: "/", Selector: "tier=web", Min: 1, Max: 6, Desired: 1, Scaling: pol,
			Template: &pb.InstanceTemplate{Command: f.bin + "/hostscale-demo", HealthPath: "/healthz", HealthInterval: durationpb.New(200 * time.Millisecond)},
		}})
		require.NoError(t, err)
		ins := f.settled(name, 1, 30*time.Second)
		first := ins[0].Id
		// Past the leader's first window and the instance's initialization.
		require.NoError(t, testcluster.Eventually(ctx, 30*time.Second, func(ctx context.Context) error {
			r, err := f.pools().ListScaleEvents(ctx, &pb.ListScaleEventsRequest{Pool: name, PageSize: 1})
			if err != nil || len(r.Events) == 0 || r.Events[0].Ready != 1 || r.Events[0].LimitedBy == "warming-up" {
				return fmt.Errorf("not evaluated with a ready instance yet")
			}
			return nil
		}))
		l := f.startRateLoad(100)
		start := time.Now()
		require.NoError(t, testcluster.Eventually(ctx, 60*time.Second, func(context.Context) error {
			for id := range l.served() {
				if id != "" && id != first {
					return nil
				}
			}
			return fmt.Errorf("only %s answers", first)
		}))
		took = append(took, time.Since(start))
		l.end()
		require.Zero(t, l.failed.Load(), "failed requests: %v", l.errs)
		t.Logf("run %d: a new instance served %v after the load step", i, took[i].Round(time.Millisecond))
		_, err = f.pools().DeletePool(ctx, &pb.DeletePoolRequest{Pool: name})
		require.NoError(t, err)
		require.NoError(t, testcluster.Eventually(ctx, 30*time.Second, func(context.Context) error {
			if n := len(instanceProcs()); n != 0 {
				return fmt.Errorf("%d instances still run", n)
			}
			return nil
		}))
	}
	s := slices.Clone(took)
	slices.Sort(s)
	t.Logf("autoscale reaction, load step to a new instance serving: median %v, min %v, max %v (%d runs; 1s samples, 2s evaluations)",
		s[len(s)/2].Round(time.Millisecond), s[0].Round(time.Millisecond), s[len(s)-1].Round(time.Millisecond), runs)
}
