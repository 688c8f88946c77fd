package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hostscale/hostscale/internal/testcluster"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// TestAgent_leaderCutOffSilently: the leader's host drops every packet
// (no reset, no close: a pulled cable), with the default timings of both
// binaries. The agent, on a host of its own, must notice by itself that
// its stream is dead and move to the new leader before that leader's
// heartbeat TTL runs out: the node stays up in the majority's view
// throughout, and its stream reaches the new leader.
func TestAgent_leaderCutOffSilently(t *testing.T) {
	ctrl := testcluster.BuildController(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	nt := testcluster.NewNet(t, 4) // three controllers, then the agent's host
	cl, leader := testcluster.StartLed(ctx, t, testcluster.Options{Launcher: testcluster.BinaryLauncher{Path: ctrl}, Net: nt}, 30*time.Second)
	var addrs []string
	for _, n := range cl.Nodes() {
		addrs = append(addrs, n.GRPCAddr)
	}
	host := nt.Hosts()[3]
	startCmd(t, host.Command(binary, "-controllers", strings.Join(addrs, ","), "-node-id", "web-1",
		"-data-dir", t.TempDir(), "-http-addr", "127.0.0.1:0", "-log-level", "debug"))

	node := func(n *testcluster.Node) (*pb.Node, error) {
		r, err := n.Nodes().GetNode(ctx, &pb.GetNodeRequest{Node: "web-1"})
		if err != nil {
			return nil, err
		}
		return r.Node, nil
	}
	require.NoError(t, testcluster.Eventually(ctx, 15*time.Second, func(context.Context) error {
		nd, err := node(leader)
		if err != nil {
			return err
		}
		if nd.Status != pb.NodeStatus_NODE_STATUS_UP || nd.Controller != leader.ID {
			return fmt.Errorf("web-1 is %v on %q", nd.Status, nd.Controller)
		}
		return nil
	}))

	nt.Isolate(leader.Host)
	cut := time.Now()
	var majority []*testcluster.Node
	for _, n := range cl.Nodes() {
		if n != leader {
			majority = append(majority, n)
		}
	}
	// For 15 s (past the TTL counted from the new leader's election), the
	// majority never sees the node down, and the agent reaches the new
	// leader.
	var moved time.Duration
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for time.Since(cut) < 15*time.Second {
		<-tick.C
		for _, n := range majority {
			nd, err := node(n)
			if err != nil {
				continue // no leader yet to ask for the live fields
			}
			require.NotEqual(t, pb.NodeStatus_NODE_STATUS_DOWN, nd.Status, "%s sees web-1 down %v after the cut", n.ID, time.Since(cut).Round(time.Millisecond))
			if moved == 0 && nd.Controller != "" && nd.Controller != leader.ID && nd.Status == pb.NodeStatus_NODE_STATUS_UP {
				moved = time.Since(cut)
				t.Logf("web-1 streams to %s %v after the cut", nd.Controller, moved.Round(time.Millisecond))
			}
		}
	}
	require.NotZero(t, moved, "the agent never reached the new leader")
}

// TestAgent_stalledDataDirKeepsTheNodeUp: the agent's -data-dir is on a
// StallDisk, which stalls; then the leader assigns it an instance. The
// agent cannot save the assignment while the disk holds its write, but
// its stream goes on: for twice the heartbeat TTL every check finds the
// node up on the leader with fresh samples and the instance reported, and
// the agent's /readyz says its disk is stalled. Once the disk answers, the
// assignment is saved and the agent is ready again.
// stallRig starts three controllers and an agent, web-1, whose -data-dir
// is on a StallDisk, and returns once the node is up and the agent saved
// its first assignments (none). node reads web-1 on the leader.
func stallRig(ctx context.Context, t *testing.T) (disk *testcluster.StallDisk, leader *testcluster.Node, agent *proc, node func() (*pb.Node, error)) {
	ctrl := testcluster.BuildController(t)
	disk = testcluster.NewStallDisk(t) // before the agent: unmounted after it stopped
	cl, leader := testcluster.StartLed(ctx, t, testcluster.Options{
		Launcher: testcluster.BinaryLauncher{Path: ctrl},
		Args:     []string{"-heartbeat-ttl", e2eTTL.String()},
	}, 30*time.Second)
	var addrs []string
	for _, n := range cl.Nodes() {
		addrs = append(addrs, n.GRPCAddr)
	}
	agent = start(t, "-controllers", strings.Join(addrs, ","), "-interval", "200ms", "-node-id", "web-1", "-labels", "tier=web",
		"-data-dir", disk.Dir, "-http-addr", "127.0.0.1:0", "-stop-instances-on-exit", "-log-level", "debug",
		"-disk-pressure-free", "0", "-memory-pressure-free", "0", "-pressure-transition", "1s")
	t.Cleanup(func() {
		// The disk answers, and the agent stops the instance as it exits:
		// nothing is left using the disk when it unmounts.
		disk.Resume()
		agent.stop(t)
	})
	node = func() (*pb.Node, error) {
		r, err := leader.Nodes().GetNode(ctx, &pb.GetNodeRequest{Node: "web-1"})
		return r.GetNode(), err
	}
	require.NoError(t, testcluster.Eventually(ctx, 15*time.Second, func(context.Context) error {
		nd, err := node()
		if err != nil {
			return err
		}
		if nd.Status != pb.NodeStatus_NODE_STATUS_UP {
			return fmt.Errorf("web-1 is %v", nd.Status)
		}
		// The first assignments (none) are saved: a stall after this
		// holds the write of the next.
		var st struct{ Term uint64 }
		b, err := os.ReadFile(filepath.Join(disk.Dir, "instances", "state.json"))
		if err == nil {
			err = json.Unmarshal(b, &st)
		}
		if err == nil && st.Term == 0 {
			err = fmt.Errorf("state file: %s", b)
		}
		return err
	}))
	return disk, leader, agent, node
}

// TestAgent_instanceExitingDuringAStallIsRestarted: an instance that exits
// while the agent's data directory is stalled is started again after its
// back-off, however long the disk holds the write of its exit, and the
// leader hears of each restart.
func TestAgent_instanceExitingDuringAStallIsRestarted(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	disk, leader, _, _ := stallRig(ctx, t)
	_, err := leader.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{
		Name: "flaky", PathPrefix: "/", Selector: "tier=web", Desired: 1, Max: 1,
		Template: &pb.InstanceTemplate{Command: "/bin/sh", Args: []string{"-c", "sleep 1; exit 3"}},
	}})
	require.NoError(t, err)
	instance := func() (*pb.Instance, error) {
		r, err := leader.Pools().ListInstances(ctx, &pb.ListInstancesRequest{Pool: "flaky"})
		if err == nil && len(r.Instances) != 1 {
			err = fmt.Errorf("%d instances", len(r.Instances))
		}
		if err != nil {
			return nil, err
		}
		return r.Instances[0], nil
	}
	// Its first run, which lasts a second.
	require.NoError(t, testcluster.Eventually(ctx, 15*time.Second, func(context.Context) error {
		in, err := instance()
		if err == nil && in.Pid == 0 {
			err = fmt.Errorf("%s is %v", in.Id, in.State)
		}
		return err
	}))

	disk.Stall()
	in, err := instance()
	require.NoError(t, err)
	before := in.Restarts
	require.NoError(t, disk.WaitHeld(ctx, 10*time.Second), "the write of its exit")
	require.NoError(t, testcluster.Eventually(ctx, 15*time.Second, func(context.Context) error {
		in, err := instance()
		if err == nil && in.Restarts < before+2 {
			err = fmt.Errorf("%s restarted %d times (%d before the stall)", in.Id, in.Restarts, before)
		}
		return err
	}), "restarts while the disk holds the state file's write")
	require.Positive(t, disk.Held(), "the write is still held")
}

func TestAgent_stalledDataDirKeepsTheNodeUp(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	disk, leader, agent, node := stallRig(ctx, t)

	disk.Stall()
	_, err := leader.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{
		Name: "sleepy", PathPrefix: "/", Selector: "tier=web", Desired: 1, Max: 1,
		Template: &pb.InstanceTemplate{Command: "/bin/sleep", Args: []string{"600"}},
	}})
	require.NoError(t, err)
	require.NoError(t, disk.WaitHeld(ctx, 10*time.Second), "the agent's write of its assignment")
	held := time.Now()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for time.Since(held) < 2*e2eTTL {
		<-tick.C
		nd, err := node()
		require.NoError(t, err)
		require.Equal(t, pb.NodeStatus_NODE_STATUS_UP, nd.Status, "web-1 %v into the stall", time.Since(held).Round(time.Millisecond))
		age := time.Since(nd.Latest.GetTime().AsTime())
		require.Less(t, age, 2*time.Second, "web-1's latest sample, %v into the stall", time.Since(held).Round(time.Millisecond))
	}
	require.Positive(t, disk.Held(), "the write is still held")
	// The agent says so: /readyz fails once the write has run for 5 s,
	// and /metrics shows how long.
	code, body := get(t, "http://"+agent.addr()+"/readyz")
	require.Equal(t, http.StatusServiceUnavailable, code, body)
	require.Contains(t, body, "the disk is stalled")
	_, body = get(t, "http://"+agent.addr()+"/metrics")
	require.Regexp(t, `(?m)^hostscale_agent_state_write_in_progress_seconds ([5-9]|[1-9][0-9]+)\.`, body, "at least 5 s")
	// And so do the controllers: the node is under disk_stalled (checked
	// every second once the write has run for 5 s), and takes no new
	// instance.
	require.NoError(t, testcluster.Eventually(ctx, 5*time.Second, func(context.Context) error {
		if _, body := get(t, "http://"+agent.addr()+"/metrics"); !strings.Contains(body, `hostscale_agent_node_condition{condition="disk_stalled"} 1`) {
			return errors.New("hostscale_agent_node_condition: not under disk_stalled")
		}
		nd, err := node()
		if err != nil {
			return err
		}
		if len(nd.Conditions) != 1 || nd.Conditions[0].Type != pb.NodeConditionType_NODE_CONDITION_TYPE_DISK_STALLED {
			return fmt.Errorf("web-1 is under %v", nd.Conditions)
		}
		if want := "a write of the state file in " + disk.Dir + " has not returned for"; !strings.Contains(nd.Conditions[0].Message, want) {
			return fmt.Errorf("message %q", nd.Conditions[0].Message)
		}
		return nil
	}))
	r, err := leader.Pools().ListInstances(ctx, &pb.ListInstancesRequest{Pool: "sleepy"})
	require.NoError(t, err)
	require.Len(t, r.Instances, 1)
	require.NotEqual(t, pb.InstanceState_INSTANCE_STATE_PENDING, r.Instances[0].State, "the agent reports the instance it started")

	disk.Resume()
	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(context.Context) error {
		if code, body := get(t, "http://"+agent.addr()+"/readyz"); code != http.StatusOK {
			return fmt.Errorf("/readyz: %d %s", code, body)
		}
		b, err := os.ReadFile(filepath.Join(disk.Dir, "instances", "state.json"))
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), r.Instances[0].Id) {
			return fmt.Errorf("state file: %s", b)
		}
		nd, err := node()
		if err != nil {
			return err
		}
		if len(nd.Conditions) > 0 {
			return fmt.Errorf("web-1 is still under %v", nd.Conditions)
		}
		return nil
	}))
}
