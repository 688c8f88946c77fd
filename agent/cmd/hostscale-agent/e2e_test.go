package main

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/hostscale/hostscale/internal/testcluster"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// TestAgent_e2e_followsTheLeaderOfARealCluster runs the agent against a
// three-node hostscale-controller cluster: it lists a follower first, is
// redirected to the leader, and after the leader is killed it streams to
// the new one. It runs only with HOSTSCALE_SLOW=1 and in the go.work
// workspace, which holds the controller.
func TestAgent_e2e_followsTheLeaderOfARealCluster(t *testing.T) {
	if os.Getenv("HOSTSCALE_SLOW") != "1" {
		t.Skip("set HOSTSCALE_SLOW=1 to run against a real controller cluster")
	}
	ctrl := filepath.Join(t.TempDir(), "hostscale-controller")
	out, err := exec.Command("go", "build", "-o", ctrl, "github.com/hostscale/hostscale/controller/cmd/hostscale-controller").CombinedOutput()
	require.NoError(t, err, "build controller: %s", out)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl := testcluster.Start(t, testcluster.Options{
		Launcher: testcluster.BinaryLauncher{Path: ctrl},
		Args:     []string{"-heartbeat-ttl", "2s"},
	})
	leader, _, err := cl.WaitLeader(ctx, 30*time.Second)
	require.NoError(t, err)
	var addrs []string
	for _, n := range cl.Nodes() {
		if n != leader {
			addrs = append(addrs, n.GRPCAddr)
		}
	}
	addrs = append(addrs, leader.GRPCAddr) // a follower first: it redirects

	p := start(t, "-controllers", strings.Join(addrs, ","), "-interval", "200ms", "-node-id", "e2e-1", "-labels", "zone=a",
		"-data-dir", t.TempDir(), "-http-addr", "127.0.0.1:0", "-log-level", "debug")

	streamsTo := func(leader *testcluster.Node, since time.Time) func() bool {
		return func() bool {
			r, err := leader.Nodes().GetNode(ctx, &pb.GetNodeRequest{Node: "e2e-1"})
			if err != nil {
				return false
			}
			n := r.GetNode()
			return n.GetController() == leader.ID && n.GetStatus() == pb.NodeStatus_NODE_STATUS_UP &&
				n.GetLatest().GetTime().AsTime().After(since)
		}
	}
	require.Eventually(t, streamsTo(leader, time.Now()), 30*time.Second, 100*time.Millisecond)
	r, err := leader.Nodes().GetNode(ctx, &pb.GetNodeRequest{Node: "e2e-1"})
	require.NoError(t, err)
	require.Equal(t, map[string]string{"zone": "a"}, r.GetNode().GetLabels())
	require.NotEmpty(t, r.GetNode().GetFacts().GetHostname())
	require.Eventually(t, func() bool {
		q, err := leader.Metrics().QueryMetrics(ctx, &pb.QueryMetricsRequest{
			Metric: "memory_used_percent", Node: "e2e-1", Window: durationpb.New(time.Minute)})
		return err == nil && len(q.GetPoints()) >= 5 && q.GetMax() > 0
	}, 30*time.Second, 100*time.Millisecond)

	leader.Kill()
	killed := time.Now()
	next, _, err := cl.WaitLeader(ctx, 30*time.Second)
	require.NoError(t, err)
	require.Eventually(t, streamsTo(next, killed), 30*time.Second, 100*time.Millisecond)
	require.Eventually(t, func() bool {
		code, _ := get(t, "http://"+p.addr()+"/readyz")
		return code == http.StatusOK
	}, 10*time.Second, 50*time.Millisecond)
	t.Logf("moved to the new leader %s %s after the kill", next.ID, time.Since(killed).Round(time.Millisecond))
	require.Equal(t, 0, p.stop(t))
	require.NotContains(t, p.log(), "level=ERROR", "the controllers took everything the agent sent")
	require.Contains(t, p.log(), "redirected to the leader")
}
