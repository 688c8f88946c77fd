package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/hostscale/hostscale/internal/testcluster"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// e2eTTL is the controllers' heartbeat TTL in the end-to-end test.
const e2eTTL = 3 * time.Second

// cpuTime is the user+system CPU time a process has used.
func cpuTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	require.NoError(t, err)
	// Fields after the command name (which is in parentheses).
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}

// TestAgent_e2e_realBinariesAgainstARealCluster runs three hostscale-agent
// processes against a three-node hostscale-controller cluster (real
// processes, real sockets, Raft on disk) and checks what an operator
// relies on: fresh metrics everywhere within 2s of an agent's start, every
// agent on the new leader within 5s of a leader's death without crashing
// or spinning, and a dead agent marked down after the TTL (±1s) and up
// again, under the same id, when it returns.
func TestAgent_e2e_realBinariesAgainstARealCluster(t *testing.T) {
	ctrl := testcluster.BuildController(t)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cl := testcluster.Start(t, testcluster.Options{
		Launcher: testcluster.BinaryLauncher{Path: ctrl},
		Args:     []string{"-heartbeat-ttl", e2eTTL.String()},
	})
	leader, _, err := cl.WaitLeader(ctx, 30*time.Second)
	require.NoError(t, err)
	var addrs []string
	for _, n := range cl.Nodes() {
		if n != leader {
			addrs = append(addrs, n.GRPCAddr)
		}
	}
	addrs = append(addrs, leader.GRPCAddr) // followers first: they redirect
	controllers := strings.Join(addrs, ",")

	type agent struct {
		id, dataDir string
		p           *proc
		started     time.Time
	}
	var agents []*agent
	for i := range 3 {
		a := &agent{id: fmt.Sprintf("web-%d", i), dataDir: t.TempDir(), started: time.Now()}
		a.p = start(t, "-controllers", controllers, "-interval", "200ms", "-node-id", a.id, "-labels", "tier=web",
			"-data-dir", a.dataDir, "-http-addr", "127.0.0.1:0", "-log-level", "debug")
		agents = append(agents, a)
	}

	// fresh reports whether every controller lists the node up, on the
	// given leader, with a sample newer than since.
	fresh := func(name, on string, since time.Time) error {
		for _, n := range cl.Running() {
			r, err := n.Nodes().GetNode(ctx, &pb.GetNodeRequest{Node: name})
			if err != nil {
				return fmt.Errorf("%s: %w", n.ID, err)
			}
			nd := r.Node
			if nd.Status != pb.NodeStatus_NODE_STATUS_UP || nd.Controller != on || !nd.Latest.GetTime().AsTime().After(since) {
				return fmt.Errorf("%s sees %s %v on %q, latest %v", n.ID, name, nd.Status, nd.Controller, nd.Latest.GetTime().AsTime())
			}
		}
		return nil
	}
	for _, a := range agents {
		require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(context.Context) error { return fresh(a.id, leader.ID, a.started) }))
		took := time.Since(a.started)
		t.Logf("%s listed with fresh metrics on every controller %v after its start", a.id, took.Round(time.Millisecond))
		require.Less(t, took, 2*time.Second+200*time.Millisecond*time.Duration(len(agents)), "within 2s of its start (checks run one agent after another)")
	}
	q, err := leader.Metrics().QueryMetrics(ctx, &pb.QueryMetricsRequest{Metric: "memory_used_percent", Selector: "tier=web", Window: durationpb.New(time.Minute), Step: durationpb.New(time.Second)})
	require.NoError(t, err)
	require.Len(t, q.Nodes, 3)
	require.Greater(t, q.Max, 0.0)

	// Kill the leader: every agent streams to the new one within 5s, and
	// none crashes or spins while it looks for it.
	cpuBefore := map[string]time.Duration{}
	for _, a := range agents {
		cpuBefore[a.id] = cpuTime(t, a.p.cmd.Process.Pid)
	}
	leader.Kill()
	killed := time.Now()
	next, _, err := cl.WaitLeader(ctx, 10*time.Second)
	require.NoError(t, err)
	for _, a := range agents {
		require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(context.Context) error { return fresh(a.id, next.ID, killed) }))
	}
	moved := time.Since(killed)
	t.Logf("every agent streams to the new leader %s %v after the kill", next.ID, moved.Round(time.Millisecond))
	require.Less(t, moved, 5*time.Second)
	for _, a := range agents {
		select {
		case <-a.p.done:
			t.Fatalf("agent %s exited:\n%s", a.id, a.p.log())
		default:
		}
		used := cpuTime(t, a.p.cmd.Process.Pid) - cpuBefore[a.id]
		t.Logf("%s used %v of CPU over the %v of failover", a.id, used, moved.Round(time.Millisecond))
		require.Less(t, used, moved/4, "an agent looking for the leader does not spin")
	}
	leader.Restart()

	// Kill an agent: down after the TTL, within a second, on every
	// controller; restart it without -node-id: up again, same id.
	victim := agents[0]
	require.NoError(t, victim.p.cmd.Process.Kill())
	<-victim.p.done
	died := time.Now()
	for _, n := range cl.Running() {
		require.NoError(t, testcluster.Eventually(ctx, 3*e2eTTL, func(ctx context.Context) error {
			r, err := n.Nodes().GetNode(ctx, &pb.GetNodeRequest{Node: victim.id})
			if err == nil && r.Node.Status != pb.NodeStatus_NODE_STATUS_DOWN {
				err = fmt.Errorf("%s sees %s %v", n.ID, victim.id, r.Node.Status)
			}
			return err
		}))
	}
	down := time.Since(died)
	t.Logf("%s down on every controller %v after it was killed (ttl %v)", victim.id, down.Round(time.Millisecond), e2eTTL)
	require.InDelta(t, e2eTTL.Seconds(), down.Seconds(), 1.0)
	for _, a := range agents[1:] {
		require.NoError(t, fresh(a.id, next.ID, died), "the other agents stay up")
	}

	restarted := time.Now()
	start(t, "-controllers", controllers, "-interval", "200ms", "-data-dir", victim.dataDir, "-http-addr", "127.0.0.1:0")
	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(context.Context) error { return fresh(victim.id, next.ID, restarted) }))
	t.Logf("%s up again under the same id %v after its restart", victim.id, time.Since(restarted).Round(time.Millisecond))
	for _, a := range agents[1:] {
		require.Equal(t, 0, a.p.stop(t))
		require.NotContains(t, a.p.log(), "level=ERROR", "the controllers took everything the agent sent")
	}
	require.Contains(t, agents[1].p.log()+agents[2].p.log(), "redirected to the leader")
}
