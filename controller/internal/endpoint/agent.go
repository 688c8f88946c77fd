package endpoint

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/hostscale/hostscale/controller/internal/agents"
	"github.com/hostscale/hostscale/controller/internal/fsm"
	"github.com/hostscale/hostscale/internal/commands"
	"github.com/hostscale/hostscale/internal/labels"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// Agents serves hostscale.v1.AgentService on the leader, and redirects
// agents that reach a follower.
type Agents struct {
	pb.UnimplementedAgentServiceServer
	Core *Core
	Hub  *agents.Hub
	// LeaderContext returns the current leadership's context and term.
	LeaderContext func() (context.Context, uint64)
	HeartbeatTTL  time.Duration
	// MaxBatch bounds the samples of one batch; MaxFuture how far ahead of
	// the leader's clock a sample may be stamped.
	MaxBatch  int
	MaxFuture time.Duration
	Now       func() time.Time
}

var _ pb.AgentServiceServer = (*Agents)(nil)

// Limits of what an agent may send.
const (
	DefaultMaxBatch  = 1000
	DefaultMaxFuture = time.Minute
	maxCores         = 4096
	maxDisks         = 256
	maxFactLength    = 256
)

func (a *Agents) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

// recvError turns a receive failure into the handler's result: the end of
// the stream is not an error. (Undecodable bytes never reach the handler:
// gRPC closes the stream with INTERNAL "failed to unmarshal the received
// message" itself.)
func recvError(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

func (a *Agents) Connect(stream pb.AgentService_ConnectServer) error {
	first, err := stream.Recv()
	if err != nil {
		return recvError(err)
	}
	hello := first.GetHello()
	if hello == nil {
		return status.Error(codes.FailedPrecondition, "message: the first message must be a hello (registration); got samples or a heartbeat before it")
	}
	if err := checkHello(hello, a.now(), a.MaxFuture); err != nil {
		return err
	}
	lctx, term := a.LeaderContext()
	if lctx.Err() != nil {
		r := &pb.Redirect{}
		if id, addr, err := a.Core.LeaderAPI(); err == nil && id != a.Core.ID {
			r.LeaderId, r.LeaderAddress = id, addr
		}
		return stream.Send(&pb.ConnectResponse{Message: &pb.ConnectResponse_Redirect{Redirect: r}})
	}
	if err := a.register(hello); err != nil {
		return err
	}
	// Before the stream counts as connected, so that the scheduler never
	// sees this agent without its conditions.
	a.setConditions(hello.Node, hello.Conditions)
	ctx, detach := a.Hub.Attach(lctx, hello.Node, a.now())
	defer detach()
	if err := stream.Send(&pb.ConnectResponse{Message: &pb.ConnectResponse_Welcome{Welcome: &pb.Welcome{
		Controller:   a.Core.ID,
		Term:         term,
		HeartbeatTtl: durationpb.New(a.HeartbeatTTL),
		MaxBatch:     uint32(a.MaxBatch),
	}}}); err != nil {
		return err
	}

	// Subscribe to changes of this node's assignments before each read of
	// them, and again only once a change was seen: a change while a
	// message is handled is then not lost. Other nodes' changes do not
	// wake this stream.
	asg := assignmentSender{node: hello.Node, term: term}
	changed := a.Core.FSM.AssignmentsChanged(hello.Node)
	if err := asg.send(stream, a.Core.FSM); err != nil {
		return err
	}

	msgs := make(chan *pb.ConnectRequest)
	errc := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				errc <- recvError(err)
				return
			}
			select {
			case msgs <- m:
			case <-stream.Context().Done():
				return
			}
		}
	}()
	for {
		select {
		case <-changed:
			changed = a.Core.FSM.AssignmentsChanged(hello.Node)
			if err := asg.send(stream, a.Core.FSM); err != nil {
				return err
			}
		case err := <-errc:
			return err
		case <-stream.Context().Done():
			// The agent went away or the server is stopping; the reader
			// may have ended without a word.
			return status.FromContextError(stream.Context().Err()).Err()
		case <-ctx.Done():
			if lctx.Err() != nil {
				return status.Error(codes.Unavailable, "this controller is no longer the leader; reconnect")
			}
			return status.Error(codes.Aborted, "a newer stream of this node replaced this one")
		case m := <-msgs:
			if err := a.handle(stream, hello.Node, m); err != nil {
				return err
			}
		}
	}
}

func (a *Agents) handle(stream pb.AgentService_ConnectServer, node string, m *pb.ConnectRequest) error {
	now := a.now()
	switch msg := m.Message.(type) {
	case *pb.ConnectRequest_Hello:
		return status.Error(codes.FailedPrecondition, "hello: sent twice on one stream")
	case *pb.ConnectRequest_Heartbeat:
		a.Hub.Seen(node, now)
	case *pb.ConnectRequest_Conditions:
		if err := checkConditions("conditions.conditions", msg.Conditions.GetConditions(), now, a.MaxFuture); err != nil {
			return err
		}
		a.Hub.Seen(node, now)
		a.setConditions(node, msg.Conditions.GetConditions())
	case *pb.ConnectRequest_Instances:
		if err := checkReport(msg.Instances); err != nil {
			return err
		}
		a.Hub.Seen(node, now)
		if err := a.report(node, msg.Instances); err != nil {
			return err
		}
	case *pb.ConnectRequest_Samples:
		b := msg.Samples
		if len(b.Samples) > a.MaxBatch {
			return status.Errorf(codes.ResourceExhausted, "samples: a batch of %d samples exceeds the limit of %d", len(b.Samples), a.MaxBatch)
		}
		for i, s := range b.Samples {
			if err := checkSample(fmt.Sprintf("samples[%d]", i), s, now, a.MaxFuture); err != nil {
				return err
			}
		}
		ack := &pb.Ack{Seq: b.Seq}
		for _, s := range b.Samples {
			if a.Hub.Store.Add(node, s) {
				a.Hub.Sampled(node, s)
				ack.Accepted++
			} else {
				ack.Rejected++
			}
		}
		a.Hub.Seen(node, now)
		if err := stream.Send(&pb.ConnectResponse{Message: &pb.ConnectResponse_Ack{Ack: ack}}); err != nil {
			return err
		}
	default:
		return status.Error(codes.InvalidArgument, "message: empty or of an unknown kind")
	}
	return a.markUp(node)
}

// setConditions records the node's conditions and logs each that began
// or ended.
func (a *Agents) setConditions(node string, conds []*pb.NodeCondition) {
	old := a.Hub.SetConditions(node, conds)
	log := a.Core.Logger
	if log == nil {
		return
	}
	had := map[pb.NodeConditionType]bool{}
	for _, c := range old {
		had[c.Type] = true
	}
	for _, c := range conds {
		if had[c.Type] {
			delete(had, c.Type)
			continue
		}
		log.Warn("a node is under a condition: no instance will be placed on it", "node", node,
			"condition", agents.ConditionName(c.Type), "since", c.Since.AsTime(), "cause", c.Message)
	}
	for t := range had {
		log.Info("a node's condition ended", "node", node, "condition", agents.ConditionName(t))
	}
}

// maxConditions bounds the conditions of one report, and
// maxConditionMessage each one's message.
const (
	maxConditions       = 16
	maxConditionMessage = 1024
)

// checkConditions refuses a set of conditions with an unknown or repeated
// type, a missing or future start, or a message too long.
func checkConditions(field string, conds []*pb.NodeCondition, now time.Time, maxFuture time.Duration) error {
	if len(conds) > maxConditions {
		return invalid(field, "at most %d conditions, got %d", maxConditions, len(conds))
	}
	seen := map[pb.NodeConditionType]bool{}
	for i, c := range conds {
		f := fmt.Sprintf("%s[%d]", field, i)
		if c == nil {
			return invalid(f, "must be set")
		}
		if _, known := pb.NodeConditionType_name[int32(c.Type)]; !known || c.Type == pb.NodeConditionType_NODE_CONDITION_TYPE_UNSPECIFIED {
			return invalid(f+".type", "unknown condition type %d", c.Type)
		}
		if seen[c.Type] {
			return invalid(f+".type", "%s is listed twice", c.Type)
		}
		seen[c.Type] = true
		if c.Since == nil || c.Since.CheckValid() != nil {
			return invalid(f+".since", "must be a valid timestamp")
		}
		if ahead := c.Since.AsTime().Sub(now); ahead > maxFuture {
			return invalid(f+".since", "%v ahead of the controller's clock (at most %v)", ahead.Round(time.Second), maxFuture)
		}
		if len(c.Message) > maxConditionMessage {
			return invalid(f+".message", "at most %d bytes, got %d", maxConditionMessage, len(c.Message))
		}
	}
	return nil
}

// register writes the node's registration when it is new, its facts or
// labels changed, or it was down.
func (a *Agents) register(h *pb.Hello) error {
	need := true
	a.Core.FSM.Read(func(st *pb.State) {
		if n := st.Nodes[h.Node]; n != nil {
			need = n.Status == pb.NodeStatus_NODE_STATUS_DOWN ||
				!proto.Equal(n.Facts, h.Facts) || !maps.Equal(n.Labels, h.Labels)
		}
	})
	if !need {
		return nil
	}
	_, err := a.Core.Apply(&pb.Command{Command: &pb.Command_RegisterNode{RegisterNode: &pb.RegisterNodeCommand{
		Node: h.Node, Facts: h.Facts, Labels: h.Labels,
	}}})
	return err
}

// markUp brings a node the liveness loop marked down back up once it is
// heard from again on its open stream.
func (a *Agents) markUp(node string) error {
	down := false
	a.Core.FSM.Read(func(st *pb.State) {
		n := st.Nodes[node]
		down = n != nil && n.Status == pb.NodeStatus_NODE_STATUS_DOWN
	})
	if !down {
		return nil
	}
	_, err := a.Core.Apply(&pb.Command{Command: &pb.Command_SetNodeStatus{SetNodeStatus: &pb.SetNodeStatusCommand{
		Node: node, Status: pb.NodeStatus_NODE_STATUS_UP,
	}}})
	return err
}

func checkHello(h *pb.Hello, now time.Time, maxFuture time.Duration) error {
	if err := checkName("hello.node", h.Node); err != nil {
		return err
	}
	if err := labels.Check(h.Labels); err != nil {
		return invalid("hello.labels", "%v", err)
	}
	if len(h.Labels) > 64 {
		return invalid("hello.labels", "at most 64 labels, got %d", len(h.Labels))
	}
	f := h.Facts
	if f == nil {
		return invalid("hello.facts", "must be set")
	}
	for name, v := range map[string]string{"hostname": f.Hostname, "os": f.Os, "platform": f.Platform, "kernel": f.Kernel, "agent_version": f.AgentVersion} {
		if len(v) > maxFactLength {
			return invalid("hello.facts."+name, "at most %d characters", maxFactLength)
		}
	}
	if f.CpuCount > maxCores {
		return invalid("hello.facts.cpu_count", "at most %d, got %d", maxCores, f.CpuCount)
	}
	for _, p := range f.AllowedCommands {
		if len(p) > maxFactLength {
			return invalid("hello.facts.allowed_commands", "a pattern of at most %d characters, got %d", maxFactLength, len(p))
		}
	}
	if _, err := commands.New(f.AllowedCommands); err != nil {
		return invalid("hello.facts.allowed_commands", "%v", err)
	}
	return checkConditions("hello.conditions", h.Conditions, now, maxFuture)
}

// checkSample rejects values no host can produce: NaN, infinities,
// negatives, percentages over 100, and times far ahead of the leader's
// clock.
func checkSample(field string, s *pb.Sample, now time.Time, maxFuture time.Duration) error {
	if s == nil {
		return invalid(field, "must be set")
	}
	if s.Time == nil || s.Time.CheckValid() != nil {
		return invalid(field+".time", "must be a valid timestamp")
	}
	if ahead := s.Time.AsTime().Sub(now); ahead > maxFuture {
		return invalid(field+".time", "%v ahead of the controller's clock (at most %v)", ahead.Round(time.Second), maxFuture)
	}
	// check refuses v unless it lies in [0, limit]. The field is
	// field.name, or field.name[i]sub for an element of a list (i >= 0),
	// spelled out only when refused: this runs for every value of every
	// sample.
	check := func(name string, i int, sub string, v, limit float64) error {
		var reason string
		switch {
		case math.IsNaN(v) || math.IsInf(v, 0):
			reason = fmt.Sprintf("%v is not a number", v)
		case v < 0:
			reason = fmt.Sprintf("%v is negative", v)
		case v > limit:
			reason = fmt.Sprintf("%v is above %v", v, limit)
		default:
			return nil
		}
		if i >= 0 {
			name = fmt.Sprintf("%s[%d]%s", name, i, sub)
		}
		return invalid(field+"."+name, "%s", reason)
	}
	const pct, big = 100.0001, math.MaxFloat64
	// In field order, so that a sample with several bad values is always
	// refused for the same one; arrays, since this runs for every sample.
	type value struct {
		name  string
		v     float64
		limit float64
	}
	for _, f := range [...]value{
		{"cpu_percent", s.CpuPercent, pct}, {"load1", s.Load1, big}, {"load5", s.Load5, big}, {"load15", s.Load15, big},
		{"memory_used_percent", s.MemoryUsedPercent, pct}, {"swap_used_percent", s.SwapUsedPercent, pct},
		{"disk_read_bytes_per_second", s.DiskReadBytesPerSecond, big}, {"disk_write_bytes_per_second", s.DiskWriteBytesPerSecond, big},
		{"net_rx_bytes_per_second", s.NetRxBytesPerSecond, big}, {"net_tx_bytes_per_second", s.NetTxBytesPerSecond, big},
	} {
		if err := check(f.name, -1, "", f.v, f.limit); err != nil {
			return err
		}
	}
	if len(s.CpuCorePercent) > maxCores {
		return invalid(field+".cpu_core_percent", "at most %d cores", maxCores)
	}
	for i, v := range s.CpuCorePercent {
		if err := check("cpu_core_percent", i, "", v, pct); err != nil {
			return err
		}
	}
	if len(s.Instances) > maxReported {
		return invalid(field+".instances", "at most %d instances", maxReported)
	}
	for i, u := range s.Instances {
		if u.GetId() == "" || len(u.Id) > 128 {
			return invalid(fmt.Sprintf("%s.instances[%d].id", field, i), "must be 1-128 characters")
		}
		if err := check("instances", i, ".cpu_percent", u.CpuPercent, 100*maxCores); err != nil {
			return err
		}
	}
	if len(s.Disks) > maxDisks {
		return invalid(field+".disks", "at most %d disks", maxDisks)
	}
	for i, d := range s.Disks {
		if d.GetMount() == "" || len(d.Mount) > maxFactLength {
			return invalid(fmt.Sprintf("%s.disks[%d].mount", field, i), "must be 1-%d characters", maxFactLength)
		}
		if err := check("disks", i, ".used_percent", d.UsedPercent, pct); err != nil {
			return err
		}
	}
	return nil
}

// assignmentSender sends an agent its assignments whenever they change.
type assignmentSender struct {
	node string
	term uint64
	last []*pb.Assignment
	sent bool
}

// send sends the node's assignments unless they are those sent last.
func (s *assignmentSender) send(stream pb.AgentService_ConnectServer, f *fsm.FSM) error {
	var list []*pb.Assignment
	idx := f.ReadNode(s.node, func(st *pb.State, ins map[string]*pb.Instance) {
		list = Assignments(st, ins)
	})
	if s.sent && slices.EqualFunc(list, s.last, func(a, b *pb.Assignment) bool { return proto.Equal(a, b) }) {
		return nil
	}
	s.last, s.sent = list, true
	return stream.Send(&pb.ConnectResponse{Message: &pb.ConnectResponse_Assignments{Assignments: &pb.Assignments{
		Term: s.term, Index: idx, Instances: list,
	}}})
}

// Assignments lists, in id order, what a node's agent must run of placed,
// the instances placed on the node: all but those being stopped.
func Assignments(st *pb.State, placed map[string]*pb.Instance) []*pb.Assignment {
	var ins []*pb.Instance
	for _, in := range placed {
		if !in.Stop {
			ins = append(ins, in)
		}
	}
	fsm.SortInstances(ins)
	out := make([]*pb.Assignment, 0, len(ins))
	for _, in := range ins {
		p := st.Pools[in.Pool]
		if p == nil || p.Template == nil {
			continue
		}
		out = append(out, &pb.Assignment{Instance: in.Id, Pool: in.Pool, Template: proto.CloneOf(p.Template)})
	}
	return out
}

// maxReported bounds the instances of one report.
const maxReported = 10000

func checkReport(r *pb.InstanceReport) error {
	if len(r.Instances) > maxReported {
		return status.Errorf(codes.ResourceExhausted, "instances: a report of %d instances exceeds the limit of %d", len(r.Instances), maxReported)
	}
	for i, in := range r.Instances {
		f := fmt.Sprintf("instances[%d]", i)
		if in.GetId() == "" || len(in.Id) > 128 {
			return invalid(f+".id", "must be 1-128 characters")
		}
		if in.Address != "" {
			if err := checkAddress(f+".address", in.Address); err != nil {
				return err
			}
		}
		if _, ok := pb.InstanceState_name[int32(in.State)]; !ok || in.State == pb.InstanceState_INSTANCE_STATE_UNSPECIFIED {
			return invalid(f+".state", "unknown state %d", in.State)
		}
		if len(in.Message) > 1024 {
			return invalid(f+".message", "at most 1024 characters")
		}
		if in.Since != nil && in.Since.CheckValid() != nil {
			return invalid(f+".since", "must be a valid timestamp")
		}
	}
	return nil
}

// report writes what an agent reported of its instances when it differs
// from the state: a changed instance, or one being stopped that the agent
// no longer has.
func (a *Agents) report(node string, r *pb.InstanceReport) error {
	need := false
	a.Core.FSM.ReadNode(node, func(_ *pb.State, placed map[string]*pb.Instance) {
		seen := make(map[string]bool, len(r.Instances))
		for _, s := range r.Instances {
			seen[s.Id] = true
			if in := placed[s.Id]; in != nil && !fsm.Reflects(in, s) {
				need = true
			}
		}
		for id, in := range placed {
			if in.Stop && !seen[id] {
				need = true
			}
		}
	})
	if !need {
		return nil
	}
	_, err := a.Core.Apply(&pb.Command{Command: &pb.Command_ReportInstances{ReportInstances: &pb.ReportInstancesCommand{
		Node: node, Instances: r.Instances, Complete: true,
	}}})
	return err
}
