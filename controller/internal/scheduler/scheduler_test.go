package scheduler

import (
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func state(nodes map[string]pb.NodeStatus, desired uint32, ins ...*pb.Instance) *pb.State {
	st := &pb.State{Nodes: map[string]*pb.Node{}, Instances: map[string]*pb.Instance{}, Pools: map[string]*pb.Pool{
		"web": {Name: "web", Template: &pb.InstanceTemplate{Command: "app"}, Selector: "tier=web", Max: 10, Desired: desired},
	}}
	for n, s := range nodes {
		st.Nodes[n] = &pb.Node{Name: n, Status: s, Labels: map[string]string{"tier": "web"}}
	}
	for _, in := range ins {
		st.Instances[in.Id] = in
	}
	return st
}

func inst(id, node string, s pb.InstanceState) *pb.Instance {
	return &pb.Instance{Id: id, Pool: "web", Node: node, State: s, Address: "127.0.0.1:1"}
}

func inputs(samples map[string]*pb.Sample) Inputs {
	return Inputs{
		Now:           t0,
		Live:          func(n string) (bool, *pb.Sample) { return true, samples[n] },
		Acked:         func(uint64) bool { return false },
		DrainDeadline: 10 * time.Second,
	}
}

const (
	up       = pb.NodeStatus_NODE_STATUS_UP
	down     = pb.NodeStatus_NODE_STATUS_DOWN
	draining = pb.NodeStatus_NODE_STATUS_DRAINING
	healthy  = pb.InstanceState_INSTANCE_STATE_HEALTHY
	starting = pb.InstanceState_INSTANCE_STATE_STARTING
)

func nodesOf(pl []*pb.Placement) map[string]int {
	out := map[string]int{}
	for _, p := range pl {
		out[p.Node]++
	}
	return out
}

func TestPlaceSpreadsThenPrefersFreeHosts(t *testing.T) {
	st := state(map[string]pb.NodeStatus{"a": up, "b": up, "c": down}, 5)
	busy := map[string]*pb.Sample{"a": {CpuPercent: 90, MemoryUsedPercent: 50}, "b": {CpuPercent: 10, MemoryUsedPercent: 50}}
	p := Make(st, inputs(busy))
	// Spread 3 and 2; the odd one goes to the freer host b; never to c (down).
	require.Equal(t, map[string]int{"a": 2, "b": 3}, nodesOf(p.Place))
	require.Empty(t, p.Drain)
}

func TestPlaceHonoursSelectorAndLiveness(t *testing.T) {
	st := state(map[string]pb.NodeStatus{"a": up, "b": up, "d": draining}, 2)
	st.Nodes["b"].Labels["tier"] = "db"
	in := inputs(nil)
	in.Live = func(n string) (bool, *pb.Sample) { return n != "a", nil }
	p := Make(st, in)
	require.Empty(t, p.Place, "a is not connected, b does not match, d is draining")
	require.Equal(t, 2, p.Unplaced["web"])
	require.Equal(t, "nodes 1 not matching the selector; 1 down or draining; 1 without their agent connected", p.UnplacedWhy["web"])
}

func TestPlaceSkipsNodesUnderACondition(t *testing.T) {
	st := state(map[string]pb.NodeStatus{"a": up, "b": up, "c": up}, 4, inst("web-1", "a", healthy))
	in := inputs(nil)
	under := map[string][]*pb.NodeCondition{
		"a": {{Type: pb.NodeConditionType_NODE_CONDITION_TYPE_DISK_PRESSURE}},
		"b": {{Type: pb.NodeConditionType_NODE_CONDITION_TYPE_DISK_STALLED}, {Type: pb.NodeConditionType_NODE_CONDITION_TYPE_MEMORY_PRESSURE}},
	}
	in.Conditions = func(n string) []*pb.NodeCondition { return under[n] }
	p := Make(st, in)
	require.Equal(t, map[string]int{"c": 3}, nodesOf(p.Place), "only c is under no condition")
	require.Empty(t, p.Drain, "an instance on a node under a condition stays")
	require.Empty(t, p.Lost)

	under["c"] = []*pb.NodeCondition{{Type: pb.NodeConditionType_NODE_CONDITION_TYPE_MEMORY_PRESSURE}}
	p = Make(st, in)
	require.Empty(t, p.Place)
	require.Equal(t, 3, p.Unplaced["web"])
	require.Equal(t, "nodes 3 under a condition: a (disk_pressure), b (disk_stalled, memory_pressure), c (memory_pressure)", p.UnplacedWhy["web"])

	delete(under, "a")
	require.Equal(t, map[string]int{"a": 3}, nodesOf(Make(st, in).Place), "a condition that ended frees its node")
}

func TestSurplusLeavesNodesUnderAConditionFirst(t *testing.T) {
	st := state(map[string]pb.NodeStatus{"a": up, "b": up}, 2,
		inst("web-1", "a", healthy), inst("web-2", "a", healthy), inst("web-3", "a", healthy),
		inst("web-4", "b", healthy), inst("web-5", "b", healthy))
	in := inputs(nil)
	require.Equal(t, []string{"web-2", "web-3", "web-5"}, Make(st, in).Drain, "without conditions, the fullest node's newest first")
	in.Conditions = func(n string) []*pb.NodeCondition {
		if n == "b" {
			return []*pb.NodeCondition{{Type: pb.NodeConditionType_NODE_CONDITION_TYPE_MEMORY_PRESSURE}}
		}
		return nil
	}
	require.Equal(t, []string{"web-3", "web-4", "web-5"}, Make(st, in).Drain, "b is under memory pressure: its instances go first")
}

func TestSurplusRemovesNotServingFirstThenFromTheFullestNode(t *testing.T) {
	st := state(map[string]pb.NodeStatus{"a": up, "b": up}, 2,
		inst("web-1", "a", healthy), inst("web-2", "a", healthy), inst("web-3", "a", healthy),
		inst("web-4", "b", healthy), inst("web-5", "b", starting))
	p := Make(st, inputs(nil))
	require.Empty(t, p.Place)
	// web-5 is not serving; then a has 3 against b's 1: its newest go.
	require.Equal(t, []string{"web-2", "web-3", "web-5"}, p.Drain)
}

func TestLostInstancesAreForgottenAndReplaced(t *testing.T) {
	st := state(map[string]pb.NodeStatus{"a": up, "b": down}, 2, inst("web-1", "a", healthy), inst("web-2", "b", healthy))
	p := Make(st, inputs(nil))
	require.Equal(t, []string{"web-2"}, p.Lost)
	require.Equal(t, map[string]int{"a": 1}, nodesOf(p.Place))
}

func TestDrainedInstanceStopsAfterAckOrDeadline(t *testing.T) {
	d := inst("web-1", "a", healthy)
	d.Draining, d.DrainIndex, d.DrainingSince = true, 40, timestamppb.New(t0.Add(-5*time.Second))
	st := state(map[string]pb.NodeStatus{"a": up}, 0, d)
	in := inputs(nil)
	require.Empty(t, Make(st, in).Stop, "not acknowledged, deadline not passed")
	in.Acked = func(i uint64) bool { return i <= 40 }
	require.Equal(t, []string{"web-1"}, Make(st, in).Stop)
	in.Acked = func(uint64) bool { return false }
	in.Now = t0.Add(5 * time.Second)
	require.Equal(t, []string{"web-1"}, Make(st, in).Stop, "deadline passed")
	d.Stop = true
	require.Empty(t, Make(st, in).Stop, "already stopping")
}

func TestDrainingNodeMovesAfterReplacementsServe(t *testing.T) {
	st := state(map[string]pb.NodeStatus{"a": draining, "b": up}, 2, inst("web-1", "a", healthy), inst("web-2", "a", healthy))
	p := Make(st, inputs(nil))
	require.Equal(t, map[string]int{"b": 2}, nodesOf(p.Place))
	require.Empty(t, p.Drain, "the old ones serve until the new ones do")

	st.Instances["web-3"] = inst("web-3", "b", healthy)
	st.Instances["web-4"] = inst("web-4", "b", starting)
	require.Empty(t, Make(st, inputs(nil)).Drain)
	st.Instances["web-4"].State = healthy
	p = Make(st, inputs(nil))
	require.Empty(t, p.Place)
	require.Equal(t, []string{"web-1", "web-2"}, p.Drain)
}

func TestSteadyStateMakesNoPlan(t *testing.T) {
	st := state(map[string]pb.NodeStatus{"a": up, "b": up}, 2, inst("web-1", "a", healthy), inst("web-2", "b", starting))
	require.True(t, Make(st, inputs(nil)).Empty())
}

func TestOlderTemplateIsReplacedOnceTheNewServes(t *testing.T) {
	st := state(map[string]pb.NodeStatus{"a": up, "b": up}, 2, inst("web-1", "a", healthy), inst("web-2", "b", healthy))
	st.Pools["web"].TemplateIndex = 9 // the instances have 0: an older template
	p := Make(st, inputs(nil))
	require.Equal(t, map[string]int{"a": 1, "b": 1}, nodesOf(p.Place))
	require.Empty(t, p.Drain)
	for _, id := range []string{"web-3", "web-4"} {
		in := inst(id, "a", healthy)
		in.TemplateIndex = 9
		st.Instances[id] = in
	}
	p = Make(st, inputs(nil))
	require.Empty(t, p.Place)
	require.Equal(t, []string{"web-1", "web-2"}, p.Drain)
}

func TestSettlingLeaderWaitsForEveryUpNodeBeforePlacing(t *testing.T) {
	st := state(map[string]pb.NodeStatus{"a": up, "b": up}, 4)
	in := inputs(nil)
	in.Live = func(n string) (bool, *pb.Sample) { return n == "a", nil }
	in.Settling = true
	require.Empty(t, Make(st, in).Place, "b's agent has not reconnected yet")
	in.Settling = false
	require.Equal(t, map[string]int{"a": 4}, nodesOf(Make(st, in).Place), "after the settle time, without b")
}

// roll applies plans to st until the plan is empty: placements start as
// STARTING and are HEALTHY one round later unless stuck says otherwise;
// drained instances leave. It checks after every round that at most
// running instances run and at least serving serve, and returns the rounds.
func roll(t *testing.T, st *pb.State, running, serving int, stuck func(id string) bool) int {
	t.Helper()
	p := st.Pools["web"]
	next := 100
	for round := 1; round <= 50; round++ {
		for _, in := range st.Instances {
			if in.State == starting && !stuck(in.Id) {
				in.State = healthy
			}
		}
		plan := Make(st, inputs(nil))
		if plan.Empty() {
			return round
		}
		for _, id := range plan.Drain {
			delete(st.Instances, id)
		}
		for _, pl := range plan.Place {
			next++
			in := inst("web-"+strconv.Itoa(next), pl.Node, starting)
			in.TemplateIndex = p.TemplateIndex
			st.Instances[in.Id] = in
		}
		nServing := 0
		for _, in := range st.Instances {
			if in.State == healthy {
				nServing++
			}
		}
		require.LessOrEqual(t, len(st.Instances), running, "round %d: too many instances run", round)
		require.GreaterOrEqual(t, nServing, serving, "round %d: too few serve", round)
	}
	t.Fatal("no steady state after 50 rounds")
	return 0
}

func TestOlderTemplateRollsMaxSurgeAtATime(t *testing.T) {
	var old []*pb.Instance
	for i := 1; i <= 4; i++ {
		old = append(old, inst("web-"+strconv.Itoa(i), []string{"a", "b"}[i%2], healthy))
	}
	st := state(map[string]pb.NodeStatus{"a": up, "b": up}, 4, old...)
	st.Pools["web"].TemplateIndex, st.Pools["web"].MaxSurge = 9, 1

	first := Make(st, inputs(nil))
	require.Len(t, first.Place, 1, "one replacement at a time")
	require.Empty(t, first.Drain)

	rounds := roll(t, st, 5, 4, func(string) bool { return false })
	require.Len(t, st.Instances, 4)
	for _, in := range st.Instances {
		require.EqualValues(t, 9, in.TemplateIndex, in.Id)
		require.Equal(t, healthy, in.State)
	}
	t.Logf("rolled 4 instances in %d rounds", rounds)

	// Blue/green (max_surge 0) starts every replacement at once.
	st = state(map[string]pb.NodeStatus{"a": up, "b": up}, 4, old...)
	st.Pools["web"].TemplateIndex = 9
	require.Len(t, Make(st, inputs(nil)).Place, 4)
}

func TestRollingStallsOnAReplacementThatNeverServes(t *testing.T) {
	st := state(map[string]pb.NodeStatus{"a": up, "b": up}, 3,
		inst("web-1", "a", healthy), inst("web-2", "b", healthy), inst("web-3", "a", starting))
	st.Pools["web"].TemplateIndex, st.Pools["web"].MaxSurge = 9, 2

	// The old instance that does not serve leaves at once; the healthy
	// ones stay while no replacement serves.
	roll(t, st, 5, 2, func(id string) bool { return id != "web-1" && id != "web-2" })
	require.Contains(t, st.Instances, "web-1")
	require.Contains(t, st.Instances, "web-2")
	require.NotContains(t, st.Instances, "web-3")
	require.Len(t, st.Instances, 5, "two old serving, three stuck replacements: desired plus the surge")
}

func TestPlaceKeepsReservationsWithinEachNode(t *testing.T) {
	st := state(map[string]pb.NodeStatus{"a": up, "b": up, "c": up}, 5)
	for name, cores := range map[string]uint32{"a": 2, "b": 4} {
		st.Nodes[name].Facts = &pb.NodeFacts{CpuCount: cores, MemoryBytes: 8 << 30}
	}
	// c's agent reported no facts: it takes no reservation.
	st.Pools["web"].Template.Resources = &pb.InstanceResources{CpuMillicores: 1500, MemoryBytes: 1 << 30}
	// A draining instance of another pool still holds its share of b.
	other := inst("api-1", "b", healthy)
	other.Pool, other.Draining, other.Resources = "api", true, &pb.InstanceResources{CpuMillicores: 1000}
	st.Instances[other.Id] = other

	p := Make(st, inputs(nil))
	// a: 1.5 of 2 cores, b: 1 + 2×1.5 = 4 of 4 cores.
	require.Equal(t, map[string]int{"a": 1, "b": 2}, nodesOf(p.Place))
	require.Equal(t, 2, p.Unplaced["web"])
	require.Equal(t, "nodes 3 without room for the reservation", p.UnplacedWhy["web"])

	// Memory counts too.
	st = state(map[string]pb.NodeStatus{"a": up}, 3)
	st.Nodes["a"].Facts = &pb.NodeFacts{CpuCount: 64, MemoryBytes: 5 << 30}
	st.Pools["web"].Template.Resources = &pb.InstanceResources{MemoryBytes: 2 << 30}
	p = Make(st, inputs(nil))
	require.Len(t, p.Place, 2)
	require.Equal(t, 1, p.Unplaced["web"])

	// Without a reservation, any live node takes instances.
	st.Pools["web"].Template.Resources = nil
	st.Nodes["a"].Facts = nil
	require.Len(t, Make(st, inputs(nil)).Place, 3)
}

func TestPlacedGroupsCountEachPoolOnEachNodeOnce(t *testing.T) {
	got := placedGroups([]*pb.Placement{
		{Pool: "web", Node: "h1"}, {Pool: "web", Node: "h2"}, {Pool: "web", Node: "h1"}, {Pool: "api", Node: "h1"},
	})
	require.Equal(t, []placedGroup{{"web", "h1", 2}, {"web", "h2", 1}, {"api", "h1", 1}}, got)
	require.Empty(t, placedGroups(nil))
}

func TestPlaceOnlyOnNodesWhoseAgentsRunTheCommand(t *testing.T) {
	st := state(map[string]pb.NodeStatus{"a": up, "b": up, "c": up}, 4)
	st.Nodes["a"].Facts = &pb.NodeFacts{AllowedCommands: []string{"/usr/bin/*"}}     // app: may be /usr/bin/app
	st.Nodes["b"].Facts = &pb.NodeFacts{AllowedCommands: []string{"/opt/other/web"}} // not app
	// c has no rules: every command.
	p := Make(st, inputs(nil))
	require.Equal(t, map[string]int{"a": 2, "c": 2}, nodesOf(p.Place))

	st.Pools["web"].Template.Command = "/opt/shop/bin/app"
	st.Nodes["c"].Facts = &pb.NodeFacts{AllowedCommands: []string{"/opt/shop/**"}}
	p = Make(st, inputs(nil))
	require.Equal(t, map[string]int{"c": 4}, nodesOf(p.Place), "only c allows /opt/shop/bin/app")

	st.Nodes["c"].Facts.AllowedCommands = []string{"/opt/shop/bin/web"}
	p = Make(st, inputs(nil))
	require.Empty(t, p.Place)
	require.Equal(t, `nodes 3 whose -allow-commands do not allow "/opt/shop/bin/app"`, p.UnplacedWhy["web"])
}

func TestInstancesOfACommandTheirNodeNoLongerAllowsMoveAfterReplacementsServe(t *testing.T) {
	st := state(map[string]pb.NodeStatus{"a": up, "b": up}, 2, inst("web-1", "a", healthy), inst("web-2", "b", healthy))
	st.Pools["web"].Template.Command = "/srv/apps/web"
	require.True(t, Make(st, inputs(nil)).Empty())

	// a's agent came back with rules that leave the command out.
	st.Nodes["a"].Facts = &pb.NodeFacts{AllowedCommands: []string{"/srv/other/**"}}
	p := Make(st, inputs(nil))
	require.Equal(t, map[string]int{"b": 1}, nodesOf(p.Place))
	require.Empty(t, p.Drain, "web-1 serves until its replacement does")

	st.Instances["web-3"] = inst("web-3", "b", healthy)
	p = Make(st, inputs(nil))
	require.Empty(t, p.Place)
	require.Equal(t, []string{"web-1"}, p.Drain)
}

func TestPlaceNothingOnANodeWhoseRulesDoNotParse(t *testing.T) {
	st := state(map[string]pb.NodeStatus{"a": up, "b": up}, 2)
	st.Nodes["a"].Facts = &pb.NodeFacts{AllowedCommands: []string{"relative/*"}} // refused at Hello; state from before
	require.Equal(t, map[string]int{"b": 2}, nodesOf(Make(st, inputs(nil)).Place))
}
