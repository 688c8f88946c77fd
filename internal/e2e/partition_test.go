package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

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
