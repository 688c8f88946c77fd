package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hostscale/hostscale/internal/testcluster"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

func perNode(ins []*pb.Instance) map[string]int {
	out := map[string]int{}
	for _, in := range ins {
		out[in.Node]++
	}
	return out
}

// TestInstances_spreadServeAndScaleUnderLoad: a pool of 4 runs 2 and 2 on
// two hosts and every instance answers through the balancer; scaling to 8
// and then to 2 under steady load fails no request, and each host runs
// exactly its assigned processes after each step.
func TestInstances_spreadServeAndScaleUnderLoad(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	f := newFleet(t, ctx, 2)
	f.createPool("web", 4, nil)
	ins := f.settled("web", 4, 30*time.Second)
	require.Equal(t, map[string]int{"host-a": 2, "host-b": 2}, perNode(ins))

	l := f.startLoad(4)
	defer l.end()
	require.NoError(t, testcluster.Eventually(ctx, 15*time.Second, func(context.Context) error {
		if n := len(l.served()); n != 4 {
			return fmt.Errorf("%d distinct instances answered", n)
		}
		return nil
	}))

	for _, n := range []uint32{8, 2} {
		start := time.Now()
		_, err := f.pools().ScalePool(ctx, &pb.ScalePoolRequest{Pool: "web", Desired: n})
		require.NoError(t, err)
		ins = f.settled("web", int(n), 30*time.Second)
		t.Logf("scaled to %d in %v: %v", n, time.Since(start).Round(time.Millisecond), perNode(ins))
		require.Equal(t, map[string]int{"host-a": int(n) / 2, "host-b": int(n) / 2}, perNode(ins))
		l.served()
		require.NoError(t, testcluster.Eventually(ctx, 15*time.Second, func(context.Context) error {
			by := l.served()
			for _, in := range ins {
				if by[in.Id] == 0 {
					return fmt.Errorf("%s got no request (%v)", in.Id, by)
				}
			}
			if len(by) != len(ins) {
				return fmt.Errorf("answers from %v, want only %d instances", by, len(ins))
			}
			return nil
		}))
	}
	l.end()
	t.Logf("%d requests, %d failed", l.ok.Load(), l.failed.Load())
	require.Zero(t, l.failed.Load(), "failed requests: %v", l.errs)
	require.Greater(t, l.ok.Load(), int64(100))
}

// TestInstances_agentLossRestartAndCrashes: an instance killed is started
// again; a command that always exits is backed off and says why; an agent
// restarted while its instances run adopts them (none twice, none lost);
// an agent killed with its instances has them run on the other host within
// TTL + 10s, and then no request fails.
func TestInstances_agentLossRestartAndCrashes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	f := newFleet(t, ctx, 2)
	f.createPool("web", 4, nil)
	ins := f.settled("web", 4, 30*time.Second)

	// A killed instance comes back with its restart counted.
	victim := ins[0]
	require.NoError(t, killPid(int(victim.Pid)))
	require.NoError(t, testcluster.Eventually(ctx, 15*time.Second, func(ctx context.Context) error {
		for _, in := range f.instances("web") {
			if in.Id == victim.Id && (in.Restarts != 1 || in.State != pb.InstanceState_INSTANCE_STATE_HEALTHY || in.Pid == victim.Pid) {
				return fmt.Errorf("%s: %v, %d restarts, pid %d", in.Id, in.State, in.Restarts, in.Pid)
			}
		}
		return nil
	}))
	ins = f.settled("web", 4, 10*time.Second)

	// A command that always exits is backed off, not spun.
	_, err := f.pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{
		Name: "broken", PathPrefix: "/broken", Selector: "tier=web", Desired: 1,
		Template: &pb.InstanceTemplate{Command: "/bin/sh", Args: []string{"-c", "exit 3"}},
	}})
	require.NoError(t, err)
	began := time.Now()
	var broken *pb.Instance
	require.NoError(t, testcluster.Eventually(ctx, 20*time.Second, func(ctx context.Context) error {
		bi := f.instances("broken")
		// Between a restart and its exit the instance is briefly
		// STARTING: wait for the exit that follows the third restart.
		if len(bi) != 1 || bi[0].Restarts < 3 || bi[0].State != pb.InstanceState_INSTANCE_STATE_EXITED {
			return fmt.Errorf("broken: %v", bi)
		}
		broken = bi[0]
		return nil
	}))
	elapsed := time.Since(began)
	t.Logf("always-exiting instance: %d restarts in %v, state %v: %q", broken.Restarts, elapsed.Round(time.Millisecond), broken.State, broken.Message)
	require.Less(t, float64(broken.Restarts), elapsed.Seconds()*2+2, "backed off, not spun")
	require.Contains(t, broken.Message, "code 3")
	_, err = f.pools().DeletePool(ctx, &pb.DeletePoolRequest{Pool: "broken"})
	require.NoError(t, err)

	// Restart host-a's agent while its instances run: adopted, not doubled.
	a := f.agents["host-a"]
	before := map[string]uint32{}
	for _, in := range ins {
		before[in.Id] = in.Pid
	}
	a.stop(t)
	require.Equal(t, 4, len(runningInstances()), "instances outlive their agent")
	f.startAgent(a)
	f.waitAgent("host-a")
	ins = f.settled("web", 4, 20*time.Second)
	for _, in := range ins {
		require.Equal(t, before[in.Id], in.Pid, "%s was adopted, not started again", in.Id)
	}

	// Kill host-b's agent and its instances: they run on host-a within
	// TTL + 10s; once the table has them, no request fails.
	b := f.agents["host-b"]
	b.kill()
	killed := time.Now()
	require.Equal(t, 2, f.killInstances("host-b"))
	ins = f.settledOn("web", 4, map[string]int{"host-a": 4}, ttl+10*time.Second)
	t.Logf("host-b's instances run on host-a %v after the kill", time.Since(killed).Round(time.Millisecond))
	f.waitRouted(ins, 10*time.Second)
	l := f.startLoad(4)
	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(context.Context) error {
		if n := l.ok.Load(); n < 500 {
			return fmt.Errorf("%d requests so far", n)
		}
		return nil
	}))
	l.end()
	require.Zero(t, l.failed.Load(), "failed requests after the table update: %v", l.errs)
	require.Len(t, l.served(), 4)
}

// TestInstances_leaderKilledDuringScaleOutAndDrain: the new leader finishes
// a scale-out the old one began, no instance runs twice; a drained node's
// instances move to the other one with no failed request.
func TestInstances_leaderKilledDuringScaleOutAndDrain(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	f := newFleet(t, ctx, 2)
	f.createPool("web", 2, nil)
	f.settled("web", 2, 30*time.Second)

	l := f.startLoad(4)
	defer l.end()
	old := f.leader()
	_, err := old.Pools().ScalePool(ctx, &pb.ScalePoolRequest{Pool: "web", Desired: 6})
	require.NoError(t, err)
	old.Kill()
	ins := f.settled("web", 6, 30*time.Second)
	require.Equal(t, map[string]int{"host-a": 3, "host-b": 3}, perNode(ins))
	for id, n := range runningInstances() {
		require.Equal(t, 1, n, "%s runs once", id)
	}
	old.Restart()

	_, err = f.leader().Nodes().DrainNode(ctx, &pb.DrainNodeRequest{Node: "host-a"})
	require.NoError(t, err)
	f.settledOn("web", 6, map[string]int{"host-b": 6}, 40*time.Second)
	l.end()
	t.Logf("%d requests, %d failed", l.ok.Load(), l.failed.Load())
	require.Zero(t, l.failed.Load(), "failed requests: %v", l.errs)

	// Undrained, the node takes placements again.
	_, err = f.leader().Nodes().DrainNode(ctx, &pb.DrainNodeRequest{Node: "host-a", Undo: true})
	require.NoError(t, err)
	_, err = f.pools().ScalePool(ctx, &pb.ScalePoolRequest{Pool: "web", Desired: 8})
	require.NoError(t, err)
	f.settledOn("web", 8, map[string]int{"host-a": 2, "host-b": 6}, 30*time.Second)
}

// TestInstances_newTemplateThenControllersLost: UpdatePool with a new
// template starts new instances, then takes the old ones out of the tables
// and stops them, under load with no failed request; then every
// controller stops: the instances keep running and serving, and when the
// controllers return nothing is restarted.
func TestInstances_newTemplateThenControllersLost(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f := newFleet(t, ctx, 2)
	f.createPool("web", 3, nil)
	old := f.settled("web", 3, 30*time.Second)
	l := f.startLoad(4)
	defer l.end()

	p, err := f.pools().GetPool(ctx, &pb.GetPoolRequest{Pool: "web"})
	require.NoError(t, err)
	p.Pool.Template.Args = []string{"-latency", "1ms"}
	p.Pool.Desired = 0 // keep the count
	_, err = f.pools().UpdatePool(ctx, &pb.UpdatePoolRequest{Pool: p.Pool})
	require.NoError(t, err)
	require.NoError(t, testcluster.Eventually(ctx, 40*time.Second, func(context.Context) error {
		ins := f.settled("web", 3, 40*time.Second)
		for _, in := range ins {
			for _, o := range old {
				if in.Id == o.Id {
					return fmt.Errorf("%s of the old template still runs", in.Id)
				}
			}
		}
		return nil
	}))
	for _, env := range instanceProcs() {
		require.NotContains(t, []string{old[0].Id, old[1].Id, old[2].Id}, env["HOSTSCALE_INSTANCE"])
	}
	l.end()
	t.Logf("%d requests, %d failed", l.ok.Load(), l.failed.Load())
	require.Zero(t, l.failed.Load(), "failed requests: %v", l.errs)

	// With max_surge 1 the next template rolls one instance at a time:
	// never more than 4 in the tables or starting, and no request fails.
	blue := f.settled("web", 3, 10*time.Second)
	p, err = f.pools().GetPool(ctx, &pb.GetPoolRequest{Pool: "web"})
	require.NoError(t, err)
	p.Pool.Template.Args = []string{"-latency", "2ms"}
	p.Pool.Desired, p.Pool.MaxSurge = 0, 1
	l = f.startLoad(4)
	watchCtx, stopWatch := context.WithCancel(ctx)
	most := make(chan int, 1)
	go func() {
		peak := 0
		for watchCtx.Err() == nil {
			r, err := f.pools().ListInstances(watchCtx, &pb.ListInstancesRequest{Pool: "web", Consistent: true})
			if err == nil {
				active := 0
				for _, in := range r.Instances {
					if !in.Draining && !in.Stop {
						active++
					}
				}
				peak = max(peak, active)
			}
			time.Sleep(10 * time.Millisecond)
		}
		most <- peak
	}()
	_, err = f.pools().UpdatePool(ctx, &pb.UpdatePoolRequest{Pool: p.Pool})
	require.NoError(t, err)
	require.NoError(t, testcluster.Eventually(ctx, 40*time.Second, func(context.Context) error {
		for _, in := range f.settled("web", 3, 40*time.Second) {
			for _, o := range blue {
				if in.Id == o.Id {
					return fmt.Errorf("%s of the previous template still runs", in.Id)
				}
			}
		}
		return nil
	}))
	stopWatch()
	peak := <-most
	l.end()
	t.Logf("rolling: at most %d instances at once; %d requests, %d failed", peak, l.ok.Load(), l.failed.Load())
	require.LessOrEqual(t, peak, 4, "desired 3 plus max_surge 1")
	require.Zero(t, l.failed.Load(), "failed requests while rolling: %v", l.errs)

	_, err = f.pools().UpdatePool(ctx, &pb.UpdatePoolRequest{Pool: &pb.Pool{Name: "web", Template: &pb.InstanceTemplate{}}})
	require.Error(t, err, "a bad template is refused")

	// Losing every controller stops no instance, and the balancer keeps
	// serving on its last table; when they return, nothing is restarted.
	before := f.settled("web", 3, 10*time.Second)
	for _, n := range f.cl.Nodes() {
		n.Stop()
	}
	l = f.startLoad(4)
	require.NoError(t, testcluster.Eventually(ctx, 20*time.Second, func(context.Context) error {
		if l.ok.Load() < 500 {
			return fmt.Errorf("%d requests so far", l.ok.Load())
		}
		return nil
	}))
	l.end()
	require.Zero(t, l.failed.Load(), "failed requests without controllers: %v", l.errs)
	require.Len(t, l.served(), 3)
	for _, n := range f.cl.Nodes() {
		n.Restart()
	}
	after := f.settled("web", 3, 30*time.Second)
	for i := range after {
		require.Equal(t, before[i].Id, after[i].Id)
		require.Equal(t, before[i].Pid, after[i].Pid, "%s kept running", after[i].Id)
	}
}

// Reservations bound placement by each host's cores as its agent reports
// them: host-a (one core, -cpus 0) takes one 1-core instance, host-b (two)
// takes two, and a fourth is not placed.
func TestInstances_reservationsBoundPlacementByHostCores(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("needs two cores")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := newFleetArgs(t, ctx, 2, func(i int) []string { return []string{"-cpus", []string{"0", "0-1"}[i]} })
	f.createPool("web", 0, nil)
	p, err := f.pools().GetPool(ctx, &pb.GetPoolRequest{Pool: "web"})
	require.NoError(t, err)
	p.Pool.Template.Resources = &pb.InstanceResources{CpuMillicores: 1000}
	p.Pool.Desired = 4
	_, err = f.pools().UpdatePool(ctx, &pb.UpdatePoolRequest{Pool: p.Pool})
	require.NoError(t, err)
	ins := f.settledOn("web", 3, map[string]int{"host-a": 1, "host-b": 2}, 40*time.Second)
	for _, in := range ins {
		require.EqualValues(t, 1000, in.Resources.GetCpuMillicores(), in.Id)
	}
	// Where the agents enforce reservations (-cgroups auto finds usable
	// cgroups), each instance runs in its group with a quota of one core.
	for _, in := range ins {
		if !strings.Contains(f.agents[in.Node].log(), "instance reservations are enforced in cgroups") {
			t.Logf("%s: its agent does not enforce reservations here", in.Node)
			continue
		}
		dir, v2 := cpuGroup(t, int(in.Pid))
		require.True(t, strings.HasSuffix(dir, "/hostscale/"+in.Node+"/"+in.Id), "%s runs in %s", in.Id, dir)
		if v2 {
			require.Equal(t, "100000 100000", readTrimmed(t, filepath.Join("/sys/fs/cgroup", dir, "cpu.max")), in.Id)
		} else {
			require.Equal(t, "100000", readTrimmed(t, filepath.Join("/sys/fs/cgroup/cpu", dir, "cpu.cfs_quota_us")), in.Id)
		}
	}
	got, err := f.pools().GetPool(ctx, &pb.GetPoolRequest{Pool: "web"})
	require.NoError(t, err)
	require.EqualValues(t, 4, got.Pool.Desired, "the fourth is wanted, and waits for room")
	for node, cores := range map[string]uint32{"host-a": 1, "host-b": 2} {
		n, err := f.cl.Running()[0].Nodes().GetNode(ctx, &pb.GetNodeRequest{Node: node})
		require.NoError(t, err)
		require.Equal(t, cores, n.Node.Facts.GetCpuCount(), node)
		require.EqualValues(t, cores*1000, n.Node.Reserved.GetCpuMillicores(), "%s reports what its instances reserve", node)
	}
}

// cpuGroup returns the cgroup of pid that holds its CPU quota, from
// /proc/<pid>/cgroup: the unified hierarchy's (v2) or the v1 cpu
// controller's.
func cpuGroup(t *testing.T, pid int) (dir string, v2 bool) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	require.NoError(t, err)
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		if slices.Contains(strings.Split(f[1], ","), "cpu") {
			return f[2], false
		}
		if f[0] == "0" && f[1] == "" {
			dir = f[2]
		}
	}
	require.NotEmpty(t, dir, "no cpu cgroup in %s", b)
	return dir, true
}

func readTrimmed(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return strings.TrimSpace(string(b))
}

// An agent with -allow-commands runs only those executables: the
// scheduler places a pool only on hosts whose rules may allow its
// command, and an agent refuses whatever its rules do not allow.
func TestInstances_agentsRunOnlyAllowedCommands(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bin := binaries(t)
	f := newFleetArgs(t, ctx, 2, func(i int) []string {
		return []string{"-allow-commands", []string{filepath.Join(bin, "*"), "/opt/hostscale-nothing/app"}[i]}
	})
	f.createPool("web", 3, nil)
	f.settledOn("web", 3, map[string]int{"host-a": 3}, 40*time.Second)
	for node, want := range map[string][]string{"host-a": {filepath.Join(bin, "*")}, "host-b": {"/opt/hostscale-nothing/app"}} {
		n, err := f.cl.Running()[0].Nodes().GetNode(ctx, &pb.GetNodeRequest{Node: node})
		require.NoError(t, err)
		require.Equal(t, want, n.Node.Facts.GetAllowedCommands(), "%s reports its rules", node)
	}

	// No host allows /bin/sleep: nothing is placed, and every controller
	// says why (GetUnplaced), as the leader's log does.
	_, err := f.pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{
		Name: "sleep", PathPrefix: "/sleep", Selector: "tier=web", Max: 2, Desired: 1,
		Template: &pb.InstanceTemplate{Command: "/bin/sleep", Args: []string{"600"}},
	}})
	require.NoError(t, err)
	const why = `nodes 2 whose -allow-commands do not allow "/bin/sleep"`
	for _, n := range f.cl.Running() {
		require.NoError(t, testcluster.Eventually(ctx, 20*time.Second, func(ctx context.Context) error {
			r, err := n.Pools().GetUnplaced(ctx, &pb.GetUnplacedRequest{Pool: "sleep"})
			if err != nil {
				return err
			}
			if len(r.Pools) != 1 || r.Pools[0].Why != why || r.Pools[0].Instances != 1 {
				return fmt.Errorf("%s: unplaced %v", n.ID, r.Pools)
			}
			return nil
		}))
	}
	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(context.Context) error {
		for _, n := range f.cl.Running() {
			if strings.Contains(n.Log(), strings.ReplaceAll(why, `"`, `\"`)) {
				return nil
			}
		}
		return errors.New("no controller logged why the pool is not placed")
	}))
	require.Empty(t, f.instances("sleep"))

	// A bare name may be allowed wherever a rule's last element matches
	// it, so host-a takes it, and its agent, finding no allowed "sleep"
	// in its PATH, refuses to start it.
	p, err := f.pools().GetPool(ctx, &pb.GetPoolRequest{Pool: "sleep"})
	require.NoError(t, err)
	p.Pool.Template.Command = "sleep"
	_, err = f.pools().UpdatePool(ctx, &pb.UpdatePoolRequest{Pool: p.Pool})
	require.NoError(t, err)
	require.NoError(t, testcluster.Eventually(ctx, 30*time.Second, func(context.Context) error {
		for _, in := range f.instances("sleep") {
			if in.Node == "host-a" && strings.Contains(in.Message, "is not an allowed command on this host") {
				return nil
			}
		}
		return fmt.Errorf("no refused instance of sleep on host-a: %v", f.instances("sleep"))
	}))
	require.Len(t, f.settledOn("web", 3, map[string]int{"host-a": 3}, 10*time.Second), 3, "the allowed pool still serves")
	_, err = f.pools().DeletePool(ctx, &pb.DeletePoolRequest{Pool: "sleep"})
	require.NoError(t, err)

	// host-b comes back allowing the demo too, then host-a without it: its
	// adopted instances serve until their replacements on host-b do.
	for _, step := range []struct{ node, rules string }{
		{"host-b", filepath.Join(bin, "hostscale-demo")},
		{"host-a", "/opt/hostscale-nothing/app"},
	} {
		node, rules := step.node, step.rules
		a := f.agents[node]
		a.stop(t)
		a.args = []string{"-allow-commands", rules}
		f.startAgent(a)
		f.waitAgent(node)
		if node == "host-b" {
			// Nothing moves while host-a still allows the command.
			f.settledOn("web", 3, map[string]int{"host-a": 3}, 10*time.Second)
		}
	}
	f.settledOn("web", 3, map[string]int{"host-b": 3}, 40*time.Second)
}
