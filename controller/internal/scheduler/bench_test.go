package scheduler

import (
	"fmt"
	"testing"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// fleetState is a fleet of nodes running pools of instances, each pool
// at its desired count, spread one instance a node.
func fleetState(nodes, pools, perPool int) *pb.State {
	st := &pb.State{Nodes: map[string]*pb.Node{}, Instances: map[string]*pb.Instance{}, Pools: map[string]*pb.Pool{}}
	for i := range nodes {
		n := fmt.Sprintf("n%05d", i)
		st.Nodes[n] = &pb.Node{Name: n, Status: up, Labels: map[string]string{"tier": "web"},
			Facts: &pb.NodeFacts{CpuCount: 8, MemoryBytes: 32 << 30}}
	}
	next := 0
	for p := range pools {
		name := fmt.Sprintf("pool%03d", p)
		st.Pools[name] = &pb.Pool{Name: name, Template: &pb.InstanceTemplate{Command: "app"}, Selector: "tier=web",
			Max: uint32(perPool), Desired: uint32(perPool)}
		for i := range perPool {
			id := fmt.Sprintf("%s-%d", name, i+1)
			st.Instances[id] = &pb.Instance{Id: id, Pool: name, Node: fmt.Sprintf("n%05d", next%nodes), State: healthy, Address: "127.0.0.1:1"}
			next++
		}
	}
	return st
}

// BenchmarkMake_fleetSteady is one scheduler round over a settled fleet
// (3,000 nodes, 20 pools of 500 instances): the cost of each round the
// leader runs after a change of the state.
func BenchmarkMake_fleetSteady(b *testing.B) {
	st := fleetState(3000, 20, 500)
	in := inputs(nil)
	b.ReportAllocs()
	for b.Loop() {
		if p := Make(st, in); !p.Empty() {
			b.Fatalf("a settled fleet got a plan: %d places, %d drains", len(p.Place), len(p.Drain))
		}
	}
}

// BenchmarkMake_fleetPlaceTen places 10 more instances of one pool on the
// same fleet.
func BenchmarkMake_fleetPlaceTen(b *testing.B) {
	st := fleetState(3000, 20, 500)
	st.Pools["pool000"].Desired += 10
	st.Pools["pool000"].Max += 10
	in := inputs(nil)
	b.ReportAllocs()
	for b.Loop() {
		if p := Make(st, in); len(p.Place) != 10 {
			b.Fatalf("%d placed, want 10", len(p.Place))
		}
	}
}

// BenchmarkMake_fleetSteadyWithRules is BenchmarkMake_fleetSteady on
// nodes whose agents all have -allow-commands rules: each node's rules are
// parsed once a round, not once for each pool and instance.
func BenchmarkMake_fleetSteadyWithRules(b *testing.B) {
	st := fleetState(3000, 20, 500)
	for _, n := range st.Nodes {
		n.Facts.AllowedCommands = []string{"/srv/apps/**", "/usr/local/bin/app"}
	}
	in := inputs(nil)
	b.ReportAllocs()
	for b.Loop() {
		if p := Make(st, in); !p.Empty() {
			b.Fatalf("a settled fleet got a plan: %d places, %d drains", len(p.Place), len(p.Drain))
		}
	}
}
