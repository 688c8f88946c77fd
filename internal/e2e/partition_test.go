package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostscale/hostscale/internal/testcluster"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// TestInstances_nodeCutOffFromTheControllers: every binary on a host of
// its own (testcluster.Net); a host whose instance serves a pool is cut
// off from the three controllers (packets dropped). Its agent keeps the
// instance running, as losing the controllers never stops instances; the
// controllers mark the node down after the heartbeat TTL and place a
// replacement on the other host. Healed, the agent comes back, and the
// instance it kept, which no longer belongs to it, is stopped: one
// instance is left, on the other host.
func TestInstances_nodeCutOffFromTheControllers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	nt := testcluster.NewNet(t, 5) // three controllers, then host-a and host-b
	f := &fleet{t: t, ctx: ctx, bin: binaries(t), agents: map[string]*agentProc{}}
	t.Cleanup(func() { f.killInstances("") })
	f.cl, _ = testcluster.StartLed(ctx, t, testcluster.Options{
		Launcher: testcluster.BinaryLauncher{Path: filepath.Join(f.bin, "hostscale-controller")},
		Args:     []string{"-heartbeat-ttl", ttl.String(), "-drain-deadline", "5s"},
		Net:      nt,
	}, 30*time.Second)
	var addrs []string
	var controllerHosts []*testcluster.Host
	for _, n := range f.cl.Nodes() {
		addrs = append(addrs, n.GRPCAddr)
		controllerHosts = append(controllerHosts, n.Host)
	}
	f.controllers = strings.Join(addrs, ",")
	hostOf := map[string]*testcluster.Host{}
	for i, h := range nt.Hosts()[3:] {
		a := &agentProc{node: fmt.Sprintf("host-%c", 'a'+i), ip: h.IP, dataDir: t.TempDir()}
		f.agents[a.node], hostOf[a.node] = a, h
		a.proc = startProcCmd(t, a.node, h.Command(filepath.Join(f.bin, "hostscale-agent"), f.agentArgs(a)...))
	}
	for node := range f.agents {
		f.waitAgent(node)
	}

	f.createPool("web", 1, nil)
	kept := f.settled("web", 1, 30*time.Second)[0]
	var other string
	for node := range f.agents {
		if node != kept.Node {
			other = node
		}
	}
	nt.Partition([]*testcluster.Host{hostOf[kept.Node]}, controllerHosts)
	cut := time.Now()
	require.NoError(t, testcluster.Eventually(ctx, 30*time.Second, func(ctx context.Context) error {
		ins := f.instances("web")
		for _, in := range ins {
			if in.Node == other && in.State == pb.InstanceState_INSTANCE_STATE_HEALTHY {
				return nil
			}
		}
		return fmt.Errorf("no healthy replacement on %s yet: %v", other, ins)
	}))
	t.Logf("a replacement serves on %s %v after %s was cut off", other, time.Since(cut).Round(time.Millisecond), kept.Node)
	// Past the agent's own notice of the cut (no Ack for 5 s) and some of
	// its attempts to reach a controller, the instance still runs.
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for time.Since(cut) < 12*time.Second {
		require.Equal(t, 1, runningInstances()[kept.Id], "the cut-off agent keeps %s running, %v after the cut", kept.Id, time.Since(cut).Round(time.Millisecond))
		<-tick.C
	}
	require.Contains(t, f.agents[kept.Node].log(), "stream to controller ended", "the agent noticed the cut")

	nt.Heal()
	healed := time.Now()
	f.waitAgent(kept.Node)
	ins := f.settled("web", 1, 30*time.Second)
	require.Equal(t, other, ins[0].Node)
	require.NotEqual(t, kept.Id, ins[0].Id)
	require.Zero(t, runningInstances()[kept.Id], "%s stopped once its agent was back", kept.Id)
	t.Logf("back %v after the heal: %s stopped, %s serves on %s", time.Since(healed).Round(time.Millisecond), kept.Id, ins[0].Id, other)
}

// TestInstances_leaderWithAStalledDiskHandsOver: every controller's data
// directory is on a StallDisk, with -log-stall-exit 3s; a pool of one
// instance serves through the balancer under load. The leader's disk
// stalls as it takes a scale-out. It gives up after 3 s and exits (its
// process hangs on in the kernel, its sockets open, until the disk
// answers), and the other two elect a leader. Both agents reach the new
// leader without their nodes ever going down, the scale-out sent to it
// serves through the balancer, and not one request through the balancer
// fails. The disk back, the old leader finishes exiting, restarts and
// follows.
func TestInstances_leaderWithAStalledDiskHandsOver(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	// Mounted before the cluster starts, so unmounted after it stopped.
	disks := map[string]*testcluster.StallDisk{}
	for i := range 3 {
		disks[fmt.Sprintf("c%d", i+1)] = testcluster.NewStallDisk(t)
	}
	const limit = 3 * time.Second
	f := newFleetWith(t, ctx, 2, nil, func(o *testcluster.Options) {
		o.Args = append(o.Args, "-log-stall-exit", limit.String())
		o.DataDir = func(id string) string { return disks[id].Dir }
	})
	// Whatever the test's end, the disks answer before the nodes stop.
	t.Cleanup(func() {
		for _, d := range disks {
			d.Resume()
		}
	})
	f.createPool("web", 1, nil)
	first := f.settled("web", 1, 30*time.Second)
	f.waitRouted(first, 10*time.Second)
	l := f.startLoad(2)
	defer l.end()

	old := f.leader()
	disks[old.ID].Stall()
	stalled := time.Now()
	type answer struct {
		err error
		at  time.Duration
	}
	held := make(chan answer, 1)
	go func() {
		wctx, wcancel := context.WithTimeout(ctx, time.Minute)
		defer wcancel()
		_, err := old.Pools().ScalePool(wctx, &pb.ScalePoolRequest{Pool: "web", Desired: 2})
		held <- answer{err, time.Since(stalled)}
	}()
	require.NoError(t, disks[old.ID].WaitHeld(ctx, 10*time.Second))

	leader, _, err := f.cl.WaitNewLeader(ctx, old, limit+15*time.Second)
	require.NoError(t, err)
	elected := time.Since(stalled)
	require.Contains(t, old.Log(), "exiting so that another controller leads")
	f.pinned = leader

	// The agents reach the new leader, and it never sees their nodes down.
	moved := map[string]time.Duration{}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for watch := time.Now(); len(moved) < len(f.agents) || time.Since(watch) < 2*ttl; <-tick.C {
		require.Less(t, time.Since(watch), 30*time.Second, "agents on the new leader: %v", moved)
		for node := range f.agents {
			r, err := leader.Nodes().GetNode(ctx, &pb.GetNodeRequest{Node: node})
			require.NoError(t, err)
			require.NotEqual(t, pb.NodeStatus_NODE_STATUS_DOWN, r.Node.Status, "%s down %v after the stall", node, time.Since(stalled).Round(time.Millisecond))
			if _, ok := moved[node]; !ok && r.Node.Controller == leader.ID && r.Node.Status == pb.NodeStatus_NODE_STATUS_UP {
				moved[node] = time.Since(stalled)
			}
		}
	}

	// The scale-out, sent again, serves through the balancer.
	require.Len(t, f.instances("web"), 1)
	sent := time.Now()
	_, err = leader.Pools().ScalePool(ctx, &pb.ScalePoolRequest{Pool: "web", Desired: 2})
	require.NoError(t, err)
	ins := f.settled("web", 2, 30*time.Second)
	f.waitRouted(ins, 20*time.Second)
	t.Logf("after %s's disk stalled: %s leads at %v; agents on it at %v; a scale-out sent then is routed by the balancer %v later",
		old.ID, leader.ID, elected.Round(time.Millisecond), moved, time.Since(sent).Round(time.Millisecond))
	l.served()
	before := l.ok.Load()
	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(context.Context) error {
		if n := l.ok.Load() - before; n < 200 {
			return fmt.Errorf("%d requests since the scale-out", n)
		}
		return nil
	}))
	require.Len(t, l.served(), 2, "both instances answer")
	l.end()
	require.Zero(t, l.failed.Load(), "failed requests through the balancer: %v", l.errs)

	// The write the stalled leader held fails, and the client may send it
	// elsewhere, as soon as the leader gives up.
	select {
	case a := <-held:
		t.Logf("the write the stalled leader held failed %v after the stall: %v", a.at.Round(time.Millisecond), a.err)
		require.Equal(t, codes.Unavailable, status.Code(a.err), "the write the stalled leader held: %v", a.err)
		require.Less(t, a.at, elected, "the write the stalled leader held failed after another leader was elected")
	case <-ctx.Done():
		t.Fatal("the held write was never answered")
	}

	// The disk back, the old leader finishes exiting; restarted, it
	// follows, and the three agree.
	disks[old.ID].Resume()
	require.NoError(t, old.WaitExited(ctx, 10*time.Second))
	old.Restart()
	f.pinned = nil
	require.Equal(t, leader.ID, f.leader().ID)
	require.Len(t, f.settled("web", 2, 10*time.Second), 2)
}
