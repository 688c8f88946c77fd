package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hostscale/hostscale/internal/testcluster"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// simCluster is three controller binaries with a fleet of simulated
// agents on them.
type simCluster struct {
	t     *testing.T
	ctx   context.Context
	cl    *testcluster.Cluster
	fleet *simFleet
}

func startSimCluster(t *testing.T, ctx context.Context, agents int, interval time.Duration) *simCluster {
	bin := binaries(t)
	c := &simCluster{t: t, ctx: ctx}
	c.cl = testcluster.Start(t, testcluster.Options{
		Launcher: testcluster.BinaryLauncher{Path: filepath.Join(bin, "hostscale-controller")},
		Args:     []string{"-log-level", "warn", "-pprof"},
	})
	_, _, err := c.cl.WaitLeader(ctx, 30*time.Second)
	require.NoError(t, err)
	var addrs []string
	for _, n := range c.cl.Nodes() {
		addrs = append(addrs, n.GRPCAddr)
	}
	c.fleet = startSimFleet(ctx, agents, interval, addrs)
	t.Cleanup(c.fleet.stop)
	return c
}

func (c *simCluster) leader() *testcluster.Node {
	n, _, err := c.cl.WaitLeader(c.ctx, 30*time.Second)
	require.NoError(c.t, err)
	return n
}

// waitUp waits until every simulated node is up and streams to the
// leader.
func (c *simCluster) waitUp(timeout time.Duration) {
	c.t.Helper()
	require.NoError(c.t, testcluster.Eventually(c.ctx, timeout, func(ctx context.Context) error {
		l := c.leader()
		up := 0
		for token := ""; ; {
			r, err := l.Nodes().ListNodes(ctx, &pb.ListNodesRequest{PageToken: token})
			if err != nil {
				return err
			}
			for _, n := range r.Nodes {
				if n.Status == pb.NodeStatus_NODE_STATUS_UP && n.Controller == l.ID {
					up++
				}
			}
			if token = r.NextPageToken; token == "" {
				break
			}
		}
		if up != len(c.fleet.agents) {
			return fmt.Errorf("%d of %d nodes up on the leader %s", up, len(c.fleet.agents), l.ID)
		}
		return nil
	}))
}

// waitHealthy waits until pool has n instances, every one healthy.
func (c *simCluster) waitHealthy(pool string, n int, timeout time.Duration) {
	c.t.Helper()
	require.NoError(c.t, testcluster.Eventually(c.ctx, timeout, func(ctx context.Context) error {
		r, err := c.leader().Pools().ListInstances(ctx, &pb.ListInstancesRequest{Pool: pool})
		if err != nil {
			return err
		}
		healthy := 0
		for _, in := range r.Instances {
			if in.State == pb.InstanceState_INSTANCE_STATE_HEALTHY && !in.Stop {
				healthy++
			}
		}
		if healthy != n || len(r.Instances) != n {
			return fmt.Errorf("%d instances, %d healthy, want %d", len(r.Instances), healthy, n)
		}
		return nil
	}))
}

// createPool creates a pool of desired instances spread over the fleet.
func (c *simCluster) createPool(name string, desired uint32) {
	_, err := c.leader().Pools().CreatePool(c.ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{
		Name: name, PathPrefix: "/" + name + "/",
		Template: &pb.InstanceTemplate{Command: "/bin/true", HealthPath: "/healthz"},
		Selector: "tier=web", Max: 1000, Desired: desired,
	}})
	require.NoError(c.t, err)
}

// usage is a controller's CPU time and memory, from its /metrics.
type usage struct {
	cpu        float64 // seconds
	rss        float64 // bytes
	goroutines float64
}

func (c *simCluster) usage(n *testcluster.Node) usage {
	c.t.Helper()
	resp, err := http.Get("http://" + n.HTTPAddr + "/metrics")
	require.NoError(c.t, err)
	defer resp.Body.Close()
	var u usage
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		f, _ := strconv.ParseFloat(v, 64)
		switch name {
		case "process_cpu_seconds_total":
			u.cpu = f
		case "process_resident_memory_bytes":
			u.rss = f
		case "go_goroutines":
			u.goroutines = f
		}
	}
	require.NoError(c.t, sc.Err())
	return u
}

// profile writes a CPU profile of n over d to the directory
// HOSTSCALE_FLEET_PROFILE names, as name.pprof; without it, it waits d.
func (c *simCluster) profile(n *testcluster.Node, name string, d time.Duration) {
	c.t.Helper()
	dir := os.Getenv("HOSTSCALE_FLEET_PROFILE")
	if dir == "" {
		time.Sleep(d)
		return
	}
	resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", n.HTTPAddr, int(d.Seconds())))
	require.NoError(c.t, err)
	defer resp.Body.Close()
	out, err := os.Create(filepath.Join(dir, name+".pprof"))
	require.NoError(c.t, err)
	defer out.Close()
	_, err = io.Copy(out, resp.Body)
	require.NoError(c.t, err)
}

// quantile returns the q-quantile of d.
func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	d = slices.Clone(d)
	slices.Sort(d)
	return d[min(len(d)-1, int(q*float64(len(d))))]
}

// TestBench_fleetScale puts a fleet of simulated agents (1,000 by default,
// HOSTSCALE_FLEET_AGENTS) on three controller binaries and measures what
// the leader pays for it: connecting them all, their samples, placing an
// instance on each, changes of placement, and a failover. Run by
// `make bench-fleet` (HOSTSCALE_BENCH=1).
func TestBench_fleetScale(t *testing.T) {
	if os.Getenv("HOSTSCALE_BENCH") == "" {
		t.Skip("a benchmark: HOSTSCALE_BENCH=1 (make bench-fleet)")
	}
	agents := 1000
	if v := os.Getenv("HOSTSCALE_FLEET_AGENTS"); v != "" {
		var err error
		agents, err = strconv.Atoi(v)
		require.NoError(t, err, "HOSTSCALE_FLEET_AGENTS")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	c := startSimCluster(t, ctx, agents, time.Second)
	start := c.fleet.started
	c.waitUp(5 * time.Minute)
	t.Logf("fleet: %d agents up on the leader %v after their start", agents, time.Since(start).Round(time.Millisecond))

	// Steady state: samples only.
	l := c.leader()
	time.Sleep(3 * time.Second)
	c.fleet.stats.takeAckWaits()
	u0, t0 := c.usage(l), time.Now()
	c.profile(l, "steady", 15*time.Second)
	u1, t1 := c.usage(l), time.Now()
	w := c.fleet.stats.takeAckWaits()
	t.Logf("steady: leader %.3f cores, RSS %.0f MiB, %.0f goroutines; sample batch to ack p50 %v p99 %v (%d batches)",
		(u1.cpu-u0.cpu)/t1.Sub(t0).Seconds(), u1.rss/(1<<20), u1.goroutines,
		quantile(w, 0.5).Round(time.Microsecond), quantile(w, 0.99).Round(time.Microsecond), len(w))

	// One instance per node.
	n := min(agents, 1000)
	u0, t0 = c.usage(l), time.Now()
	c.createPool("web", uint32(n))
	c.waitHealthy("web", n, 5*time.Minute)
	u1, t1 = c.usage(l), time.Now()
	t.Logf("place: pool of %d to all healthy in %v, leader CPU %.2fs", n, t1.Sub(t0).Round(time.Millisecond), u1.cpu-u0.cpu)

	// Changes of placement: -10 and back, ten times.
	const changes = 20
	var took []time.Duration
	u0 = c.usage(l)
	profiled := make(chan struct{})
	go func() {
		defer close(profiled)
		c.profile(l, "changes", 3*time.Second)
	}()
	for i := range changes {
		want := n - 10
		if i%2 == 1 {
			want = n
		}
		s := time.Now()
		_, err := l.Pools().ScalePool(ctx, &pb.ScalePoolRequest{Pool: "web", Desired: uint32(want)})
		require.NoError(t, err)
		c.waitHealthy("web", want, time.Minute)
		took = append(took, time.Since(s))
	}
	u1 = c.usage(l)
	<-profiled
	t.Logf("scale ±10: to settled p50 %v max %v; leader CPU %.0f ms a change",
		quantile(took, 0.5).Round(time.Millisecond), slices.Max(took).Round(time.Millisecond), 1000*(u1.cpu-u0.cpu)/changes)

	// Failover: every agent moves to the new leader.
	connects := c.fleet.stats.connects.Load()
	s := time.Now()
	l.Kill()
	nl := c.leader()
	elected := time.Since(s)
	c.waitUp(5 * time.Minute)
	t.Logf("failover: new leader %s after %v, all %d agents up on it after %v (%d reconnects)",
		nl.ID, elected.Round(time.Millisecond), agents, time.Since(s).Round(time.Millisecond), c.fleet.stats.connects.Load()-connects)
	c.waitHealthy("web", n, time.Minute)
	t.Logf("stream failures: %d (last: %v)", c.fleet.stats.failures.Load(), c.fleet.stats.lastErr.Load())
}

// TestSimFleet_assignmentsReachEveryNodeAndSurviveFailover runs 40
// simulated agents on three controller binaries: a pool of one instance
// per node reaches every agent, later changes reach the nodes they
// concern, and after the leader is killed every agent streams to the new
// one with its instances kept.
func TestSimFleet_assignmentsReachEveryNodeAndSurviveFailover(t *testing.T) {
	const agents = 40
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := startSimCluster(t, ctx, agents, 200*time.Millisecond)
	c.waitUp(time.Minute)

	c.createPool("web", agents)
	c.waitHealthy("web", agents, time.Minute)
	byNode := map[string][]string{}
	r, err := c.leader().Pools().ListInstances(ctx, &pb.ListInstancesRequest{Pool: "web"})
	require.NoError(t, err)
	for _, in := range r.Instances {
		byNode[in.Node] = append(byNode[in.Node], in.Id)
	}
	require.Len(t, byNode, agents, "one instance on each node")
	assignedMatch := func(ctx context.Context) error {
		for _, a := range c.fleet.agents {
			want := slices.Clone(byNode[a.node])
			slices.Sort(want)
			if got := a.assigned(); !slices.Equal(got, want) {
				return fmt.Errorf("%s assigned %v, want %v", a.node, got, want)
			}
		}
		return nil
	}
	require.NoError(t, testcluster.Eventually(ctx, 30*time.Second, assignedMatch))

	// Scale down by five: the nodes that lose an instance are told, the
	// others keep theirs.
	_, err = c.leader().Pools().ScalePool(ctx, &pb.ScalePoolRequest{Pool: "web", Desired: agents - 5})
	require.NoError(t, err)
	c.waitHealthy("web", agents-5, time.Minute)
	r, err = c.leader().Pools().ListInstances(ctx, &pb.ListInstancesRequest{Pool: "web"})
	require.NoError(t, err)
	byNode = map[string][]string{}
	for _, in := range r.Instances {
		byNode[in.Node] = append(byNode[in.Node], in.Id)
	}
	require.NoError(t, testcluster.Eventually(ctx, 30*time.Second, assignedMatch))

	old := c.leader()
	old.Kill()
	nl := c.leader()
	require.NotEqual(t, old.ID, nl.ID)
	c.waitUp(time.Minute)
	c.waitHealthy("web", agents-5, time.Minute)
	r, err = nl.Pools().ListInstances(ctx, &pb.ListInstancesRequest{Pool: "web"})
	require.NoError(t, err)
	for _, in := range r.Instances {
		require.Contains(t, byNode[in.Node], in.Id, "instances stay where they were")
	}
	require.NoError(t, assignedMatch(ctx))
}
