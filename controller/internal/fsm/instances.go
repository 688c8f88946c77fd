package fsm

import (
	"cmp"
	"fmt"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// Reserved sums, by node, what the instances of st reserve on it, until
// they are gone (draining and stopping ones included). Nodes whose
// instances reserve nothing are absent.
func Reserved(st *pb.State) map[string]*pb.InstanceResources {
	out := map[string]*pb.InstanceResources{}
	for _, in := range st.Instances {
		AddReserved(out, in.Node, in.Resources)
	}
	return out
}

// AddReserved adds r to node's sum in reserved.
func AddReserved(reserved map[string]*pb.InstanceResources, node string, r *pb.InstanceResources) {
	if r == nil {
		return
	}
	sum := reserved[node]
	if sum == nil {
		sum = &pb.InstanceResources{}
		reserved[node] = sum
	}
	sum.CpuMillicores += r.CpuMillicores
	sum.MemoryBytes += r.MemoryBytes
}

// Routable reports whether balancers send requests to an instance: it is
// healthy, has an address, and is not being removed.
func Routable(in *pb.Instance) bool {
	return in.GetState() == pb.InstanceState_INSTANCE_STATE_HEALTHY && in.GetAddress() != "" &&
		!in.GetDraining() && !in.GetStop()
}

// touchInstance records a change of in at index, and marks the table
// changed when the change moved it in or out of the routable set or changed
// its address.
func (f *FSM) touchInstance(in *pb.Instance, wasRoutable bool, oldAddr string, index uint64) {
	in.ModifyIndex = index
	if Routable(in) != wasRoutable || (wasRoutable && in.Address != oldAddr) {
		f.tableDirty = true
	}
}

func (f *FSM) scalePool(c *pb.ScalePoolCommand, index uint64) error {
	p, err := f.pool(c.GetPool())
	if err != nil {
		return err
	}
	if p.Template == nil {
		return status.Errorf(codes.FailedPrecondition, "pool %q has no instance template: its backends are static", p.Name)
	}
	if c.Desired < p.Min || c.Desired > p.Max {
		return status.Errorf(codes.InvalidArgument, "desired: %d is outside the pool's min %d and max %d", c.Desired, p.Min, p.Max)
	}
	if p.Desired != c.Desired {
		p.Desired, p.ModifyIndex = c.Desired, index
	}
	return nil
}

func (f *FSM) placeInstances(c *pb.PlaceInstancesCommand, cmd *pb.Command, index uint64) error {
	// Check every placement before applying any: the command is whole.
	for i, pl := range c.GetPlacements() {
		p := f.state.Pools[pl.GetPool()]
		if p == nil || p.Template == nil {
			return status.Errorf(codes.FailedPrecondition, "placements[%d]: pool %q does not exist or has no template", i, pl.GetPool())
		}
		if f.state.Nodes[pl.GetNode()] == nil {
			return status.Errorf(codes.FailedPrecondition, "placements[%d]: node %q does not exist", i, pl.GetNode())
		}
	}
	for _, pl := range c.GetPlacements() {
		p := f.state.Pools[pl.Pool]
		if p.NextInstance == 0 {
			p.NextInstance = 1
		}
		id := fmt.Sprintf("%s-%d", p.Name, p.NextInstance)
		p.NextInstance++
		in := &pb.Instance{
			Id: id, Pool: p.Name, Node: pl.Node,
			State: pb.InstanceState_INSTANCE_STATE_PENDING, Since: cmd.GetTime(),
			Term: c.Term, CreateIndex: index, ModifyIndex: index, TemplateIndex: p.TemplateIndex,
			Resources: proto.CloneOf(p.Template.Resources),
		}
		f.state.Instances[id] = in
		f.indexInstance(in)
	}
	return nil
}

func (f *FSM) drainInstances(ids []string, cmd *pb.Command, index uint64, stop bool) error {
	for _, id := range ids {
		in := f.state.Instances[id]
		if in == nil {
			continue // already gone: removing it again is a no-op
		}
		was := Routable(in)
		if !in.Draining {
			in.Draining, in.DrainingSince, in.DrainIndex = true, cmd.GetTime(), index
		}
		if stop {
			in.Stop = true
		}
		f.touchInstance(in, was, in.Address, index)
	}
	return nil
}

func (f *FSM) reportInstances(c *pb.ReportInstancesCommand, index uint64) error {
	reported := make(map[string]bool, len(c.GetInstances()))
	for _, s := range c.GetInstances() {
		reported[s.GetId()] = true
		in := f.state.Instances[s.GetId()]
		if in == nil || in.Node != c.Node {
			// Not (or no longer) this node's: its agent stops it, since no
			// assignment names it.
			continue
		}
		was, oldAddr := Routable(in), in.Address
		applyStatus(in, s)
		f.touchInstance(in, was, oldAddr, index)
	}
	if !c.Complete {
		return nil
	}
	for id, in := range f.byNode[c.Node] {
		if in.Stop && !reported[id] {
			f.deleteInstance(id)
		}
	}
	return nil
}

// applyStatus copies what an agent reports of an instance into it.
func applyStatus(in *pb.Instance, s *pb.InstanceStatus) {
	in.Address, in.State, in.Since = s.Address, s.State, s.Since
	in.ExitCode, in.Restarts, in.Message, in.Pid = s.ExitCode, s.Restarts, s.Message, s.Pid
}

// Reflects reports whether in already holds what s reports (the time of
// the state aside): applying s would change nothing that matters.
func Reflects(in *pb.Instance, s *pb.InstanceStatus) bool {
	return in.Address == s.Address && in.State == s.State && in.ExitCode == s.ExitCode &&
		in.Restarts == s.Restarts && in.Message == s.Message && in.Pid == s.Pid
}

func (f *FSM) deleteInstance(id string) {
	in := f.state.Instances[id]
	if in == nil {
		return
	}
	if Routable(in) {
		f.tableDirty = true
	}
	f.unindexInstance(in)
	delete(f.state.Instances, id)
}

// indexInstance and unindexInstance keep byNode.
func (f *FSM) indexInstance(in *pb.Instance) {
	m := f.byNode[in.Node]
	if m == nil {
		m = map[string]*pb.Instance{}
		f.byNode[in.Node] = m
	}
	m[in.Id] = in
}

func (f *FSM) unindexInstance(in *pb.Instance) {
	if m := f.byNode[in.Node]; m != nil {
		delete(m, in.Id)
		if len(m) == 0 {
			delete(f.byNode, in.Node)
		}
	}
}

func (f *FSM) drainNode(c *pb.DrainNodeCommand, cmd *pb.Command, index uint64) error {
	n := f.state.Nodes[c.GetNode()]
	if n == nil {
		return status.Errorf(codes.NotFound, "node %q not found", c.GetNode())
	}
	n.Drain = c.Drain
	switch {
	case c.Drain && n.Status == pb.NodeStatus_NODE_STATUS_UP:
		n.Status, n.StatusTime = pb.NodeStatus_NODE_STATUS_DRAINING, cmd.GetTime()
	case !c.Drain && n.Status == pb.NodeStatus_NODE_STATUS_DRAINING:
		n.Status, n.StatusTime = pb.NodeStatus_NODE_STATUS_UP, cmd.GetTime()
	}
	n.ModifyIndex = index
	return nil
}

// PoolInstances returns copies of a pool's instances in id order.
func PoolInstances(st *pb.State, pool string) []*pb.Instance {
	var out []*pb.Instance
	for _, in := range st.Instances {
		if in.Pool == pool {
			out = append(out, proto.CloneOf(in))
		}
	}
	SortInstances(out)
	return out
}

// SortInstances orders instances by pool, then by the number in their id,
// so that web-10 comes after web-9.
func SortInstances(ins []*pb.Instance) {
	slices.SortFunc(ins, CompareInstances)
}

// CompareInstances orders instances by pool, then by number within the
// pool (web-2 before web-10).
func CompareInstances(a, b *pb.Instance) int {
	if c := cmp.Compare(a.Pool, b.Pool); c != 0 {
		return c
	}
	if c := cmp.Compare(len(a.Id), len(b.Id)); c != 0 {
		return c
	}
	return cmp.Compare(a.Id, b.Id)
}

func (f *FSM) setInstanceWeights(c *pb.SetInstanceWeightsCommand, index uint64) error {
	for id, w := range c.GetWeights() {
		in := f.state.Instances[id]
		if in == nil || in.Weight == w {
			continue
		}
		in.Weight, in.ModifyIndex = w, index
		if Routable(in) {
			f.tableDirty = true
		}
	}
	return nil
}
