// Package scheduler is the leader loop that makes the instances of pools
// with a template match what is wanted: it places missing instances on
// live nodes that match a pool's selector, spreading each pool across
// nodes and preferring free CPU and memory; it removes surplus instances in
// two steps (out of the tables, then stopped once every balancer
// acknowledged a table without them, or a deadline passed); it forgets the
// instances of nodes that went down, and moves those of draining nodes.
//
// Every decision is a Raft command stamped with the leader's term; the
// loop keeps no state of its own, so a new leader carries on where the old
// one stopped.
package scheduler

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hostscale/hostscale/controller/internal/agents"
	"github.com/hostscale/hostscale/controller/internal/fsm"
	"github.com/hostscale/hostscale/internal/commands"
	"github.com/hostscale/hostscale/internal/labels"
	"github.com/hostscale/hostscale/internal/logging"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// Inputs is what a plan is made from besides the state.
type Inputs struct {
	Now time.Time
	// Live reports whether a node's agent streams to this leader, and its
	// latest sample (nil when none).
	Live func(node string) (connected bool, latest *pb.Sample)
	// Conditions, when set, lists the conditions the node's agent last
	// reported: a node under any takes no new instance (the kubelet's
	// pressure conditions taint a node NoSchedule).
	Conditions func(node string) []*pb.NodeCondition
	// Acked reports whether every balancer acknowledged a table at index
	// or newer.
	Acked func(index uint64) bool
	// DrainDeadline: an instance out of the tables this long is stopped
	// even if a balancer did not acknowledge.
	DrainDeadline time.Duration
	// Settling is set while a new leader waits for the agents to reconnect
	// to it: nothing is placed while an up node that could take a pool's
	// instances has not, so that one early agent does not get them all.
	Settling bool
}

// Plan is one round's decisions.
type Plan struct {
	// Lost instances (their node is down or gone) to forget.
	Lost []string
	// New instances to create.
	Place []*pb.Placement
	// Instances to take out of the tables.
	Drain []string
	// Drained instances to stop.
	Stop []string
	// Unplaced counts, by pool, instances wanted that no node can take;
	// UnplacedWhy says why, by pool.
	Unplaced    map[string]int
	UnplacedWhy map[string]string
}

// Empty reports whether the plan changes nothing.
func (p *Plan) Empty() bool {
	return len(p.Lost) == 0 && len(p.Place) == 0 && len(p.Drain) == 0 && len(p.Stop) == 0
}

// Make plans one round over st.
func Make(st *pb.State, in Inputs) *Plan {
	plan := &Plan{Unplaced: map[string]int{}, UnplacedWhy: map[string]string{}}
	// Sized from a first count, so that a fleet's maps do not grow by
	// steps in every round.
	sizes := make(map[string]int, len(st.Pools))
	for _, inst := range st.Instances {
		sizes[inst.Pool]++
	}
	byPool := make(map[string][]*pb.Instance, len(sizes))
	// perNode counts each pool's active instances on each node, including
	// this round's placements.
	perNode := make(map[string]map[string]int, len(sizes))
	for pool, n := range sizes {
		byPool[pool] = make([]*pb.Instance, 0, n)
		perNode[pool] = make(map[string]int, min(n, len(st.Nodes)))
	}
	// reserved sums, by node, what its instances reserve, and this round's
	// placements.
	reserved := make(map[string]*pb.InstanceResources, len(st.Nodes))
	for _, inst := range st.Instances {
		fsm.AddReserved(reserved, inst.Node, inst.Resources)
		n := st.Nodes[inst.Node]
		if n == nil || n.Status == pb.NodeStatus_NODE_STATUS_DOWN {
			plan.Lost = append(plan.Lost, inst.Id)
			continue
		}
		if inst.Draining && !inst.Stop {
			if in.Acked(inst.DrainIndex) || in.Now.Sub(inst.DrainingSince.AsTime()) >= in.DrainDeadline {
				plan.Stop = append(plan.Stop, inst.Id)
			}
		}
		if inst.Draining || inst.Stop {
			continue
		}
		byPool[inst.Pool] = append(byPool[inst.Pool], inst)
		if perNode[inst.Pool] == nil {
			perNode[inst.Pool] = map[string]int{}
		}
		perNode[inst.Pool][inst.Node]++
	}
	slices.Sort(plan.Lost)
	slices.Sort(plan.Stop)
	rules := nodeRules(st)

	pools := make([]string, 0, len(st.Pools))
	for name, p := range st.Pools {
		if p.Template != nil {
			pools = append(pools, name)
		}
	}
	slices.Sort(pools)
	for _, name := range pools {
		p := st.Pools[name]
		var good, moving []*pb.Instance
		for _, inst := range byPool[name] {
			// Instances on a draining node, of an older template, or on a
			// node whose agent no longer allows their command (it
			// restarted with other -allow-commands, and will not start
			// them again) are replaced: they serve until their
			// replacements do.
			if st.Nodes[inst.Node].Status == pb.NodeStatus_NODE_STATUS_DRAINING || inst.TemplateIndex < p.TemplateIndex ||
				!rules.runs(inst.Node, p.Template.GetCommand()) {
				moving = append(moving, inst)
			} else {
				good = append(good, inst)
			}
		}
		want := int(p.Desired)
		switch {
		case len(good) < want:
			if perNode[name] == nil {
				perNode[name] = map[string]int{}
			}
			n := want - len(good)
			if p.MaxSurge > 0 && len(moving) > 0 {
				// Rolling: at most want+MaxSurge instances run, old
				// ones included.
				n = min(n, max(0, want+int(p.MaxSurge)-len(good)-len(moving)))
			}
			placed, why := place(st, in, p, n, perNode[name], reserved, rules)
			plan.Place = append(plan.Place, placed...)
			if short := n - len(placed); short > 0 {
				plan.Unplaced[name] = short
				plan.UnplacedWhy[name] = why
			}
		case len(good) > want:
			plan.Drain = append(plan.Drain, surplus(good, len(good)-want, perNode[name], in.under)...)
		}
		plan.Drain = append(plan.Drain, replaced(moving, countHealthy(good), want, p.MaxSurge > 0)...)
	}
	slices.Sort(plan.Drain)
	return plan
}

// replaced chooses which of the instances being replaced (moving) leave,
// given the replacements that serve: all of them once those are enough, or,
// rolling, as many as keep the pool's serving instances at want, those not
// serving first, then the oldest.
func replaced(moving []*pb.Instance, serving, want int, rolling bool) []string {
	n := 0
	switch {
	case serving >= want:
		n = len(moving)
	case rolling:
		// Those not serving leave first: they cost no capacity.
		h := countHealthy(moving)
		n = len(moving) - h + min(h, max(0, serving+h-want))
	}
	if n == 0 {
		return nil
	}
	moving = slices.Clone(moving)
	slices.SortFunc(moving, func(a, b *pb.Instance) int {
		if c := notServingFirst(a, b); c != 0 {
			return c
		}
		return cmp.Compare(seq(a.Id), seq(b.Id))
	})
	out := make([]string, n)
	for i := range n {
		out[i] = moving[i].Id
	}
	return out
}

// notServingFirst orders an instance that does not serve before one that
// does, and is 0 when both serve or neither does.
func notServingFirst(a, b *pb.Instance) int {
	ah, bh := a.State == pb.InstanceState_INSTANCE_STATE_HEALTHY, b.State == pb.InstanceState_INSTANCE_STATE_HEALTHY
	switch {
	case ah == bh:
		return 0
	case bh:
		return -1
	default:
		return 1
	}
}

func countHealthy(ins []*pb.Instance) int {
	n := 0
	for _, in := range ins {
		if in.State == pb.InstanceState_INSTANCE_STATE_HEALTHY {
			n++
		}
	}
	return n
}

// fits reports whether node has room for r besides what it has reserved:
// within its cores and memory as its agent reported them. A node whose
// facts are unknown takes no reservation.
func fits(node *pb.Node, reserved *pb.InstanceResources, r *pb.InstanceResources) bool {
	if r.GetCpuMillicores() == 0 && r.GetMemoryBytes() == 0 {
		return true
	}
	cpu := uint64(node.GetFacts().GetCpuCount()) * 1000
	return uint64(reserved.GetCpuMillicores())+uint64(r.GetCpuMillicores()) <= cpu &&
		reserved.GetMemoryBytes()+r.GetMemoryBytes() <= node.GetFacts().GetMemoryBytes()
}

// place chooses nodes for n new instances of p, one at a time, among
// those with room for its reservation: the node with the fewest of the
// pool's instances, then the most free CPU and memory, then by name. It
// adds each placement to count and reserved. When it places fewer than
// n, why says what kept the nodes out.
func place(st *pb.State, in Inputs, p *pb.Pool, n int, count map[string]int, reserved map[string]*pb.InstanceResources, rules commandRules) (out []*pb.Placement, why string) {
	sel, err := labels.Parse(p.Selector)
	if err != nil {
		return nil, fmt.Sprintf("the selector %q does not parse", p.Selector)
	}
	type cand struct {
		name string
		free float64
	}
	var cands []cand
	var noMatch, notUp, notConnected, refusing, full int
	var under []string
	for name, node := range st.Nodes {
		switch {
		case !sel.Matches(node.Labels):
			noMatch++
			continue
		case node.Status != pb.NodeStatus_NODE_STATUS_UP:
			notUp++
			continue
		case !rules.runs(name, p.Template.GetCommand()):
			refusing++
			continue
		}
		connected, latest := in.Live(name)
		if !connected {
			if in.Settling {
				return nil, "a new leader waits for the agents of up nodes to reconnect"
			}
			notConnected++
			continue
		}
		if in.Conditions != nil {
			if cs := in.Conditions(name); len(cs) > 0 {
				var names []string
				for _, c := range cs {
					names = append(names, agents.ConditionName(c.Type))
				}
				under = append(under, name+" ("+strings.Join(names, ", ")+")")
				continue
			}
		}
		free := 200.0
		if latest != nil {
			free = (100 - latest.CpuPercent) + (100 - latest.MemoryUsedPercent)
		}
		cands = append(cands, cand{name, free})
	}
	// whyNot says what kept the nodes out, once fewer than n are placed.
	whyNot := func() string {
		var parts []string
		add := func(k int, what string) {
			if k > 0 {
				parts = append(parts, fmt.Sprintf("%d %s", k, what))
			}
		}
		add(noMatch, "not matching the selector")
		add(notUp, "down or draining")
		add(notConnected, "without their agent connected")
		add(refusing, fmt.Sprintf("whose -allow-commands do not allow %q", p.Template.GetCommand()))
		if len(under) > 0 {
			slices.Sort(under)
			parts = append(parts, fmt.Sprintf("%d under a condition: %s", len(under), strings.Join(under, ", ")))
		}
		add(full, "without room for the reservation")
		if len(parts) == 0 {
			return "no node"
		}
		return "nodes " + strings.Join(parts, "; ")
	}
	if len(cands) == 0 {
		return nil, whyNot()
	}
	res := p.Template.GetResources()
	out = make([]*pb.Placement, 0, n)
	for range n {
		cands = slices.DeleteFunc(cands, func(c cand) bool {
			if fits(st.Nodes[c.name], reserved[c.name], res) {
				return false
			}
			full++
			return true
		})
		if len(cands) == 0 {
			return out, whyNot()
		}
		best := slices.MinFunc(cands, func(a, b cand) int {
			if c := cmp.Compare(count[a.name], count[b.name]); c != 0 {
				return c
			}
			if c := cmp.Compare(b.free, a.free); c != 0 {
				return c
			}
			return strings.Compare(a.name, b.name)
		})
		count[best.name]++
		fsm.AddReserved(reserved, best.name, res)
		out = append(out, &pb.Placement{Pool: p.Name, Node: best.name})
	}
	return out, ""
}

// commandRules are the -allow-commands rules in the facts of the nodes
// that have any, taken once a round. The controllers checked them at the
// agent's Hello; a pattern that does not parse matches nothing.
type commandRules map[string]*commands.Rules

func nodeRules(st *pb.State) commandRules {
	var out commandRules
	for name, node := range st.Nodes {
		if r := commands.Of(node.GetFacts().GetAllowedCommands()); r != nil {
			if out == nil {
				out = commandRules{}
			}
			out[name] = r
		}
	}
	return out
}

// runs reports whether node's agent may run command (a node without rules
// runs every command). The agent checks again the path it finds.
func (c commandRules) runs(node, command string) bool {
	r, ok := c[node]
	return !ok || r.MayAllow(command)
}

// under reports whether node is under a condition.
func (in Inputs) under(node string) bool {
	return in.Conditions != nil && len(in.Conditions(node)) > 0
}

// surplus chooses n instances to remove: those not serving first, then
// those on a node under a condition, then from the node with the most of
// the pool's instances, then the newest.
func surplus(ins []*pb.Instance, n int, count map[string]int, under func(node string) bool) []string {
	ins = slices.Clone(ins)
	count = maps.Clone(count)
	unfit := map[string]bool{}
	for _, in := range ins {
		if _, ok := unfit[in.Node]; !ok {
			unfit[in.Node] = under(in.Node)
		}
	}
	before := func(a, b *pb.Instance) bool {
		if c := notServingFirst(a, b); c != 0 {
			return c < 0
		}
		if unfit[a.Node] != unfit[b.Node] {
			return unfit[a.Node]
		}
		if count[a.Node] != count[b.Node] {
			return count[a.Node] > count[b.Node]
		}
		return seq(a.Id) > seq(b.Id)
	}
	var out []string
	for range n {
		best := 0
		for i := range ins {
			if before(ins[i], ins[best]) {
				best = i
			}
		}
		victim := ins[best]
		out = append(out, victim.Id)
		count[victim.Node]--
		ins = slices.Delete(ins, best, best+1)
	}
	slices.Sort(out)
	return out
}

// seq is the number at the end of an instance id.
func seq(id string) uint64 {
	n, _ := strconv.ParseUint(id[strings.LastIndexByte(id, '-')+1:], 10, 64)
	return n
}

// Loop runs the scheduler while this node leads.
type Loop struct {
	FSM *fsm.FSM
	// Live and Conditions: as in Inputs.
	Live       func(node string) (bool, *pb.Sample)
	Conditions func(node string) []*pb.NodeCondition
	// Acked reports whether every balancer acknowledged a table at index
	// or newer; since is when this leadership's loop started.
	Acked func(index uint64, since time.Time) bool
	// AckChanged returns a channel closed at the next acknowledgement.
	AckChanged func() <-chan struct{}
	// Apply writes a command through Raft on this leader.
	Apply func(cmd *pb.Command) error
	// Term is the leadership's term, stamped on every decision.
	Term          func() uint64
	DrainDeadline time.Duration
	// Interval bounds the time between rounds when nothing changes (for
	// deadlines and samples).
	Interval time.Duration
	// MinGap spaces rounds during a burst of changes, so that a busy state
	// machine is not read whole on every write (default 20ms).
	MinGap time.Duration
	// Settle is how long a new leader waits, at most, for the agents of up
	// nodes to reconnect before it places instances without them.
	Settle time.Duration
	// Unplaced, when set, receives each round's short pools, and is
	// emptied when the loop ends.
	Unplaced *Unplaced
	Logger   *slog.Logger
	Now      func() time.Time
}

func (l *Loop) Name() string { return "scheduler" }

// Run plans and applies rounds until ctx is cancelled.
func (l *Loop) Run(ctx context.Context) error {
	log := logging.OrDiscard(l.Logger)
	now := l.Now
	if now == nil {
		now = time.Now
	}
	start := now()
	acked := func(index uint64) bool { return l.Acked(index, start) }
	t := time.NewTicker(l.Interval)
	defer t.Stop()
	warned := map[string]int{}
	if l.Unplaced != nil {
		defer l.Unplaced.clear()
	}
	gap := l.MinGap
	if gap <= 0 {
		gap = 20 * time.Millisecond
	}
	for {
		began := time.Now()
		changed := l.FSM.Changed()
		ackChanged := l.AckChanged()
		var (
			plan  *Plan
			round time.Time
		)
		l.FSM.Read(func(st *pb.State) {
			round = now()
			plan = Make(st, Inputs{Now: round, Live: l.Live, Conditions: l.Conditions, Acked: acked, DrainDeadline: l.DrainDeadline, Settling: round.Sub(start) < l.Settle})
		})
		if err := l.apply(plan, log); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			log.Warn("scheduler round failed", "err", err)
		}
		for pool, n := range plan.Unplaced {
			if warned[pool] != n {
				log.Warn("no node can take the pool's instances", "pool", pool, "unplaced", n, "why", plan.UnplacedWhy[pool])
			}
		}
		warned = plan.Unplaced
		if l.Unplaced != nil {
			l.Unplaced.set(plan, round)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-ackChanged:
		case <-t.C:
		}
		if wait := gap - time.Since(began); wait > 0 {
			pause := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				pause.Stop()
				return nil
			case <-pause.C:
			}
		}
	}
}

func (l *Loop) apply(p *Plan, log *slog.Logger) error {
	term := l.Term()
	if len(p.Lost) > 0 {
		if err := l.Apply(&pb.Command{Command: &pb.Command_DeleteInstances{DeleteInstances: &pb.DeleteInstancesCommand{
			Instances: p.Lost, Reason: "node down"}}}); err != nil {
			return err
		}
		log.Info("instances lost with their node", "instances", strings.Join(p.Lost, ","))
	}
	if len(p.Stop) > 0 {
		if err := l.Apply(&pb.Command{Command: &pb.Command_StopInstances{StopInstances: &pb.StopInstancesCommand{
			Term: term, Instances: p.Stop}}}); err != nil {
			return err
		}
		log.Info("stopping instances", "instances", strings.Join(p.Stop, ","))
	}
	if len(p.Drain) > 0 {
		if err := l.Apply(&pb.Command{Command: &pb.Command_DrainInstances{DrainInstances: &pb.DrainInstancesCommand{
			Term: term, Instances: p.Drain}}}); err != nil {
			return err
		}
		log.Info("instances out of the tables", "instances", strings.Join(p.Drain, ","))
	}
	if len(p.Place) > 0 {
		if err := l.Apply(&pb.Command{Command: &pb.Command_PlaceInstances{PlaceInstances: &pb.PlaceInstancesCommand{
			Term: term, Placements: p.Place}}}); err != nil {
			return err
		}
		for _, g := range placedGroups(p.Place) {
			log.Info("instances placed", "pool", g.pool, "node", g.node, "count", g.count)
		}
	}
	return nil
}

// placedGroup is how many instances of a pool one round placed on a node.
type placedGroup struct {
	pool, node string
	count      int
}

// placedGroups counts placements by pool and node, in the order each pair
// first appears: the log says each once, however many instances it got.
func placedGroups(place []*pb.Placement) []placedGroup {
	var out []placedGroup
	at := map[[2]string]int{}
	for _, pl := range place {
		k := [2]string{pl.GetPool(), pl.GetNode()}
		i, ok := at[k]
		if !ok {
			i = len(out)
			at[k] = i
			out = append(out, placedGroup{pool: k[0], node: k[1]})
		}
		out[i].count++
	}
	return out
}
