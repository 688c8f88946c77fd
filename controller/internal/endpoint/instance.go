package endpoint

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/hostscale/hostscale/controller/internal/autoscale"
	"github.com/hostscale/hostscale/controller/internal/fsm"
	"github.com/hostscale/hostscale/internal/labels"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// Defaults and bounds of a pool with an instance template.
const (
	DefaultMaxInstances   = 100
	MaxInstances          = 1000
	DefaultHealthInterval = time.Second
	DefaultStopGrace      = 10 * time.Second
	maxTemplateString     = 4096
	maxTemplateArgs       = 256
	maxTemplateEnv        = 256
	// An instance reserves at most 1,024 cores and 1 PiB.
	maxReservedMillicores = 1024 * 1000
	maxReservedMemory     = 1 << 50
)

// stopSignals are the signals a template may name.
var stopSignals = map[string]bool{"SIGTERM": true, "SIGINT": true, "SIGQUIT": true, "SIGHUP": true, "SIGUSR1": true, "SIGUSR2": true}

// normalizeInstances checks the instance fields of a pool and fills their
// defaults.
func normalizeInstances(p *pb.Pool) error {
	p.NextInstance, p.NextScaleEvent = 0, 0
	if err := checkScaling(p); err != nil {
		return err
	}
	if p.Template == nil {
		switch {
		case p.Min != 0 || p.Max != 0 || p.Desired != 0:
			return invalid("pool.template", "must be set for min, max or desired to mean anything")
		case p.Selector != "":
			return invalid("pool.template", "must be set for a placement selector to mean anything")
		case p.LoadAwareWeights:
			return invalid("pool.template", "must be set for load-aware weights: they weigh instances")
		case p.MaxSurge != 0:
			return invalid("pool.template", "must be set for max_surge to mean anything")
		case p.Scaling != nil && p.Scaling.Provider == nil:
			return invalid("pool.scaling.provider", "a pool without a template scales only through a provider")
		case p.Scaling.GetScaleToZeroAfter() != nil:
			return invalid("pool.scaling.scale_to_zero_after", "only a pool of instances scales to zero: set a template")
		}
		if p.Scaling != nil {
			if p.Max == 0 {
				p.Max = DefaultMaxInstances
			}
			if p.Desired == 0 {
				p.Desired = p.Min
			}
		}
		return nil
	}
	if err := normalizeTemplate("pool.template", p.Template); err != nil {
		return err
	}
	if _, err := labels.Parse(p.Selector); err != nil {
		return invalid("pool.selector", "%v", err)
	}
	if p.Max == 0 {
		p.Max = max(DefaultMaxInstances, p.Min)
	}
	switch {
	case p.Max > MaxInstances:
		return invalid("pool.max", "at most %d, got %d", MaxInstances, p.Max)
	case p.Min > p.Max:
		return invalid("pool.max", "must be >= min (%d), got %d", p.Min, p.Max)
	case p.MaxSurge > MaxInstances:
		return invalid("pool.max_surge", "at most %d, got %d", MaxInstances, p.MaxSurge)
	}
	if p.Desired == 0 {
		p.Desired = p.Min
	}
	if p.Desired < p.Min || p.Desired > p.Max {
		return invalid("pool.desired", "%d is outside min %d and max %d", p.Desired, p.Min, p.Max)
	}
	return nil
}

func normalizeTemplate(field string, t *pb.InstanceTemplate) error {
	switch {
	case strings.TrimSpace(t.Command) == "":
		return invalid(field+".command", "must not be empty")
	case len(t.Command) > maxTemplateString || strings.ContainsRune(t.Command, 0):
		return invalid(field+".command", "must be at most %d characters without NUL", maxTemplateString)
	case len(t.Args) > maxTemplateArgs:
		return invalid(field+".args", "at most %d arguments, got %d", maxTemplateArgs, len(t.Args))
	case len(t.Env) > maxTemplateEnv:
		return invalid(field+".env", "at most %d variables, got %d", maxTemplateEnv, len(t.Env))
	}
	for i, a := range t.Args {
		if len(a) > maxTemplateString || strings.ContainsRune(a, 0) {
			return invalid(fmt.Sprintf("%s.args[%d]", field, i), "must be at most %d characters without NUL", maxTemplateString)
		}
	}
	for k, v := range t.Env {
		f := fmt.Sprintf("%s.env[%q]", field, k)
		switch {
		case k == "" || len(k) > 256 || strings.ContainsAny(k, "=\x00"):
			return invalid(f, "a variable name must be 1-256 characters without '=' or NUL")
		case k == "PORT" || strings.HasPrefix(k, "HOSTSCALE_"):
			return invalid(f, "PORT and HOSTSCALE_* are set by the agent")
		case len(v) > maxTemplateString || strings.ContainsRune(v, 0):
			return invalid(f, "the value must be at most %d characters without NUL", maxTemplateString)
		}
	}
	if t.WorkingDir != "" && (!filepath.IsAbs(t.WorkingDir) || strings.ContainsRune(t.WorkingDir, 0)) {
		return invalid(field+".working_dir", "%q is not an absolute path", t.WorkingDir)
	}
	if t.HealthPath != "" && (!strings.HasPrefix(t.HealthPath, "/") || len(t.HealthPath) > 1024 || strings.ContainsAny(t.HealthPath, " #\t\r\n\x00")) {
		return invalid(field+".health_path", "%q must start with '/' and hold no spaces or '#'", t.HealthPath)
	}
	iv, err := duration(field+".health_interval", t.HealthInterval, DefaultHealthInterval, 100*time.Millisecond, time.Minute)
	if err != nil {
		return err
	}
	t.HealthInterval = durationpb.New(iv)
	if t.StopSignal == "" {
		t.StopSignal = "SIGTERM"
	}
	t.StopSignal = strings.ToUpper(t.StopSignal)
	if !strings.HasPrefix(t.StopSignal, "SIG") {
		t.StopSignal = "SIG" + t.StopSignal
	}
	if !stopSignals[t.StopSignal] {
		return invalid(field+".stop_signal", "%q is not one of SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2", t.StopSignal)
	}
	g, err := duration(field+".stop_grace", t.StopGrace, DefaultStopGrace, 0, 10*time.Minute)
	if err != nil {
		return err
	}
	t.StopGrace = durationpb.New(g)
	if r := t.Resources; r != nil {
		switch {
		case r.CpuMillicores > maxReservedMillicores:
			return invalid(field+".resources.cpu_millicores", "at most %d, got %d", maxReservedMillicores, r.CpuMillicores)
		case r.MemoryBytes > maxReservedMemory:
			return invalid(field+".resources.memory_bytes", "at most %d, got %d", uint64(maxReservedMemory), r.MemoryBytes)
		case r.CpuMillicores == 0 && r.MemoryBytes == 0:
			t.Resources = nil // reserves nothing
		}
	}
	return nil
}

// MaxScalingWindow bounds a scaling policy's metric window: the leader
// keeps the balancers' counters a little longer.
const MaxScalingWindow = 10 * time.Minute

// checkScaling validates a pool's scaling policy.
func checkScaling(p *pb.Pool) error {
	if p.Scaling == nil {
		return nil
	}
	if err := autoscale.Validate("pool.scaling", p.Scaling); err != nil {
		var fe *autoscale.FieldError
		if errors.As(err, &fe) {
			return invalid(fe.Field, "%s", fe.Msg)
		}
		return invalid("pool.scaling", "%v", err)
	}
	if w := p.Scaling.Window; w != nil && w.AsDuration() > MaxScalingWindow {
		return invalid("pool.scaling.window", "at most %v", MaxScalingWindow)
	}
	// The windows and rate periods read the events kept in the state: at
	// most fsm.MaxScaleEvents of them, one per evaluation.
	d := autoscale.Defaults(p.Scaling)
	kept := time.Duration(fsm.MaxScaleEvents-10) * d.EvaluationPeriod.AsDuration()
	longest := max(d.ScaleUpStabilization.AsDuration(), d.ScaleDownStabilization.AsDuration())
	for _, l := range append(d.ScaleUpLimits, d.ScaleDownLimits...) {
		longest = max(longest, l.Period.AsDuration())
	}
	if longest > kept {
		return invalid("pool.scaling.evaluation_period", "%v keeps %v of decisions, shorter than the longest window or rate period (%v)",
			d.EvaluationPeriod.AsDuration(), kept, longest)
	}
	return nil
}

// duration checks an optional duration field and returns it, or def when
// it is unset.
func duration(field string, d *durationpb.Duration, def, lo, hi time.Duration) (time.Duration, error) {
	if d == nil {
		return def, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, invalid(field, "%v", err)
	}
	v := d.AsDuration()
	if v == 0 {
		return def, nil
	}
	if v < lo || v > hi {
		return 0, invalid(field, "%v is outside %v to %v", v, lo, hi)
	}
	return v, nil
}

func (s *Pools) ScalePool(ctx context.Context, req *pb.ScalePoolRequest) (*pb.ScalePoolResponse, error) {
	id, err := requestID(req.RequestId)
	if err != nil {
		return nil, err
	}
	req.RequestId = id
	if err := checkName("pool", req.Pool); err != nil {
		return nil, err
	}
	if req.Desired > MaxInstances {
		return nil, invalid("desired", "at most %d, got %d", MaxInstances, req.Desired)
	}
	resp := &pb.ScalePoolResponse{}
	// On the leader (whose state holds every committed pool), refuse what
	// the state machine would refuse without a Raft write; it checks
	// again, against the state the command meets.
	if fwd, err := s.Core.LeaderOnly(ctx, req, resp); fwd {
		return orNil(resp, err)
	}
	var err2 error
	s.Core.FSM.Read(func(st *pb.State) {
		p := st.Pools[req.Pool]
		switch {
		case p == nil:
			err2 = status.Errorf(codes.NotFound, "pool %q not found", req.Pool)
		case p.Template == nil:
			err2 = status.Errorf(codes.FailedPrecondition, "pool %q has no instance template: its backends are static", p.Name)
		case req.Desired < p.Min || req.Desired > p.Max:
			err2 = invalid("desired", "%d is outside the pool's min %d and max %d", req.Desired, p.Min, p.Max)
		}
	})
	if err2 != nil {
		return nil, err2
	}
	res, fwd, err := s.Core.Write(ctx, req, resp, &pb.Command{
		RequestId: id,
		Command:   &pb.Command_ScalePool{ScalePool: &pb.ScalePoolCommand{Pool: req.Pool, Desired: req.Desired}},
	})
	if fwd || err != nil {
		return orNil(resp, err)
	}
	resp.Pool, resp.Index = s.pool(req.Pool)
	resp.Index = max(resp.Index, res.Index)
	return resp, nil
}

func (s *Pools) ListInstances(ctx context.Context, req *pb.ListInstancesRequest) (*pb.ListInstancesResponse, error) {
	if req.Pool != "" {
		if err := checkName("pool", req.Pool); err != nil {
			return nil, err
		}
	}
	if req.Node != "" {
		if err := checkName("node", req.Node); err != nil {
			return nil, err
		}
	}
	size, after, err := pageArgs(req.PageSize, req.PageToken)
	if err != nil {
		return nil, err
	}
	if req.PageSize == 0 {
		size = 0 // all of them, as before paging
	}
	resp := &pb.ListInstancesResponse{}
	if fwd, err := s.Core.Consistent(ctx, req.Consistent, req, resp); fwd || err != nil {
		return orNil(resp, err)
	}
	var last *pb.Instance
	if after != "" {
		// The token is the last instance of the previous page: this page
		// starts with what sorts after it, whether or not it still exists.
		last = &pb.Instance{Id: after, Pool: poolOf(after)}
	}
	// A node's instances come from the state machine's index by node.
	resp.Index = s.Core.FSM.ReadNode(req.Node, func(st *pb.State, placed map[string]*pb.Instance) {
		all := st.Instances
		if req.Node != "" {
			all = placed
		}
		var ins []*pb.Instance
		for _, in := range all {
			if (req.Pool == "" || in.Pool == req.Pool) && (last == nil || fsm.CompareInstances(in, last) > 0) {
				ins = append(ins, in)
			}
		}
		resp.Instances = cloneAll(pageOf(ins, size, resp))
	})
	return resp, nil
}

// pageOf sorts ins and keeps its first size (all when size is 0), setting
// resp's next page token when more follow.
func pageOf(ins []*pb.Instance, size int, resp *pb.ListInstancesResponse) []*pb.Instance {
	fsm.SortInstances(ins)
	if size > 0 && len(ins) > size {
		ins = ins[:size]
		resp.NextPageToken = pageToken(ins[size-1].Id)
	}
	return ins
}

// poolOf returns the pool of an instance id, "<pool>-<number>".
func poolOf(id string) string {
	if i := strings.LastIndexByte(id, '-'); i > 0 {
		return id[:i]
	}
	return id
}

func cloneAll(ins []*pb.Instance) []*pb.Instance {
	out := make([]*pb.Instance, len(ins))
	for i, in := range ins {
		out[i] = proto.CloneOf(in)
	}
	return out
}

func (s *Nodes) DrainNode(ctx context.Context, req *pb.DrainNodeRequest) (*pb.DrainNodeResponse, error) {
	id, err := requestID(req.RequestId)
	if err != nil {
		return nil, err
	}
	req.RequestId = id
	if err := checkName("node", req.Node); err != nil {
		return nil, err
	}
	resp := &pb.DrainNodeResponse{}
	// Checked on the leader, whose state holds every registered node.
	if fwd, err := s.Core.LeaderOnly(ctx, req, resp); fwd {
		return orNil(resp, err)
	}
	known := false
	s.Core.FSM.Read(func(st *pb.State) { known = st.Nodes[req.Node] != nil })
	if !known {
		return nil, status.Errorf(codes.NotFound, "node %q not found", req.Node)
	}
	res, fwd, err := s.Core.Write(ctx, req, resp, &pb.Command{
		RequestId: id,
		Command:   &pb.Command_DrainNode{DrainNode: &pb.DrainNodeCommand{Node: req.Node, Drain: !req.Undo}},
	})
	if fwd || err != nil {
		return orNil(resp, err)
	}
	resp.Index = s.Core.FSM.Read(func(st *pb.State) {
		if n := st.Nodes[req.Node]; n != nil {
			resp.Node = s.withLive(n, fsm.Reserved(st))
		}
	})
	resp.Index = max(resp.Index, res.Index)
	return resp, nil
}

func (s *Pools) ListScaleEvents(ctx context.Context, req *pb.ListScaleEventsRequest) (*pb.ListScaleEventsResponse, error) {
	if err := checkName("pool", req.Pool); err != nil {
		return nil, err
	}
	size := int(req.PageSize)
	switch {
	case size < 0 || size > maxPageSize:
		return nil, invalid("page_size", "must be 0 to %d", maxPageSize)
	case size == 0:
		size = 50
	}
	resp := &pb.ListScaleEventsResponse{}
	if fwd, err := s.Core.Consistent(ctx, req.Consistent, req, resp); fwd || err != nil {
		return orNil(resp, err)
	}
	found := false
	resp.Index = s.Core.FSM.Read(func(st *pb.State) {
		found = st.Pools[req.Pool] != nil
		evs := st.ScaleEvents[req.Pool].GetEvents()
		for i := len(evs) - 1; i >= 0 && len(resp.Events) < size; i-- {
			if !req.ActedOnly || evs[i].Acted {
				resp.Events = append(resp.Events, proto.CloneOf(evs[i]))
			}
		}
	})
	if !found {
		return nil, status.Errorf(codes.NotFound, "pool %q not found", req.Pool)
	}
	return resp, nil
}
