package server

import (
	"context"
	"math"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/hostscale/hostscale/controller/internal/autoscale"
	"github.com/hostscale/hostscale/controller/internal/lbstats"
	"github.com/hostscale/hostscale/controller/internal/metricstore"
	"github.com/hostscale/hostscale/controller/internal/provider"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// freshFor is how recent a pool's newest data must be for it to count as
// current: a few sample or report intervals.
const freshFor = 5 * time.Second

// autoscaler is the leader loop that evaluates every pool with a scaling
// policy each evaluation period and writes each evaluation, acting or
// not, as a ScaleEvent; and that calls the pools' providers for the
// decisions that changed desired.
type autoscaler struct {
	s     *Server
	start time.Time
	term  uint64
	last  map[string]time.Time // last evaluation per pool
	// weighed is when load-aware weights were last computed.
	weighed time.Time

	mu       sync.Mutex
	inFlight map[string]bool // provider calls running, by event id
	wg       sync.WaitGroup
}

func (s *Server) runAutoscaler(ctx context.Context) error {
	_, term := s.leader.Context()
	a := &autoscaler{s: s, start: time.Now(), term: term, last: map[string]time.Time{}, inFlight: map[string]bool{}}
	s.lbstats.Reset()
	defer a.wg.Wait()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-s.lbstats.Demand():
			// A balancer holds a request: a pool scaled to zero is
			// activated now, not at the next tick.
		}
		a.round(ctx, time.Now())
	}
}

// poolInputs is what one evaluation reads from the state.
type poolInputs struct {
	pool      *pb.Pool
	policy    *pb.ScalingPolicy
	instances []*pb.Instance
	events    []*pb.ScaleEvent
	// activity is the balancers' word on the pool, for a pool that
	// scales to zero.
	activity lbstats.Activity
}

func (a *autoscaler) round(ctx context.Context, now time.Time) {
	var due []poolInputs
	var pending []*pb.ScaleEvent
	live := map[string]bool{}
	a.s.fsm.Read(func(st *pb.State) {
		byPool := map[string][]*pb.Instance{}
		for id, inst := range st.Instances {
			live[id] = true
			byPool[inst.Pool] = append(byPool[inst.Pool], inst)
		}
		for name, p := range st.Pools {
			if p.Scaling == nil {
				continue
			}
			pol := autoscale.Defaults(p.Scaling)
			if p.Scaling.Provider != nil {
				for _, ev := range st.ScaleEvents[name].GetEvents() {
					if ev.Acted && !ev.GetProvider().GetDone() {
						pending = append(pending, proto.CloneOf(ev))
					}
				}
			}
			// A pool scaled to zero is evaluated only when requests wait
			// for it, and then at once: asleep, it writes nothing.
			// So is one for which more requests wait than its instances
			// can take at its concurrency target.
			asleep := p.Desired == 0 && pol.ScaleToZeroAfter != nil
			var act lbstats.Activity
			if pol.ScaleToZeroAfter != nil {
				act = a.s.lbstats.Activity(name, now, freshFor)
			}
			held := autoscale.HeldNeed(pol, act.Waiting, p.Max) > p.Desired
			if !asleep && !held && now.Sub(a.last[name]) < pol.EvaluationPeriod.AsDuration() {
				continue
			}
			if asleep && act.Waiting == 0 {
				continue
			}
			in := poolInputs{pool: proto.CloneOf(p), policy: pol, activity: act}
			for _, inst := range byPool[name] {
				in.instances = append(in.instances, proto.CloneOf(inst))
			}
			for _, ev := range st.ScaleEvents[name].GetEvents() {
				in.events = append(in.events, proto.CloneOf(ev))
			}
			due = append(due, in)
		}
	})
	for _, id := range a.s.hub.Instances.Nodes() {
		if !live[id] {
			a.s.hub.Instances.Forget(id)
		}
	}
	for _, in := range due {
		a.last[in.pool.Name] = now
		ev := autoscale.Decide(a.input(in, now))
		ev.Term = a.term
		if _, err := a.s.core.Apply(&pb.Command{Command: &pb.Command_RecordScaleEvent{RecordScaleEvent: &pb.RecordScaleEventCommand{Event: ev}}}); err != nil {
			if ctx.Err() == nil {
				a.s.logger.Warn("record scale event", "pool", in.pool.Name, "err", err)
			}
			continue
		}
		if ev.Acted {
			a.s.logger.Info("autoscaled", "pool", in.pool.Name, "from", ev.PreviousDesired, "to", ev.Desired,
				"observed", ev.ObservedValue, "target", ev.Target, "limited_by", ev.LimitedBy)
		}
	}
	for _, ev := range pending {
		a.callProvider(ctx, ev, now)
	}
	if now.Sub(a.weighed) >= weighEvery {
		a.weighed = now
		a.weigh(ctx, now)
	}
}

// weighEvery is how often load-aware weights are computed, over the host
// CPU of the last weighWindow.
const (
	weighEvery  = time.Second
	weighWindow = 3 * time.Second
)

// weightFor is an instance's weight on a host at cpu percent: 100 when
// idle, 10 at saturation, in steps of 10 so small changes do not rewrite
// the tables.
func weightFor(cpu float64) uint32 {
	w := math.Round((100-cpu)/10) * 10
	return uint32(min(100, max(10, w)))
}

// weigh writes the weights of the instances of pools with load-aware
// weights that changed.
func (a *autoscaler) weigh(ctx context.Context, now time.Time) {
	changes := map[string]uint32{}
	a.s.fsm.Read(func(st *pb.State) {
		for _, inst := range st.Instances {
			p := st.Pools[inst.Pool]
			if p == nil || !p.LoadAwareWeights {
				continue
			}
			cpu, _ := average(a.s.hub.Store.Series(inst.Node, metricstore.CPUPercent, now.Add(-weighWindow)), now)
			if math.IsNaN(cpu) {
				continue
			}
			if w := weightFor(cpu); w != inst.Weight {
				changes[inst.Id] = w
			}
		}
	})
	if len(changes) == 0 {
		return
	}
	if _, err := a.s.core.Apply(&pb.Command{Command: &pb.Command_SetInstanceWeights{SetInstanceWeights: &pb.SetInstanceWeightsCommand{Weights: changes}}}); err != nil && ctx.Err() == nil {
		a.s.logger.Warn("set load-aware weights", "err", err)
	}
}

// input gathers one pool's metrics over its window.
func (a *autoscaler) input(in poolInputs, now time.Time) autoscale.Input {
	pol := in.policy
	window := pol.Window.AsDuration()
	init := pol.InitializationPeriod.AsDuration()
	ai := autoscale.Input{
		Now: now, Pool: in.pool.Name, Policy: pol, Min: in.pool.Min, Max: in.pool.Max, Desired: in.pool.Desired,
		Events:    in.events,
		WarmingUp: now.Sub(a.start) < window,
	}
	ai.Waiting, ai.Idle, ai.IdleKnown = in.activity.Waiting, in.activity.Idle, in.activity.Known
	var ready []*pb.Instance
	for _, inst := range in.instances {
		if inst.Draining || inst.Stop {
			continue
		}
		ai.Current++
		if inst.State == pb.InstanceState_INSTANCE_STATE_HEALTHY && now.Sub(inst.Since.AsTime()) >= init {
			ready = append(ready, inst)
		}
	}
	// An instance just past its initialization period, with no instance
	// CPU sample of its own yet (see instanceCPUFrom), is not ready yet.
	if pol.Metric == pb.ScalingMetric_SCALING_METRIC_INSTANCE_CPU ||
		slices.ContainsFunc(pol.Metrics, func(m *pb.MetricTarget) bool { return m.GetMetric() == pb.ScalingMetric_SCALING_METRIC_INSTANCE_CPU }) {
		ready = slices.DeleteFunc(ready, func(inst *pb.Instance) bool {
			from := instanceCPUFrom(inst, now.Add(-window), init)
			return now.Sub(from) <= freshFor && len(a.s.hub.Instances.Series(inst.Id, metricstore.CPUPercent, from)) == 0
		})
	}
	ai.Ready = uint32(len(ready))
	ai.Values, ai.Stale = a.values(in, pol.Metric, ready, now)
	for _, m := range pol.Metrics {
		v, stale := a.values(in, m.GetMetric(), ready, now)
		ai.More = append(ai.More, autoscale.MetricValues{Values: v, Stale: stale})
	}
	return ai
}

// instanceCPUFrom is where an instance's CPU average over the window from
// windowStart begins: only samples taken after its initialization period
// count, as a window reaching back into it would average in the tail of a
// boot spike.
func instanceCPUFrom(inst *pb.Instance, windowStart time.Time, init time.Duration) time.Time {
	return later(windowStart, inst.Since.AsTime().Add(init))
}

// values is one metric per ready instance (or host), averaged over the
// policy's window ending at now, and whether some ready one's data is
// missing or old.
func (a *autoscaler) values(in poolInputs, metric pb.ScalingMetric, ready []*pb.Instance, now time.Time) (map[string]float64, bool) {
	window := in.policy.Window.AsDuration()
	from := now.Add(-window)
	values, stale := map[string]float64{}, false
	switch metric {
	case pb.ScalingMetric_SCALING_METRIC_HOST_CPU:
		for _, inst := range ready {
			if _, ok := values[inst.Node]; ok {
				continue
			}
			v, fresh := average(a.s.hub.Store.Series(inst.Node, metricstore.CPUPercent, from), now)
			if !fresh {
				stale = true
			}
			if !math.IsNaN(v) {
				values[inst.Node] = v
			}
		}
	case pb.ScalingMetric_SCALING_METRIC_INSTANCE_CPU:
		for _, inst := range ready {
			v, fresh := average(a.s.hub.Instances.Series(inst.Id, metricstore.CPUPercent, instanceCPUFrom(inst, from, in.policy.InitializationPeriod.AsDuration())), now)
			if !fresh {
				stale = true
			}
			if !math.IsNaN(v) {
				values[inst.Id] = v
			}
		}
	case pb.ScalingMetric_SCALING_METRIC_REQUESTS_PER_INSTANCE, pb.ScalingMetric_SCALING_METRIC_CONCURRENCY_PER_INSTANCE:
		concurrency := metric == pb.ScalingMetric_SCALING_METRIC_CONCURRENCY_PER_INSTANCE
		usage, _, _ := a.s.lbstats.Window(in.pool.Name, now, window)
		for _, inst := range ready {
			u, ok := usage[inst.Address]
			if !ok || now.Sub(u.Newest) > freshFor || (concurrency && u.NoConcurrency) {
				stale = true
				continue
			}
			if concurrency {
				values[inst.Id] = u.Concurrency
			} else {
				values[inst.Id] = u.RequestsPerSecond
			}
		}
		if len(usage) == 0 && len(ready) > 0 {
			// No balancer reports this pool: no traffic data at all.
			values = map[string]float64{}
		}
	case pb.ScalingMetric_SCALING_METRIC_P95_LATENCY_MS:
		_, bounds, hist := a.s.lbstats.Window(in.pool.Name, now, window)
		if q := lbstats.Quantile(bounds, hist, 0.95); !math.IsNaN(q) && len(ready) > 0 {
			values["p95"] = q * 1000
		}
	}
	return values, stale
}

// later is the later of two times.
func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// average is the mean of points, and whether the newest is fresh; NaN
// when there are none.
func average(ps []metricstore.Point, now time.Time) (float64, bool) {
	if len(ps) == 0 {
		return math.NaN(), false
	}
	sum := 0.0
	for _, p := range ps {
		sum += p.Value
	}
	return sum / float64(len(ps)), now.Sub(ps[len(ps)-1].Time) <= freshFor
}

// callProvider makes the next attempt of an acting event's provider call,
// in the background, when its back-off has passed; the outcome is written
// to the event through Raft, so no later leader calls again for a
// decision whose call was recorded.
func (a *autoscaler) callProvider(ctx context.Context, ev *pb.ScaleEvent, now time.Time) {
	prev := ev.GetProvider()
	if prev != nil && now.Before(prev.Time.AsTime().Add(provider.Backoff(int(prev.Attempts)))) {
		return
	}
	var p *pb.ScaleProvider
	a.s.fsm.Read(func(st *pb.State) {
		if pool := st.Pools[ev.Pool]; pool != nil && pool.Scaling != nil {
			p = proto.CloneOf(pool.Scaling.Provider)
		}
	})
	if p == nil {
		return
	}
	a.mu.Lock()
	if a.inFlight[ev.Id] {
		a.mu.Unlock()
		return
	}
	a.inFlight[ev.Id] = true
	a.mu.Unlock()
	a.wg.Go(func() {
		defer func() {
			a.mu.Lock()
			delete(a.inFlight, ev.Id)
			a.mu.Unlock()
		}()
		res := provider.Call(ctx, p, ev, time.Now())
		if ctx.Err() != nil {
			return // leadership lost mid-call: the next leader calls again
		}
		res.Attempts = prev.GetAttempts() + 1
		res.Done = res.Ok || res.Attempts >= provider.MaxAttempts
		if !res.Ok {
			a.s.logger.Warn("scale provider failed", "pool", ev.Pool, "event", ev.Id, "attempt", res.Attempts, "err", res.Error)
		}
		if _, err := a.s.core.Apply(&pb.Command{Command: &pb.Command_RecordProviderResult{RecordProviderResult: &pb.RecordProviderResultCommand{
			Pool: ev.Pool, Event: ev.Id, Result: res}}}); err != nil && ctx.Err() == nil {
			a.s.logger.Warn("record provider result", "pool", ev.Pool, "event", ev.Id, "err", err)
		}
	})
}
