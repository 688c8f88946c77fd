package fsm

import (
	"bytes"
	"io"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

func templatePool(a *applier) {
	a.t.Helper()
	require.NoError(a.t, a.apply(&pb.Command{Command: &pb.Command_CreatePool{CreatePool: &pb.CreatePoolCommand{
		Pool: &pb.Pool{Name: "web", PathPrefix: "/", Template: &pb.InstanceTemplate{Command: "app"}, Max: 10, Desired: 1},
	}}}).Err)
	require.NoError(a.t, a.apply(&pb.Command{Command: &pb.Command_RegisterNode{RegisterNode: &pb.RegisterNodeCommand{
		Node: "n1", Facts: &pb.NodeFacts{}}}}).Err)
}

func place(a *applier, n int) {
	a.t.Helper()
	c := &pb.PlaceInstancesCommand{Term: 3}
	for range n {
		c.Placements = append(c.Placements, &pb.Placement{Pool: "web", Node: "n1"})
	}
	require.NoError(a.t, a.apply(&pb.Command{Command: &pb.Command_PlaceInstances{PlaceInstances: c}}).Err)
}

func report(a *applier, node string, ins ...*pb.InstanceStatus) {
	a.t.Helper()
	require.NoError(a.t, a.apply(&pb.Command{Command: &pb.Command_ReportInstances{ReportInstances: &pb.ReportInstancesCommand{
		Node: node, Instances: ins, Complete: true}}}).Err)
}

func poolsIndex(f *FSM) (idx uint64) {
	f.Read(func(st *pb.State) { idx = st.PoolsIndex })
	return idx
}

func TestInstances_lifecycleMovesTheTableVersion(t *testing.T) {
	a := &applier{t: t, f: New(nil)}
	templatePool(a)
	place(a, 2)
	st := a.f.Clone()
	require.Len(t, st.Instances, 2)
	require.Equal(t, pb.InstanceState_INSTANCE_STATE_PENDING, st.Instances["web-1"].State)
	require.Equal(t, uint64(3), st.Instances["web-2"].Term)
	require.Equal(t, uint64(3), st.Pools["web"].NextInstance)

	v := poolsIndex(a.f)
	starting := &pb.InstanceStatus{Id: "web-1", Address: "127.0.0.2:4000", State: pb.InstanceState_INSTANCE_STATE_STARTING}
	report(a, "n1", starting)
	require.Equal(t, v, poolsIndex(a.f), "a starting instance is not in the table")

	report(a, "n1", &pb.InstanceStatus{Id: "web-1", Address: "127.0.0.2:4000", State: pb.InstanceState_INSTANCE_STATE_HEALTHY})
	require.Greater(t, poolsIndex(a.f), v, "a healthy one enters it")
	v = poolsIndex(a.f)

	// Another node cannot report this node's instance.
	report(a, "n2", &pb.InstanceStatus{Id: "web-1", State: pb.InstanceState_INSTANCE_STATE_EXITED})
	require.Equal(t, pb.InstanceState_INSTANCE_STATE_HEALTHY, a.f.Clone().Instances["web-1"].State)

	require.NoError(t, a.apply(&pb.Command{Command: &pb.Command_DrainInstances{DrainInstances: &pb.DrainInstancesCommand{
		Instances: []string{"web-1", "gone"}}}}).Err)
	require.Greater(t, poolsIndex(a.f), v, "a draining one leaves the table")
	in := a.f.Clone().Instances["web-1"]
	require.True(t, in.Draining)
	require.Equal(t, poolsIndex(a.f), in.DrainIndex)

	require.NoError(t, a.apply(&pb.Command{Command: &pb.Command_StopInstances{StopInstances: &pb.StopInstancesCommand{
		Instances: []string{"web-1"}}}}).Err)
	require.True(t, a.f.Clone().Instances["web-1"].Stop)
	// Still reported: kept. Then gone from a complete report: forgotten.
	report(a, "n1", &pb.InstanceStatus{Id: "web-1", State: pb.InstanceState_INSTANCE_STATE_STOPPING})
	require.Contains(t, a.f.Clone().Instances, "web-1")
	report(a, "n1")
	st = a.f.Clone()
	require.NotContains(t, st.Instances, "web-1")
	require.Contains(t, st.Instances, "web-2", "not being stopped: kept though unreported")
}

func TestInstances_scaleAndDeletePool(t *testing.T) {
	a := &applier{t: t, f: New(nil)}
	templatePool(a)
	require.NoError(t, a.apply(&pb.Command{Command: &pb.Command_ScalePool{ScalePool: &pb.ScalePoolCommand{Pool: "web", Desired: 4}}}).Err)
	require.Equal(t, uint32(4), a.f.Clone().Pools["web"].Desired)
	err := a.apply(&pb.Command{Command: &pb.Command_ScalePool{ScalePool: &pb.ScalePoolCommand{Pool: "web", Desired: 11}}}).Err
	require.Equal(t, codes.InvalidArgument, status.Code(err))
	require.NoError(t, a.apply(createPool("", "static")).Err)
	err = a.apply(&pb.Command{Command: &pb.Command_ScalePool{ScalePool: &pb.ScalePoolCommand{Pool: "static", Desired: 1}}}).Err
	require.Equal(t, codes.FailedPrecondition, status.Code(err))

	err = a.apply(&pb.Command{Command: &pb.Command_PlaceInstances{PlaceInstances: &pb.PlaceInstancesCommand{
		Placements: []*pb.Placement{{Pool: "web", Node: "n1"}, {Pool: "web", Node: "nope"}}}}}).Err
	require.Equal(t, codes.FailedPrecondition, status.Code(err))
	require.Empty(t, a.f.Clone().Instances, "a placement command applies whole or not at all")

	place(a, 2)
	require.NoError(t, a.apply(&pb.Command{Command: &pb.Command_DeletePool{DeletePool: &pb.DeletePoolCommand{Pool: "web"}}}).Err)
	require.Empty(t, a.f.Clone().Instances)
}

func TestInstances_drainIsStickyAcrossDownAndUp(t *testing.T) {
	a := &applier{t: t, f: New(nil)}
	templatePool(a)
	require.NoError(t, a.apply(&pb.Command{Command: &pb.Command_DrainNode{DrainNode: &pb.DrainNodeCommand{Node: "n1", Drain: true}}}).Err)
	status := func() pb.NodeStatus { return a.f.Clone().Nodes["n1"].Status }
	require.Equal(t, pb.NodeStatus_NODE_STATUS_DRAINING, status())
	require.NoError(t, a.apply(&pb.Command{Command: &pb.Command_SetNodeStatus{SetNodeStatus: &pb.SetNodeStatusCommand{Node: "n1", Status: pb.NodeStatus_NODE_STATUS_DOWN}}}).Err)
	require.NoError(t, a.apply(&pb.Command{Command: &pb.Command_SetNodeStatus{SetNodeStatus: &pb.SetNodeStatusCommand{Node: "n1", Status: pb.NodeStatus_NODE_STATUS_UP}}}).Err)
	require.Equal(t, pb.NodeStatus_NODE_STATUS_DRAINING, status())
	require.NoError(t, a.apply(&pb.Command{Command: &pb.Command_DrainNode{DrainNode: &pb.DrainNodeCommand{Node: "n1"}}}).Err)
	require.Equal(t, pb.NodeStatus_NODE_STATUS_UP, status())
}

func TestScaleEvents_actingEventSetsDesiredAndOldOnesExpire(t *testing.T) {
	a := &applier{t: t, f: New(nil)}
	templatePool(a)
	rec := func(ev *pb.ScaleEvent) error {
		return a.apply(&pb.Command{Command: &pb.Command_RecordScaleEvent{RecordScaleEvent: &pb.RecordScaleEventCommand{Event: ev}}}).Err
	}
	require.NoError(t, rec(&pb.ScaleEvent{Pool: "web", PreviousDesired: 1, Desired: 3, Acted: true}))
	st := a.f.Clone()
	require.Equal(t, uint32(3), st.Pools["web"].Desired)
	require.Equal(t, "web-1", st.ScaleEvents["web"].Events[0].Id)

	// Decided against a desired count that changed since: kept, not applied.
	require.NoError(t, rec(&pb.ScaleEvent{Pool: "web", PreviousDesired: 1, Desired: 5, Acted: true}))
	st = a.f.Clone()
	require.Equal(t, uint32(3), st.Pools["web"].Desired)
	require.False(t, st.ScaleEvents["web"].Events[1].Acted)
	require.Contains(t, st.ScaleEvents["web"].Events[1].Reason, "not applied")

	require.Error(t, rec(&pb.ScaleEvent{Pool: "web", PreviousDesired: 3, Desired: 50, Acted: true}), "beyond max")
	require.Error(t, rec(&pb.ScaleEvent{Pool: "nope"}))

	require.NoError(t, a.apply(&pb.Command{Command: &pb.Command_RecordProviderResult{RecordProviderResult: &pb.RecordProviderResultCommand{
		Pool: "web", Event: "web-1", Result: &pb.ProviderResult{Kind: "exec", Ok: true, Done: true}}}}).Err)
	require.True(t, a.f.Clone().ScaleEvents["web"].Events[0].Provider.Ok)

	// An hour later the old events are gone.
	a.index += 4000
	require.NoError(t, rec(&pb.ScaleEvent{Pool: "web", PreviousDesired: 3, Desired: 3}))
	evs := a.f.Clone().ScaleEvents["web"].Events
	require.Len(t, evs, 1)
	require.Equal(t, "web-4", evs[0].Id)
}

func TestUpdatePool_keepsCountersAndMarksANewTemplate(t *testing.T) {
	a := &applier{t: t, f: New(nil)}
	templatePool(a)
	place(a, 1)
	before := a.f.Clone().Pools["web"]
	require.NotZero(t, before.TemplateIndex)
	require.Equal(t, before.TemplateIndex, a.f.Clone().Instances["web-1"].TemplateIndex)
	update := func(p *pb.Pool) error {
		return a.apply(&pb.Command{Command: &pb.Command_UpdatePool{UpdatePool: &pb.UpdatePoolCommand{Pool: p}}}).Err
	}
	// Same template, new bounds: desired kept, clamped into them.
	require.NoError(t, a.apply(&pb.Command{Command: &pb.Command_ScalePool{ScalePool: &pb.ScalePoolCommand{Pool: "web", Desired: 5}}}).Err)
	require.NoError(t, update(&pb.Pool{Name: "web", PathPrefix: "/", Template: &pb.InstanceTemplate{Command: "app"}, Max: 3}))
	p := a.f.Clone().Pools["web"]
	require.Equal(t, uint32(3), p.Desired)
	require.Equal(t, before.TemplateIndex, p.TemplateIndex, "same template")
	require.Equal(t, before.NextInstance, p.NextInstance)
	require.Equal(t, before.CreateIndex, p.CreateIndex)

	require.NoError(t, update(&pb.Pool{Name: "web", PathPrefix: "/", Template: &pb.InstanceTemplate{Command: "app", Args: []string{"-v2"}}, Max: 3, Desired: 2}))
	p = a.f.Clone().Pools["web"]
	require.Equal(t, uint32(2), p.Desired)
	require.Greater(t, p.TemplateIndex, before.TemplateIndex, "a new template")
	require.Len(t, a.f.Clone().Instances, 1, "the old instance runs until it is replaced")

	// A placed instance keeps the reservation of its template.
	res := &pb.InstanceResources{CpuMillicores: 500, MemoryBytes: 1 << 28}
	require.NoError(t, update(&pb.Pool{Name: "web", PathPrefix: "/", Template: &pb.InstanceTemplate{Command: "app", Args: []string{"-v2"}, Resources: res}, Max: 3, Desired: 2}))
	require.Greater(t, a.f.Clone().Pools["web"].TemplateIndex, p.TemplateIndex, "a new reservation is a new template")
	place(a, 1)
	require.True(t, proto.Equal(res, a.f.Clone().Instances["web-2"].Resources))
	require.Nil(t, a.f.Clone().Instances["web-1"].Resources)

	require.NoError(t, a.apply(createPool("", "other")).Err)
	err := update(&pb.Pool{Name: "web", PathPrefix: "/other", Template: &pb.InstanceTemplate{Command: "app"}})
	require.Equal(t, codes.FailedPrecondition, status.Code(err), "the route is taken")
	require.Equal(t, codes.NotFound, status.Code(update(&pb.Pool{Name: "nope"})))

	// Without a template, its instances are forgotten.
	require.NoError(t, update(&pb.Pool{Name: "web", PathPrefix: "/"}))
	require.Empty(t, a.f.Clone().Instances)
}

func TestAssignmentsChanged_wakesOnlyTheNodesConcerned(t *testing.T) {
	a := &applier{t: t, f: New(nil)}
	templatePool(a)
	require.NoError(t, a.apply(&pb.Command{Command: &pb.Command_RegisterNode{RegisterNode: &pb.RegisterNodeCommand{
		Node: "n2", Facts: &pb.NodeFacts{}}}}).Err)
	closed := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	n1, n2 := a.f.AssignmentsChanged("n1"), a.f.AssignmentsChanged("n2")
	require.Equal(t, n1, a.f.AssignmentsChanged("n1"), "one channel per node until it fires")
	place(a, 1)
	require.True(t, closed(n1), "a placement on n1")
	require.False(t, closed(n2), "a placement on n1 leaves n2 alone")

	n1 = a.f.AssignmentsChanged("n1")
	report(a, "n1", &pb.InstanceStatus{Id: "web-1", State: pb.InstanceState_INSTANCE_STATE_HEALTHY, Address: "127.0.0.1:1"})
	require.NoError(t, a.apply(&pb.Command{Command: &pb.Command_DrainInstances{DrainInstances: &pb.DrainInstancesCommand{Instances: []string{"web-1"}}}}).Err)
	require.Error(t, a.apply(&pb.Command{Command: &pb.Command_PlaceInstances{PlaceInstances: &pb.PlaceInstancesCommand{
		Placements: []*pb.Placement{{Pool: "web", Node: "n1"}, {Pool: "web", Node: "nope"}}}}}).Err, "a placement that fails")
	require.False(t, closed(n1), "reports, draining and failed commands change no assignment")
	require.NoError(t, a.apply(&pb.Command{Command: &pb.Command_StopInstances{StopInstances: &pb.StopInstancesCommand{Instances: []string{"web-1"}}}}).Err)
	require.True(t, closed(n1), "a stop")
	require.False(t, closed(n2))

	n1 = a.f.AssignmentsChanged("n1")
	require.NoError(t, a.apply(&pb.Command{Command: &pb.Command_DeleteInstances{DeleteInstances: &pb.DeleteInstancesCommand{Instances: []string{"web-1"}}}}).Err)
	require.True(t, closed(n1), "a deletion")

	require.NoError(t, a.apply(&pb.Command{Command: &pb.Command_PlaceInstances{PlaceInstances: &pb.PlaceInstancesCommand{
		Placements: []*pb.Placement{{Pool: "web", Node: "n2"}}}}}).Err)
	require.True(t, closed(n2), "a placement on n2")
	n1, n2 = a.f.AssignmentsChanged("n1"), a.f.AssignmentsChanged("n2")
	require.NoError(t, a.apply(&pb.Command{Command: &pb.Command_UpdatePool{UpdatePool: &pb.UpdatePoolCommand{
		Pool: &pb.Pool{Name: "web", PathPrefix: "/", Template: &pb.InstanceTemplate{Command: "app2"}, Max: 10}}}}).Err)
	require.True(t, closed(n2), "an update of a pool n2 runs")
	require.False(t, closed(n1), "n1 runs nothing of it any more")
	n2 = a.f.AssignmentsChanged("n2")
	require.NoError(t, a.apply(&pb.Command{Command: &pb.Command_DeletePool{DeletePool: &pb.DeletePoolCommand{Pool: "web"}}}).Err)
	require.True(t, closed(n2), "a deletion of a pool n2 runs")
	require.False(t, closed(n1))

	snap, err := a.f.Snapshot()
	require.NoError(t, err)
	sink := &memSink{}
	require.NoError(t, snap.Persist(sink))
	require.NoError(t, a.f.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))))
	require.True(t, closed(n1), "a restore wakes every node")
}

// TestByNode_followsEveryChangeOfTheInstances applies a long random
// sequence of the commands that create, stop and remove instances, and
// checks after each that the index by node holds exactly the state's
// instances.
func TestByNode_followsEveryChangeOfTheInstances(t *testing.T) {
	a := &applier{t: t, f: New(nil)}
	nodes := []string{"n1", "n2", "n3", "n4"}
	for _, n := range nodes {
		require.NoError(t, a.apply(&pb.Command{Command: &pb.Command_RegisterNode{RegisterNode: &pb.RegisterNodeCommand{
			Node: n, Facts: &pb.NodeFacts{}}}}).Err)
	}
	pool := func(name string, template bool) *pb.Pool {
		p := &pb.Pool{Name: name, PathPrefix: "/" + name, Max: 1000}
		if template {
			p.Template = &pb.InstanceTemplate{Command: "app"}
		}
		return p
	}
	for _, name := range []string{"web", "api"} {
		require.NoError(t, a.apply(&pb.Command{Command: &pb.Command_CreatePool{CreatePool: &pb.CreatePoolCommand{Pool: pool(name, true)}}}).Err)
	}
	check := func(step int) {
		want := map[string]map[string]*pb.Instance{}
		for id, in := range a.f.state.Instances {
			if want[in.Node] == nil {
				want[in.Node] = map[string]*pb.Instance{}
			}
			want[in.Node][id] = in
		}
		require.Equal(t, len(want), len(a.f.byNode), "step %d: nodes", step)
		for n, ins := range want {
			require.Equal(t, len(ins), len(a.f.byNode[n]), "step %d: node %s", step, n)
			for id, in := range ins {
				require.Same(t, in, a.f.byNode[n][id], "step %d: %s", step, id)
			}
		}
	}
	ids := func() []string {
		var out []string
		for id := range a.f.state.Instances {
			out = append(out, id)
		}
		slices.Sort(out)
		return out
	}
	r := rand.New(rand.NewPCG(1, 2))
	pick := func(s []string, n int) []string {
		var out []string
		for range n {
			if len(s) > 0 {
				out = append(out, s[r.IntN(len(s))])
			}
		}
		return out
	}
	pools := []string{"web", "api"}
	for step := range 600 {
		switch op := r.IntN(9); op {
		case 0, 1, 2:
			c := &pb.PlaceInstancesCommand{}
			for range 1 + r.IntN(4) {
				c.Placements = append(c.Placements, &pb.Placement{Pool: pools[r.IntN(2)], Node: nodes[r.IntN(len(nodes))]})
			}
			a.apply(&pb.Command{Command: &pb.Command_PlaceInstances{PlaceInstances: c}}) // fails on a pool without template
		case 3:
			require.NoError(t, a.apply(&pb.Command{Command: &pb.Command_StopInstances{StopInstances: &pb.StopInstancesCommand{Instances: pick(ids(), 2)}}}).Err)
		case 4:
			require.NoError(t, a.apply(&pb.Command{Command: &pb.Command_DeleteInstances{DeleteInstances: &pb.DeleteInstancesCommand{Instances: pick(ids(), 1)}}}).Err)
		case 5:
			// A complete report of some of a node's instances: the stopped
			// ones it leaves out are forgotten.
			n := nodes[r.IntN(len(nodes))]
			var ins []*pb.InstanceStatus
			for id, in := range a.f.byNode[n] {
				if r.IntN(2) == 0 || !in.Stop {
					ins = append(ins, &pb.InstanceStatus{Id: id, State: pb.InstanceState_INSTANCE_STATE_HEALTHY, Address: "127.0.0.1:1"})
				}
			}
			report(a, n, ins...)
		case 6:
			name := pools[r.IntN(2)]
			a.apply(&pb.Command{Command: &pb.Command_DeletePool{DeletePool: &pb.DeletePoolCommand{Pool: name}}})
			require.NoError(t, a.apply(&pb.Command{Command: &pb.Command_CreatePool{CreatePool: &pb.CreatePoolCommand{Pool: pool(name, true)}}}).Err)
		case 7:
			// Without a template its instances are forgotten; then with one
			// again.
			name := pools[r.IntN(2)]
			require.NoError(t, a.apply(&pb.Command{Command: &pb.Command_UpdatePool{UpdatePool: &pb.UpdatePoolCommand{Pool: pool(name, r.IntN(2) == 0)}}}).Err)
		case 8:
			snap, err := a.f.Snapshot()
			require.NoError(t, err)
			sink := &memSink{}
			require.NoError(t, snap.Persist(sink))
			require.NoError(t, a.f.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))))
		}
		check(step)
	}
	require.NotEmpty(t, a.f.state.Instances, "the sequence leaves some instances")
}
