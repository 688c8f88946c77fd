package autoscale

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

const (
	instances = pb.RateLimitKind_RATE_LIMIT_KIND_INSTANCES
	percent   = pb.RateLimitKind_RATE_LIMIT_KIND_PERCENT
	selMin    = pb.SelectPolicy_SELECT_POLICY_MIN
	selOff    = pb.SelectPolicy_SELECT_POLICY_DISABLED
)

// vals is n ready instances reporting v each.
func vals(n uint32, v float64) map[string]float64 {
	m := map[string]float64{}
	for i := range n {
		m[fmt.Sprintf("web-%d", i+1)] = v
	}
	return m
}

// policy is instance CPU against a target of 100 with the defaults, edited.
func policy(edits ...func(*pb.ScalingPolicy)) *pb.ScalingPolicy {
	p := &pb.ScalingPolicy{Metric: pb.ScalingMetric_SCALING_METRIC_INSTANCE_CPU, Target: 100}
	for _, e := range edits {
		e(p)
	}
	return Defaults(p)
}

func limit(kind pb.RateLimitKind, v uint32, period time.Duration) *pb.RateLimit {
	return &pb.RateLimit{Kind: kind, Value: v, Period: durationpb.New(period)}
}

func downLimits(ls ...*pb.RateLimit) func(*pb.ScalingPolicy) {
	return func(p *pb.ScalingPolicy) { p.ScaleDownLimits = ls }
}

func downStabilization(d time.Duration) func(*pb.ScalingPolicy) {
	return func(p *pb.ScalingPolicy) { p.ScaleDownStabilization = durationpb.New(d) }
}

// fastDown removes any number at once, without a window.
var fastDown = []func(*pb.ScalingPolicy){downLimits(limit(percent, 100, 15*time.Second)), downStabilization(0)}

// concurrency makes requests in flight the policy's metric, at target.
func concurrency(target float64) func(*pb.ScalingPolicy) {
	return func(p *pb.ScalingPolicy) {
		p.Metric, p.Target = pb.ScalingMetric_SCALING_METRIC_CONCURRENCY_PER_INSTANCE, target
	}
}

// further adds a further metric to the policy.
func further(m pb.ScalingMetric, target float64) func(*pb.ScalingPolicy) {
	return func(p *pb.ScalingPolicy) {
		p.Metrics = append(p.Metrics, &pb.MetricTarget{Metric: m, Target: target})
	}
}

// input is a pool of desired instances, ready of them reporting v each,
// bounds 1..100, evaluated at t0 with the default policy.
func input(desired, ready uint32, v float64, edits ...func(*pb.ScalingPolicy)) Input {
	return Input{
		Now: t0, Pool: "web", Policy: policy(edits...), Min: 1, Max: 100,
		Desired: desired, Current: desired, Ready: ready, Values: vals(ready, v),
	}
}

// event is a past evaluation at t0+at that moved prev to desired (acted
// when they differ) after recommending rec.
func event(at time.Duration, prev, desired, rec uint32, limitedBy string) *pb.ScaleEvent {
	return &pb.ScaleEvent{
		Pool: "web", Time: timestamppb.New(t0.Add(at)), PreviousDesired: prev, Desired: desired,
		Recommendation: rec, Acted: prev != desired, LimitedBy: limitedBy, Term: 1,
	}
}

func TestDecide_singleEvaluation(t *testing.T) {
	tests := []struct {
		name      string
		in        Input
		edit      func(*Input)
		raw, rec  uint32
		desired   uint32
		limitedBy string
		reason    string
	}{
		// The HPA docs: 200m against 100m doubles, 50m against 100m halves.
		{name: "200 against a target of 100 doubles", in: input(2, 2, 200), raw: 4, rec: 4, desired: 4},
		{name: "50 against a target of 100 halves", in: input(4, 4, 50, fastDown...), raw: 2, rec: 2, desired: 2},
		{name: "requests in flight above the target add instances", in: input(2, 2, 6, concurrency(3)), raw: 4, rec: 4, desired: 4,
			reason: "observed 6.0 requests in flight per instance against a target of 3.0"},
		{name: "the default scale-down removes one per minute", in: input(4, 4, 50), raw: 2, rec: 2, desired: 3,
			limitedBy: "rate", reason: "rate limit -1/60s allows 3"},
		{name: "ratio 1.05 is within the default tolerance", in: input(10, 10, 105), raw: 11, rec: 10, desired: 10,
			limitedBy: "tolerance", reason: "within the 10.0% tolerance: keep 10"},
		{name: "ratio 0.95 is within the default tolerance", in: input(20, 20, 95), raw: 19, rec: 20, desired: 20, limitedBy: "tolerance"},
		{name: "ratio exactly 1.1 is within the tolerance despite float noise", in: input(10, 10, 110), raw: 11, rec: 10, desired: 10, limitedBy: "tolerance"},
		{name: "ratio 1.11 is outside the tolerance", in: input(10, 10, 111), raw: 12, rec: 12, desired: 12},
		{name: "a tolerance of 0 follows every change", in: input(10, 10, 105, func(p *pb.ScalingPolicy) { p.Tolerance = proto.Float64(0) }),
			raw: 11, rec: 11, desired: 11},
		// 1.1 / 0.1 is 11.000000000000002 in floats.
		{name: "float noise adds no instance", in: input(1, 1, 1.1, func(p *pb.ScalingPolicy) {
			p.Target = 0.1
			p.ScaleUpLimits = []*pb.RateLimit{limit(percent, 1000, 15*time.Second)}
		}), raw: 11, rec: 11, desired: 11},

		// The default scale-up: the larger of +100 % and +4 per 15s.
		{name: "from 1 the +4 limit wins over +100%", in: input(1, 1, 1000), raw: 10, rec: 10, desired: 5,
			limitedBy: "rate", reason: "rate limit +4/15s allows 5"},
		{name: "from 10 the +100% limit wins over +4", in: input(10, 10, 1000), raw: 100, rec: 100, desired: 20,
			limitedBy: "rate", reason: "rate limit +100%/15s allows 20"},
		{name: "select MIN takes the smaller scale-up", in: input(10, 10, 1000, func(p *pb.ScalingPolicy) { p.ScaleUpSelect = selMin }),
			raw: 100, rec: 100, desired: 14, limitedBy: "rate", reason: "rate limit +4/15s allows 14"},
		{name: "select MIN takes the smaller scale-down",
			in:  input(80, 80, 12.5, downLimits(limit(instances, 4, time.Minute), limit(percent, 10, time.Minute)), downStabilization(0), func(p *pb.ScalingPolicy) { p.ScaleDownSelect = selMin }),
			raw: 10, rec: 10, desired: 76, limitedBy: "rate", reason: "rate limit -4/60s allows 76"},
		{name: "scale-up disabled", in: input(10, 10, 1000, func(p *pb.ScalingPolicy) { p.ScaleUpSelect = selOff }),
			raw: 100, rec: 100, desired: 10, limitedBy: "rate", reason: "scaling up is disabled"},
		{name: "scale-down disabled", in: input(10, 10, 10, func(p *pb.ScalingPolicy) { p.ScaleDownSelect = selOff }),
			raw: 1, rec: 1, desired: 10, limitedBy: "rate", reason: "scaling down is disabled"},
		{name: "a percent scale-up moves a pool of one by at least one",
			in:  input(1, 1, 300, func(p *pb.ScalingPolicy) { p.ScaleUpLimits = []*pb.RateLimit{limit(percent, 10, time.Minute)} }),
			raw: 3, rec: 3, desired: 2, limitedBy: "rate", reason: "rate limit +10%/60s allows 2"},

		// The bounds come last and name themselves.
		{name: "max caps after the rate limit", in: input(4, 4, 400), edit: func(in *Input) { in.Max = 6 },
			raw: 16, rec: 16, desired: 6, limitedBy: "max", reason: "the pool's max is 6"},
		{name: "min floors after the rate limit", in: input(4, 4, 10, fastDown...), edit: func(in *Input) { in.Min = 3 },
			raw: 1, rec: 1, desired: 3, limitedBy: "min", reason: "the pool's min is 3"},
		{name: "desired above a lowered max comes down to it at once", in: input(10, 10, 100), edit: func(in *Input) { in.Max = 6 },
			raw: 10, rec: 10, desired: 6, limitedBy: "max"},
		{name: "no load goes to min", in: input(3, 3, 0, fastDown...), raw: 0, rec: 0, desired: 1, limitedBy: "min"},
		// A pool of none reports nothing: autoscaling never empties one.
		{name: "no load with a min of 0 keeps one instance", in: input(3, 3, 0, fastDown...), edit: func(in *Input) { in.Min = 0 },
			raw: 0, rec: 0, desired: 1, limitedBy: "min", reason: "autoscaling keeps at least 1 instance"},
		{name: "a pool of one with a min of 0 stays at one", in: input(1, 1, 0, fastDown...), edit: func(in *Input) { in.Min = 0 },
			raw: 0, rec: 0, desired: 1, limitedBy: "min"},
		{name: "a max of 0 still empties the pool", in: input(2, 2, 100), edit: func(in *Input) { in.Min, in.Max = 0, 0 },
			raw: 2, rec: 2, desired: 0, limitedBy: "max", reason: "the pool's max is 0"},

		// One value for the pool (p95 latency) scales with the ready count.
		{name: "p95 latency above its target", in: Input{
			Now: t0, Pool: "web", Min: 1, Max: 100, Desired: 4, Current: 4, Ready: 4, Values: map[string]float64{"p95": 300},
			Policy: Defaults(&pb.ScalingPolicy{Metric: pb.ScalingMetric_SCALING_METRIC_P95_LATENCY_MS, Target: 200}),
		}, raw: 6, rec: 6, desired: 6, reason: "observed 300.0 ms p95 latency against a target of 200.0 (ratio 1.50) over 4 ready of 4: want 6"},

		// Windows.
		{name: "the scale-up window applies its lowest recommendation",
			in: input(4, 4, 250, func(p *pb.ScalingPolicy) { p.ScaleUpStabilization = durationpb.New(time.Minute) }),
			edit: func(in *Input) {
				in.Events = []*pb.ScaleEvent{event(-90*time.Second, 4, 4, 3, ""), event(-30*time.Second, 4, 4, 5, "")}
			},
			raw: 10, rec: 10, desired: 5, limitedBy: "window", reason: "the lowest recommendation of the last 60s is 5"},
		{name: "the scale-down window applies its highest recommendation", in: input(4, 4, 50),
			edit: func(in *Input) { in.Events = []*pb.ScaleEvent{event(-299*time.Second, 4, 4, 6, "")} },
			raw:  2, rec: 2, desired: 4, limitedBy: "window", reason: "the highest recommendation of the last 300s is 6"},
		{name: "the scale-down window forgets what is older", in: input(4, 4, 50),
			edit: func(in *Input) { in.Events = []*pb.ScaleEvent{event(-300*time.Second, 4, 4, 6, "")} },
			raw:  2, rec: 2, desired: 3, limitedBy: "rate"},
		{name: "held evaluations do not feed the windows", in: input(4, 4, 50),
			edit: func(in *Input) {
				in.Events = []*pb.ScaleEvent{
					event(-30*time.Second, 4, 4, 9, "stale"), event(-20*time.Second, 4, 4, 9, "warming-up"), event(-10*time.Second, 4, 4, 9, "no-data"),
				}
			},
			raw: 2, rec: 2, desired: 3, limitedBy: "rate"},

		// Rate periods count the changes made within them.
		{name: "additions within the period use up the scale-up limit", in: input(8, 8, 1000),
			edit: func(in *Input) { in.Events = []*pb.ScaleEvent{event(-10*time.Second, 4, 8, 8, "")} },
			raw:  80, rec: 80, desired: 8, limitedBy: "rate", reason: "rate limit +100%/15s allows 8 (4 added in the last 15s)"},
		{name: "events not acted on do not count", in: input(8, 8, 1000),
			edit: func(in *Input) {
				ev := event(-10*time.Second, 4, 8, 8, "")
				ev.Acted = false // recorded, not applied (a ScalePool in between)
				in.Events = []*pb.ScaleEvent{ev}
			},
			raw: 80, rec: 80, desired: 16, limitedBy: "rate"},
		{name: "removals do not count against a scale-up", in: input(8, 8, 1000),
			edit: func(in *Input) { in.Events = []*pb.ScaleEvent{event(-10*time.Second, 12, 8, 8, "")} },
			raw:  80, rec: 80, desired: 16, limitedBy: "rate"},
		{name: "events stamped after now (a leader's clock behind) count", in: input(8, 8, 1000),
			edit: func(in *Input) { in.Events = []*pb.ScaleEvent{event(5*time.Second, 4, 8, 8, "")} },
			raw:  80, rec: 80, desired: 8, limitedBy: "rate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.in
			if tt.edit != nil {
				tt.edit(&in)
			}
			ev := Decide(in)
			require.Equal(t, tt.raw, ev.RawDesired, "raw_desired; %s", ev.Reason)
			require.Equal(t, tt.rec, ev.Recommendation, "recommendation; %s", ev.Reason)
			require.Equal(t, tt.desired, ev.Desired, "desired; %s", ev.Reason)
			require.Equal(t, tt.limitedBy, ev.LimitedBy, "limited_by; %s", ev.Reason)
			require.Equal(t, tt.desired != in.Desired, ev.Acted)
			require.Equal(t, in.Desired, ev.PreviousDesired)
			require.Contains(t, ev.Reason, tt.reason)
			require.Equal(t, in.Pool, ev.Pool)
			require.True(t, ev.Time.AsTime().Equal(in.Now))
			require.Equal(t, in.Policy.Metric, ev.Metric)
			require.Equal(t, in.Policy.Target, ev.Target)
			require.Equal(t, in.Current, ev.Current)
			require.Equal(t, in.Ready, ev.Ready)
			require.Equal(t, in.Values, ev.Observed)
		})
	}
}

func TestDecide_reasonReadsAsASentence(t *testing.T) {
	in := input(2, 2, 180)
	in.Policy = policy(func(p *pb.ScalingPolicy) { p.Metric = pb.ScalingMetric_SCALING_METRIC_REQUESTS_PER_INSTANCE })
	ev := Decide(in)
	require.Equal(t, "observed 180.0 req/s per instance against a target of 100.0 (ratio 1.80) over 2 ready of 2: "+
		"want 4; rate limit +4/15s allows 6 → 4", ev.Reason)
	require.InDelta(t, 180, ev.ObservedValue, 1e-9)

	in = input(2, 2, 100)
	require.Equal(t, "observed 100.0% CPU per instance against a target of 100.0 (ratio 1.00) over 2 ready of 2: "+
		"want 2 → stays at 2", Decide(in).Reason)
}

func TestDecide_holds(t *testing.T) {
	tests := []struct {
		name      string
		in        Input
		edit      func(*Input)
		raw, rec  uint32
		limitedBy string
		reason    string
	}{
		{name: "no values", in: input(3, 3, 0), edit: func(in *Input) { in.Values = nil },
			raw: 3, rec: 3, limitedBy: "no-data", reason: "no data: 3 ready of 3, 0 with a value"},
		{name: "no ready instance", in: input(3, 0, 0), edit: func(in *Input) { in.Values = map[string]float64{"web-1": 500} },
			raw: 3, rec: 3, limitedBy: "no-data"},
		{name: "only unusable values", in: input(3, 3, 0),
			edit: func(in *Input) { in.Values = map[string]float64{"a": math.NaN(), "b": math.Inf(1), "c": -1} },
			raw:  3, rec: 3, limitedBy: "no-data"},
		{name: "stale data holds a scale-down", in: input(4, 4, 20), edit: func(in *Input) { in.Stale = true },
			raw: 1, rec: 1, limitedBy: "stale", reason: "some ready instance has no fresh data: no scale-down below 4"},
		{name: "warming up holds a scale-up", in: input(4, 4, 200), edit: func(in *Input) { in.WarmingUp = true },
			raw: 8, rec: 8, limitedBy: "warming-up", reason: "this leader has not had one window (10s) of data yet: hold at 4"},
		{name: "warming up holds a scale-down", in: input(4, 4, 20), edit: func(in *Input) { in.WarmingUp = true },
			raw: 1, rec: 1, limitedBy: "warming-up"},
		{name: "warming up is named even when the metric agrees", in: input(4, 4, 100), edit: func(in *Input) { in.WarmingUp = true },
			raw: 4, rec: 4, limitedBy: "warming-up"},
		{name: "a pool an operator emptied stays empty", in: input(0, 0, 0), edit: func(in *Input) { in.Min, in.Values = 0, nil },
			raw: 0, rec: 0, limitedBy: "no-data", reason: "no data: 0 ready of 0"},
		{name: "a hold does not act even outside the bounds", in: input(4, 4, 200),
			edit: func(in *Input) { in.WarmingUp, in.Max = true, 3 }, raw: 8, rec: 8, limitedBy: "warming-up"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.in
			tt.edit(&in)
			ev := Decide(in)
			require.Equal(t, in.Desired, ev.Desired, ev.Reason)
			require.False(t, ev.Acted)
			require.Equal(t, tt.raw, ev.RawDesired, ev.Reason)
			require.Equal(t, tt.rec, ev.Recommendation, ev.Reason)
			require.Equal(t, tt.limitedBy, ev.LimitedBy, ev.Reason)
			require.Contains(t, ev.Reason, tt.reason)
		})
	}
}

func TestDecide_staleDataDoesNotHoldAScaleUpOrATolerance(t *testing.T) {
	in := input(2, 2, 200)
	in.Stale = true
	ev := Decide(in)
	require.Equal(t, uint32(4), ev.Desired)
	require.Empty(t, ev.LimitedBy)

	in = input(20, 20, 95)
	in.Stale = true
	require.Equal(t, "tolerance", Decide(in).LimitedBy)
}

func TestDecide_ignoresUnusableValues(t *testing.T) {
	in := input(2, 2, 0)
	in.Values = map[string]float64{"web-1": 200, "web-2": math.NaN()}
	ev := Decide(in)
	require.Equal(t, map[string]float64{"web-1": 200}, ev.Observed)
	require.Equal(t, 200.0, ev.ObservedValue)
	require.Equal(t, uint32(4), ev.RawDesired)
}

// sim runs one pool through evaluations every period, feeding each
// returned event back as history, as the leader and the FSM do; load
// gives the pool's total load at a time, spread over ready = desired
// instances.
type sim struct {
	in     Input
	period time.Duration
	load   func(at time.Duration) float64
	events []*pb.ScaleEvent
}

func (s *sim) step() *pb.ScaleEvent {
	in := s.in
	at := in.Now.Sub(t0)
	in.Ready, in.Current = in.Desired, in.Desired
	in.Values = vals(in.Ready, s.load(at)/float64(in.Ready))
	in.Events = s.events
	ev := Decide(in)
	s.events = append(s.events, ev)
	s.in.Desired = ev.Desired
	s.in.Now = s.in.Now.Add(s.period)
	return ev
}

// run steps until the time reaches until, returning the acted events.
func (s *sim) run(until time.Duration) []*pb.ScaleEvent {
	var acted []*pb.ScaleEvent
	for s.in.Now.Sub(t0) < until {
		if ev := s.step(); ev.Acted {
			acted = append(acted, ev)
		}
	}
	return acted
}

func desireds(evs []*pb.ScaleEvent) []uint32 {
	var out []uint32
	for _, ev := range evs {
		out = append(out, ev.Desired)
	}
	return out
}

func offsets(evs []*pb.ScaleEvent) []time.Duration {
	var out []time.Duration
	for _, ev := range evs {
		out = append(out, ev.Time.AsTime().Sub(t0))
	}
	return out
}

// The scale-down window keeps the highest recommendation of the last 300s:
// a drop in load holds until the last high recommendation is 300s old,
// then the pool follows at the scale-down rate.
func TestDecide_scaleDownWindowHoldsUntilItPasses(t *testing.T) {
	s := &sim{in: input(8, 8, 0), period: 5 * time.Second, load: func(at time.Duration) float64 {
		if at < time.Minute {
			return 800
		}
		return 400
	}}
	require.Empty(t, s.run(time.Minute))
	// The last recommendation of 8 was made at 55s; it leaves the window
	// at 355s.
	for s.in.Now.Sub(t0) < 355*time.Second {
		ev := s.step()
		require.False(t, ev.Acted, ev.Reason)
		require.Equal(t, uint32(4), ev.Recommendation)
		require.Equal(t, "window", ev.LimitedBy, ev.Reason)
		require.Contains(t, ev.Reason, "the highest recommendation of the last 300s is 8")
	}
	acted := s.run(10 * time.Minute)
	require.Equal(t, []uint32{7, 6, 5, 4}, desireds(acted))
	require.Equal(t, []time.Duration{355 * time.Second, 415 * time.Second, 475 * time.Second, 535 * time.Second}, offsets(acted))
	for _, ev := range acted[:3] {
		require.Equal(t, "rate", ev.LimitedBy, ev.Reason)
	}
	require.Empty(t, acted[3].LimitedBy, "the last step reaches the metric's count")
}

// The HPA docs' percent scale-down: from 80 towards 10 with 4 instances or
// 10 % per 60s (MAX: whichever removes more), removing 8 first; then the
// removal counted in the period holds until it passes; at 72, 10 % is 7.2,
// rounded up to 8; below 40 the 4-instance policy removes more.
func TestDecide_percentScaleDownCountsRemovalsInThePeriod(t *testing.T) {
	in := input(80, 80, 0, downLimits(limit(instances, 4, time.Minute), limit(percent, 10, time.Minute)), downStabilization(0))
	s := &sim{in: in, period: 5 * time.Second, load: func(time.Duration) float64 { return 1000 }}

	first := s.step()
	require.Equal(t, uint32(72), first.Desired)
	require.Equal(t, "rate", first.LimitedBy)
	require.Contains(t, first.Reason, "rate limit -10%/60s allows 72")
	for s.in.Now.Sub(t0) < time.Minute {
		ev := s.step()
		require.Equal(t, uint32(72), ev.Desired, ev.Reason)
		require.Equal(t, "rate", ev.LimitedBy)
		require.Contains(t, ev.Reason, "(8 removed in the last 60s)")
	}
	acted := s.run(20 * time.Minute)
	require.Equal(t, []uint32{64, 57, 51, 45, 40, 36, 32, 28, 24, 20, 16, 12, 10}, desireds(acted))
	for i, at := range offsets(acted) {
		require.Equal(t, time.Duration(i+1)*time.Minute, at)
	}
	require.Empty(t, acted[len(acted)-1].LimitedBy, "the last step reaches the metric's count")
}

// The default scale-up from 1 under heavy load: +4 per 15s while it beats
// doubling, then doubling, each limit measured from the count at the start
// of its period.
func TestDecide_defaultScaleUpOverTime(t *testing.T) {
	in := input(1, 1, 0)
	s := &sim{in: in, period: 5 * time.Second, load: func(time.Duration) float64 { return 20000 }}
	acted := s.run(2 * time.Minute)
	require.Equal(t, []uint32{5, 10, 20, 40, 80, 100}, desireds(acted))
	require.Equal(t, []time.Duration{0, 15 * time.Second, 30 * time.Second, 45 * time.Second, time.Minute, 75 * time.Second}, offsets(acted))
	require.Equal(t, "max", acted[len(acted)-1].LimitedBy)
}

// A load wandering inside the tolerance never changes the pool; without a
// tolerance the same load does.
func TestDecide_flappingInsideToleranceChangesNothing(t *testing.T) {
	ratios := []float64{0.93, 1.07, 0.95, 1.09, 0.91, 1.05, 0.99, 1.08}
	load := func(at time.Duration) float64 { return 1000 * ratios[int(at/(5*time.Second))%len(ratios)] }

	s := &sim{in: input(10, 10, 0), period: 5 * time.Second, load: load}
	for range 200 {
		ev := s.step()
		require.False(t, ev.Acted, ev.Reason)
		require.Equal(t, uint32(10), ev.Desired)
	}

	s = &sim{in: input(10, 10, 0, func(p *pb.ScalingPolicy) { p.Tolerance = proto.Float64(0) }), period: 5 * time.Second, load: load}
	require.NotEmpty(t, s.run(200*5*time.Second))
}

// Instances still starting count in Desired and not in Ready: while they
// boot, the same per-instance load on the ready ones asks for the same
// count, which Desired already holds.
func TestDecide_startingInstancesDoNotChainScaleUps(t *testing.T) {
	in := input(2, 2, 200)
	first := Decide(in)
	require.Equal(t, uint32(4), first.Desired)

	events := []*pb.ScaleEvent{first}
	for i := 1; i <= 12; i++ {
		in := input(4, 2, 200) // 2 ready, 2 starting, same load on the ready ones
		in.Now = t0.Add(time.Duration(i) * 5 * time.Second)
		in.Events = events
		ev := Decide(in)
		require.Equal(t, uint32(4), ev.RawDesired)
		require.Equal(t, uint32(4), ev.Desired, ev.Reason)
		require.False(t, ev.Acted)
		require.Empty(t, ev.LimitedBy)
		events = append(events, ev)
	}
}

// A new leader reads the previous leader's events from the replicated
// state: its recent scale-up counts against the rate limit, and its
// recommendations stay in the windows.
func TestDecide_newLeaderHonoursThePreviousLeadersEvents(t *testing.T) {
	t.Run("rate", func(t *testing.T) {
		old := event(-10*time.Second, 4, 8, 8, "") // term 1, 10s ago
		in := input(8, 4, 400)                     // 4 ready, 4 starting
		in.Events = []*pb.ScaleEvent{old}
		ev := Decide(in)
		require.Equal(t, uint32(16), ev.RawDesired)
		require.Equal(t, uint32(8), ev.Desired, ev.Reason)
		require.Equal(t, "rate", ev.LimitedBy)
		require.Contains(t, ev.Reason, "(4 added in the last 15s)")

		in.Now = t0.Add(5 * time.Second) // the old event leaves the 15s period
		require.Equal(t, uint32(16), Decide(in).Desired)
	})
	t.Run("window", func(t *testing.T) {
		in := input(10, 10, 50)
		in.Events = []*pb.ScaleEvent{event(-100*time.Second, 10, 10, 10, ""), event(-95*time.Second, 10, 10, 10, "tolerance")}
		ev := Decide(in)
		require.Equal(t, uint32(10), ev.Desired, ev.Reason)
		require.Equal(t, "window", ev.LimitedBy)
	})
}

func TestDecide_isDeterministic(t *testing.T) {
	in := input(7, 7, 0)
	in.Values = map[string]float64{}
	for i := range 50 {
		in.Values[fmt.Sprintf("web-%d", i)] = 100 + float64(i)/3
	}
	in.Ready = 50
	want := Decide(in)
	for range 20 {
		require.True(t, proto.Equal(want, Decide(in)))
	}
}

func TestDecide_nilPolicyHoldsWithoutPanicking(t *testing.T) {
	in := input(3, 3, 100)
	in.Policy = nil
	ev := Decide(in)
	require.Equal(t, uint32(3), ev.Desired)
	require.Equal(t, "no-data", ev.LimitedBy)
}

func FuzzDecide(f *testing.F) {
	f.Add(uint32(4), uint32(4), uint32(1), uint32(10), 150.0, false, false, uint32(2), uint32(4), int64(-10))
	f.Add(uint32(80), uint32(80), uint32(0), uint32(100), 12.5, true, false, uint32(90), uint32(80), int64(5))
	f.Add(uint32(0), uint32(0), uint32(0), uint32(0), 0.0, false, true, uint32(0), uint32(0), int64(0))
	f.Fuzz(func(t *testing.T, desired, ready, lo, hi uint32, v float64, stale, warm bool, evPrev, evDesired uint32, evAt int64) {
		in := input(desired, ready%1000, v)
		in.Min, in.Max, in.Stale, in.WarmingUp = lo, hi, stale, warm
		in.Events = []*pb.ScaleEvent{event(time.Duration(evAt)*time.Second, evPrev, evDesired, evDesired, "")}
		ev := Decide(in)
		require.True(t, proto.Equal(ev, Decide(in)), "not deterministic")
		require.Equal(t, ev.Desired != desired, ev.Acted)
		require.Equal(t, desired, ev.PreviousDesired)
		require.NotEmpty(t, ev.Reason)
		switch ev.LimitedBy {
		case "no-data", "stale", "warming-up":
			require.Equal(t, desired, ev.Desired)
		case "", "tolerance", "window", "rate", "min", "max":
			if lo <= hi {
				require.GreaterOrEqual(t, ev.Desired, lo)
				require.LessOrEqual(t, ev.Desired, hi)
			}
		default:
			t.Fatalf("unknown limited_by %q", ev.LimitedBy)
		}
		if ev.Acted && ev.LimitedBy != "min" && ev.LimitedBy != "max" {
			// Without the bounds forcing it, a change moves towards the
			// recommendation and never past it.
			if ev.Desired > desired {
				require.LessOrEqual(t, ev.Desired, ev.Recommendation)
			} else {
				require.GreaterOrEqual(t, ev.Desired, ev.Recommendation)
			}
		}
	})
}

// With several metrics each is evaluated on its own and the pool takes
// the most any asks for; a metric without data or with stale data holds a
// scale-down, never a scale-up.
func TestDecide_severalMetricsTakeTheLargest(t *testing.T) {
	rps := pb.ScalingMetric_SCALING_METRIC_REQUESTS_PER_INSTANCE
	cpu := pb.ScalingMetric_SCALING_METRIC_INSTANCE_CPU
	withRPS := func(p *pb.ScalingPolicy) { p.Metrics = []*pb.MetricTarget{{Metric: rps, Target: 20}} }
	more := func(v float64, stale bool) []MetricValues {
		return []MetricValues{{Values: vals(2, v), Stale: stale}}
	}

	// CPU at its target (ratio 1), requests at twice theirs: 4.
	in := input(2, 2, 100, withRPS)
	in.More = more(40, false)
	ev := Decide(in)
	require.EqualValues(t, 4, ev.Desired, ev.Reason)
	require.Equal(t, rps, ev.Metric, "the metric that asked for the most is shown")
	require.Equal(t, 40.0, ev.ObservedValue)
	require.Equal(t, 20.0, ev.Target)
	require.EqualValues(t, 4, ev.RawDesired)
	require.Len(t, ev.Metrics, 2)
	require.Equal(t, cpu, ev.Metrics[0].Metric, "the policy's own metric first")
	require.EqualValues(t, 2, ev.Metrics[0].Recommendation)
	require.EqualValues(t, 4, ev.Metrics[1].Recommendation)
	require.Contains(t, ev.Reason, "the most any metric asks for is 4 (req/s per instance)")

	// CPU asks for 6, requests for 1: 6.
	in = input(2, 2, 300, withRPS)
	in.More = more(5, false)
	ev = Decide(in)
	require.EqualValues(t, 6, ev.Desired, ev.Reason)
	require.EqualValues(t, 6, ev.Recommendation)
	require.Equal(t, cpu, ev.Metric)

	// Both low: the larger of two scale-downs.
	in = input(4, 4, 25, append(fastDown, withRPS)...)
	in.More = more(10, false)
	ev = Decide(in)
	require.EqualValues(t, 2, ev.Desired, ev.Reason)
	require.Equal(t, rps, ev.Metric)

	// Requests have no data: CPU may scale up, not down.
	in = input(2, 2, 200, withRPS)
	in.More = []MetricValues{{}}
	ev = Decide(in)
	require.EqualValues(t, 4, ev.Desired, ev.Reason)
	require.True(t, ev.Metrics[1].NoData)
	in = input(4, 4, 25, append(fastDown, withRPS)...)
	in.More = []MetricValues{{}}
	ev = Decide(in)
	require.EqualValues(t, 4, ev.Desired, ev.Reason)
	require.Equal(t, LimitedByNoData, ev.LimitedBy)
	require.Contains(t, ev.Reason, "req/s per instance has no data: no scale-down below 4")

	// Stale requests hold a scale-down too.
	in = input(4, 4, 25, append(fastDown, withRPS)...)
	in.More = more(10, true)
	ev = Decide(in)
	require.EqualValues(t, 4, ev.Desired, ev.Reason)
	require.Equal(t, LimitedByStale, ev.LimitedBy)

	// No metric has data: held, the policy's own metric shown.
	in = input(3, 0, 0, withRPS)
	in.More = []MetricValues{{}}
	ev = Decide(in)
	require.EqualValues(t, 3, ev.Desired)
	require.Equal(t, LimitedByNoData, ev.LimitedBy)
	require.Equal(t, cpu, ev.Metric)

	// One metric alone records no per-metric list.
	require.Empty(t, Decide(input(2, 2, 100)).Metrics)
}

func TestDecide_scaleToZero(t *testing.T) {
	zero := func(p *pb.ScalingPolicy) { p.ScaleToZeroAfter = durationpb.New(5 * time.Minute) }
	tests := []struct {
		name      string
		in        Input
		edit      func(*Input)
		desired   uint32
		acted     bool
		limitedBy string
		reason    string
	}{
		{name: "idle long enough goes to 0 at once", in: input(3, 3, 0, zero),
			edit:    func(in *Input) { in.Min, in.Idle, in.IdleKnown = 0, 6*time.Minute, true },
			desired: 0, acted: true, limitedBy: "idle", reason: "no request for 360s (scale_to_zero_after 300s) → 0"},
		{name: "idle exactly the period goes to 0", in: input(1, 1, 0, zero),
			edit:    func(in *Input) { in.Min, in.Idle, in.IdleKnown = 0, 5*time.Minute, true },
			desired: 0, acted: true, limitedBy: "idle"},
		{name: "idle on a new leader's first window still goes to 0", in: input(1, 1, 0, zero),
			edit: func(in *Input) {
				in.Min, in.Idle, in.IdleKnown, in.WarmingUp, in.Values = 0, 5*time.Minute, true, true, nil
			},
			desired: 0, acted: true, limitedBy: "idle"},
		{name: "idle not long enough keeps one", in: input(1, 1, 0, zero),
			edit:    func(in *Input) { in.Min, in.Idle, in.IdleKnown = 0, 4*time.Minute, true },
			desired: 1, limitedBy: "min", reason: "autoscaling keeps at least 1 instance"},
		{name: "idle unknown keeps one", in: input(1, 1, 0, zero),
			edit:    func(in *Input) { in.Min, in.Idle = 0, time.Hour },
			desired: 1, limitedBy: "min"},
		{name: "a waiting request keeps an idle pool", in: input(1, 1, 0, zero),
			edit:    func(in *Input) { in.Min, in.Idle, in.IdleKnown, in.Waiting = 0, time.Hour, true, 1 },
			desired: 1, limitedBy: "min"},
		{name: "a min above 0 keeps an idle pool", in: input(2, 2, 0, zero),
			edit:    func(in *Input) { in.Min, in.Idle, in.IdleKnown = 2, time.Hour, true },
			desired: 2, limitedBy: "min"},
		{name: "without scale_to_zero_after idle keeps one", in: input(1, 1, 0),
			edit:    func(in *Input) { in.Min, in.Idle, in.IdleKnown = 0, time.Hour, true },
			desired: 1, limitedBy: "min"},
		{name: "a waiting request activates a pool of 0", in: input(0, 0, 0, zero),
			edit:    func(in *Input) { in.Min, in.Values, in.Waiting = 0, nil, 3 },
			desired: 1, acted: true, limitedBy: "activation", reason: "3 requests wait for an instance at the balancers → 1"},
		{name: "activation on a new leader's first window", in: input(0, 0, 0, zero),
			edit:    func(in *Input) { in.Min, in.Values, in.Waiting, in.WarmingUp = 0, nil, 1, true },
			desired: 1, acted: true, limitedBy: "activation", reason: "1 request waits"},
		{name: "activation to a min above 1", in: input(0, 0, 0, zero),
			edit:    func(in *Input) { in.Min, in.Values, in.Waiting = 2, nil, 1 },
			desired: 2, acted: true, limitedBy: "activation"},
		{name: "a concurrency target sizes the activation", in: input(0, 0, 0, zero, concurrency(4)),
			edit:    func(in *Input) { in.Min, in.Values, in.Waiting = 0, nil, 10 },
			desired: 3, acted: true, limitedBy: "activation",
			reason: "10 requests wait for an instance at the balancers, 3 instances at 4.0 in flight each → 3"},
		{name: "a further concurrency metric sizes it too", in: input(0, 0, 0, zero, further(pb.ScalingMetric_SCALING_METRIC_CONCURRENCY_PER_INSTANCE, 2)),
			edit:    func(in *Input) { in.Min, in.Values, in.Waiting = 0, nil, 5 },
			desired: 3, acted: true, limitedBy: "activation"},
		{name: "a concurrency activation stops at max", in: input(0, 0, 0, zero, concurrency(1)),
			edit:    func(in *Input) { in.Min, in.Max, in.Values, in.Waiting = 0, 5, nil, 40 },
			desired: 5, acted: true, limitedBy: "activation", reason: "5 instances at 1.0 in flight each (max 5) → 5"},
		{name: "a min above what the waiting requests need wins", in: input(0, 0, 0, zero, concurrency(10)),
			edit:    func(in *Input) { in.Min, in.Values, in.Waiting = 4, nil, 25 },
			desired: 4, acted: true, limitedBy: "activation", reason: "25 requests wait for an instance at the balancers → 4"},
		{name: "more held requests than an activated pool takes raise it at once", in: input(1, 0, 0, zero, concurrency(2)),
			edit:    func(in *Input) { in.Min, in.Values, in.Waiting = 0, nil, 9 },
			desired: 5, acted: true, limitedBy: "activation", reason: "9 requests wait for an instance at the balancers, 5 instances at 2.0 in flight each → 5"},
		{name: "held requests the pool can take change nothing", in: input(3, 0, 0, zero, concurrency(2)),
			edit:    func(in *Input) { in.Min, in.Values, in.Waiting = 0, nil, 6 },
			desired: 3, limitedBy: "no-data"},
		{name: "a request rate target does not size it", in: input(0, 0, 0, zero, func(p *pb.ScalingPolicy) {
			p.Metric, p.Target = pb.ScalingMetric_SCALING_METRIC_REQUESTS_PER_INSTANCE, 1
		}),
			edit:    func(in *Input) { in.Min, in.Values, in.Waiting = 0, nil, 30 },
			desired: 1, acted: true, limitedBy: "activation"},
		{name: "no activation with a max of 0", in: input(0, 0, 0, zero),
			edit:    func(in *Input) { in.Min, in.Max, in.Values, in.Waiting = 0, 0, nil, 1 },
			desired: 0, limitedBy: "no-data"},
		{name: "no activation without scale_to_zero_after", in: input(0, 0, 0),
			edit:    func(in *Input) { in.Min, in.Values, in.Waiting = 0, nil, 1 },
			desired: 0, limitedBy: "no-data"},
		{name: "a pool of 0 with nothing waiting stays", in: input(0, 0, 0, zero),
			edit:    func(in *Input) { in.Min, in.Values, in.Idle, in.IdleKnown = 0, nil, time.Hour, true },
			desired: 0, limitedBy: "no-data"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.in
			tt.edit(&in)
			ev := Decide(in)
			require.Equal(t, tt.desired, ev.Desired, ev.Reason)
			require.Equal(t, tt.acted, ev.Acted, ev.Reason)
			require.Equal(t, tt.limitedBy, ev.LimitedBy, ev.Reason)
			require.Contains(t, ev.Reason, tt.reason)
			if tt.limitedBy == "idle" || tt.limitedBy == "activation" {
				require.Equal(t, tt.desired, ev.Recommendation, "the rule's count is the recommendation the windows see")
			}
		})
	}
}
