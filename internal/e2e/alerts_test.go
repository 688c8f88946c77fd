package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/hostscale/hostscale/internal/testcluster"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// TestAlerts_poolErrorRatio: a pool whose instance answers every other
// request with 503 raises a pool rule's alert on error_ratio, labelled
// with the pool and not a node; it resolves once the failures stop.
func TestAlerts_poolErrorRatio(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := newFleet(t, ctx, 1)
	f.createPool("web", 1, nil)
	f.waitRouted(f.settled("web", 1, 30*time.Second), 10*time.Second)
	_, err := pb.NewAlertServiceClient(f.leader().Conn()).CreateRule(ctx, &pb.CreateRuleRequest{Rule: &pb.AlertRule{
		Name: "web-errors", Kind: pb.AlertRuleKind_ALERT_RULE_KIND_POOL_THRESHOLD, Metric: "error_ratio", Op: ">", Threshold: 0.2,
		Window: durationpb.New(10 * time.Second), Selector: "pool=web", Severity: pb.Severity_SEVERITY_CRITICAL,
		Annotations: map[string]string{"summary": `{{ .Pool }} fails {{ printf "%.2f" .Value }} of its requests`},
	}})
	require.NoError(t, err)

	var failing atomic.Bool
	failing.Store(true)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		c := &http.Client{Timeout: 10 * time.Second}
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			url := "http://" + f.lbAddr + "/"
			if failing.Load() && i%2 == 1 {
				url += "?status=503"
			}
			if resp, err := c.Get(url); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	defer func() { close(stop); <-done }()

	alert := func(state pb.AlertState) *pb.Alert {
		var found *pb.Alert
		require.NoError(t, testcluster.Eventually(ctx, 45*time.Second, func(ctx context.Context) error {
			resp, err := pb.NewAlertServiceClient(f.leader().Conn()).ListAlerts(ctx, &pb.ListAlertsRequest{})
			if err != nil {
				return err
			}
			for _, a := range resp.Alerts {
				if a.Rule == "web-errors" && a.State == state {
					found = a
					return nil
				}
			}
			return fmt.Errorf("no %v web-errors alert in %v", state, resp.Alerts)
		}))
		return found
	}
	a := alert(pb.AlertState_ALERT_STATE_FIRING)
	require.Equal(t, "web", a.Pool)
	require.Empty(t, a.Node)
	require.Equal(t, "web", a.Labels["pool"])
	require.InDelta(t, 0.5, a.Value, 0.15)
	t.Logf("firing at %.2f: %s", a.Value, a.Annotations["summary"])

	// The same traffic, as GetTraffic shows it from a follower.
	tr, err := pb.NewPoolServiceClient(followerOf(f.cl, f.leader()).Conn()).GetTraffic(ctx, &pb.GetTrafficRequest{Pool: "web", Window: durationpb.New(10 * time.Second)})
	require.NoError(t, err)
	require.Len(t, tr.Pools, 1)
	web := tr.Pools[0]
	require.True(t, web.Covered)
	require.Greater(t, web.RequestRate, 10.0)
	require.InDelta(t, 0.5, web.ErrorRatio, 0.15)
	require.Positive(t, web.P95LatencyMs)
	require.Len(t, web.Backends, 1)
	ins := f.instances("web")
	require.Len(t, ins, 1)
	require.Equal(t, ins[0].Id, web.Backends[0].Instance)
	t.Logf("traffic: %.1f req/s, %.0f%% failing, p95 %.2f ms", web.RequestRate, 100*web.ErrorRatio, web.P95LatencyMs)

	failing.Store(false)
	a = alert(pb.AlertState_ALERT_STATE_RESOLVED)
	t.Logf("resolved at %.2f", a.Value)
	require.Less(t, a.Value, 0.2)
}
