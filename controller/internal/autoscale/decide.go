package autoscale

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// The values of ScaleEvent.limited_by. An event names the last rule that
// changed the count on its way from raw_desired to desired, so that the
// reader sees what decided; it is empty when the metric decided alone (no
// rule changed raw_desired). The three holds are named whenever they
// apply: the metric did not decide then, whatever the numbers say.
const (
	// |ratio − 1| within the tolerance: the pool's desired is kept.
	LimitedByTolerance = "tolerance"
	// The pool's bounds.
	LimitedByMin = "min"
	LimitedByMax = "max"
	// A scale-up or scale-down limit, or a disabled direction.
	LimitedByRate = "rate"
	// A stabilization window's lowest (up) or highest (down)
	// recommendation.
	LimitedByWindow = "window"
	// Holds: no ready instance with data; a scale-down on stale data; a
	// new leader's first window.
	LimitedByNoData    = "no-data"
	LimitedByStale     = "stale"
	LimitedByWarmingUp = "warming-up"
	// Scale to zero (ScalingPolicy.scale_to_zero_after): no request for
	// that long takes the pool to 0; a request waiting for a pool of 0
	// brings it back to 1 (or its min).
	LimitedByIdle       = "idle"
	LimitedByActivation = "activation"
)

// Input is everything one evaluation of a pool depends on.
type Input struct {
	// The evaluation's time; the windows and rate periods end here.
	Now  time.Time
	Pool string
	// The pool's policy, with Defaults applied (Decide applies them again,
	// so a nil or partial policy is safe). Must not be modified during the
	// call.
	Policy *pb.ScalingPolicy
	// The pool's bounds.
	Min, Max uint32
	// The pool's desired count now: the HPA's currentReplicas. It
	// includes instances still starting, so a raw count computed from the
	// ready ones alone does not add them a second time.
	Desired uint32
	// Instances that exist and are not being removed (recorded only).
	Current uint32
	// Instances healthy and past the initialization period.
	Ready uint32
	// The metric per ready instance (or host), averaged over the window.
	// NaN, infinite and negative values are dropped; none left is no data.
	// Not retained: the event gets a copy.
	Values map[string]float64
	// Some ready instance has no fresh data: a scale-down is held.
	Stale bool
	// The values of the policy's further metrics (Policy.metrics), in
	// their order, gathered as Values and Stale are.
	More []MetricValues
	// The leader has not had one whole window of its own samples yet:
	// nothing changes.
	WarmingUp bool
	// Scale to zero. Waiting is the requests the balancers hold for want
	// of an instance, or turned away lately; Idle is how long they have
	// routed the pool no request, known (IdleKnown) only when every
	// balancer that reports the pool does so afresh.
	Waiting   uint64
	Idle      time.Duration
	IdleKnown bool
	// This pool's recent scale events, from any leader and term (their
	// order does not matter). Their recommendations feed the windows,
	// their acted changes the rate limits. Not retained.
	Events []*pb.ScaleEvent
}

// MetricValues are one further metric's values per ready instance (or
// host) and whether some are missing or old.
type MetricValues struct {
	Values map[string]float64
	Stale  bool
}

// Decide evaluates a pool and returns the evaluation as a ScaleEvent with
// every field set except id and term (the FSM numbers events, the leader
// knows its term) and provider: time (= Now), pool, metric, observed,
// observed_value (their mean), target, current, ready, raw_desired,
// recommendation, desired, previous_desired (= Desired), limited_by,
// reason and acted (desired != Desired).
//
// With scale_to_zero_after set, two rules come first and decide alone:
// requests waiting (Waiting > 0) for a pool whose Desired is 0 bring it
// to max(Min, 1) at once ("activation"), or to HeldNeed if more: when a
// metric of the policy is requests in flight, the held requests size the
// pool, and more of them than the pool's Desired can serve at the target
// (a burst still arriving after the first woke it) raise it at once too;
// a pool of Min 0 and no waiting
// request that has been idle for scale_to_zero_after goes to 0 at once,
// from any count ("idle"). Neither is held by missing data or a new
// leader's first window: the idle time is this leader's own observation.
//
// Then the steps, in order (the HPA's):
//
//  1. No ready instance or no value, for every metric: hold at Desired
//     ("no-data"); raw and recommendation are Desired too, as no metric
//     has an opinion.
//  2. For each metric with data: raw = ceil(Ready × mean(values) /
//     target); |ratio − 1| ≤ tolerance: its recommendation = Desired,
//     otherwise raw. The largest recommendation is the pool's ("tolerance"
//     when it is the tolerance's), and the event shows that metric.
//  3. recommendation < Desired while some metric has no data ("no-data")
//     or stale data ("stale"): hold; WarmingUp: hold ("warming-up"). They
//     record raw and recommendation.
//  4. Stabilization: between the lowest recommendation of the scale-up
//     window and the highest of the scale-down window, as close to
//     Desired as they allow ("window").
//  5. Rate: at most the scale-up limit above Desired, at least the
//     scale-down limit below it ("rate").
//  6. Clamp into [Min, Max] ("min", "max"); Min wins if Min > Max. Never
//     below MinInstances ("min") unless Max is below it: only the idle
//     rule takes a pool to 0.
//
// A hold leaves desired at Desired even outside [Min, Max]: a hold never
// acts. Events stamped after Now (a new leader whose clock is behind the
// old one's) count in the windows and periods: they are recent. Decide is
// pure and deterministic, and safe for concurrent use.
func Decide(in Input) *pb.ScaleEvent {
	pol := Defaults(in.Policy)
	if pol == nil {
		pol = Defaults(&pb.ScalingPolicy{})
	}
	ev := &pb.ScaleEvent{
		Pool:            in.Pool,
		Time:            timestamppb.New(in.Now),
		Current:         in.Current,
		Ready:           in.Ready,
		PreviousDesired: in.Desired,
	}
	evals := []*evaluation{evaluate(in, pol.Metric, pol.Target, pol.GetTolerance(), in.Values, in.Stale)}
	for i, m := range pol.Metrics {
		var mv MetricValues
		if i < len(in.More) {
			mv = in.More[i]
		}
		evals = append(evals, evaluate(in, m.GetMetric(), m.GetTarget(), pol.GetTolerance(), mv.Values, mv.Stale))
	}
	// The metric that asks for the most decides (the first of equals);
	// with no metric's data, the policy's own is shown.
	win := evals[0]
	for _, e := range evals {
		if !e.noData && (win.noData || e.rec > win.rec) {
			win = e
		}
	}
	ev.Metric, ev.Target, ev.Observed, ev.ObservedValue = win.metric, win.target, win.observed, win.mean
	if len(evals) > 1 {
		for _, e := range evals {
			ev.Metrics = append(ev.Metrics, &pb.MetricEvaluation{
				Metric: e.metric, Target: e.target, ObservedValue: e.mean,
				RawDesired: e.raw, Recommendation: e.rec, NoData: e.noData, Stale: e.stale,
			})
		}
	}

	d := &decision{in: in, pol: pol, ev: ev}
	if ev, ok := d.zero(); ok {
		return ev
	}
	if win.noData {
		ev.RawDesired, ev.Recommendation = in.Desired, in.Desired
		return d.hold(LimitedByNoData, win.why)
	}
	for _, e := range evals {
		if e.noData {
			d.say("%s: %s", metricName(e.metric), e.why)
			continue
		}
		d.why = append(d.why, e.clauses...)
	}
	ev.RawDesired = win.raw
	d.v = win.raw
	if win.rec != win.raw {
		d.set(LimitedByTolerance, win.rec)
	}
	if len(evals) > 1 {
		d.say("the most any metric asks for is %d (%s)", win.rec, metricName(win.metric))
	}
	ev.Recommendation = d.v

	if d.v < in.Desired {
		for _, e := range evals {
			if e.noData {
				return d.hold(LimitedByNoData, fmt.Sprintf("%s has no data: no scale-down below %d", metricName(e.metric), in.Desired))
			}
		}
		for _, e := range evals {
			if e.stale {
				return d.hold(LimitedByStale, fmt.Sprintf("some ready instance has no fresh data: no scale-down below %d", in.Desired))
			}
		}
	}
	if in.WarmingUp {
		return d.hold(LimitedByWarmingUp, fmt.Sprintf("this leader has not had one window (%s) of data yet: hold at %d",
			duration(pol.Window.AsDuration()), in.Desired))
	}
	d.stabilize()
	d.rate()
	d.bounds()

	ev.Desired = d.v
	ev.Acted = ev.Desired != in.Desired
	ev.LimitedBy = d.by
	if ev.Acted {
		ev.Reason = strings.Join(d.why, "; ") + fmt.Sprintf(" → %d", ev.Desired)
	} else {
		ev.Reason = strings.Join(d.why, "; ") + fmt.Sprintf(" → stays at %d", ev.Desired)
	}
	return ev
}

// evaluation is one metric's view of the pool.
type evaluation struct {
	metric   pb.ScalingMetric
	target   float64
	observed map[string]float64
	mean     float64
	raw, rec uint32
	noData   bool
	stale    bool
	// why: the reason there is no data; clauses: the reason's clauses for
	// the count asked for.
	why     string
	clauses []string
}

// evaluate computes what one metric asks for: raw = ceil(Ready ×
// mean(values) / target), and its recommendation after the tolerance.
func evaluate(in Input, metric pb.ScalingMetric, target, tol float64, values map[string]float64, stale bool) *evaluation {
	e := &evaluation{metric: metric, target: target, observed: map[string]float64{}, stale: stale}
	// Summed in key order: a float sum depends on its order, and the same
	// input must give the same decision on every run.
	keys := make([]string, 0, len(values))
	for k, v := range values {
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
			continue
		}
		keys = append(keys, k)
		e.observed[k] = v
	}
	slices.Sort(keys)
	sum := 0.0
	for _, k := range keys {
		sum += values[k]
	}
	if len(keys) > 0 {
		e.mean = sum / float64(len(keys))
	}
	if len(keys) == 0 || in.Ready == 0 || !(target > 0) || math.IsInf(target, 0) {
		e.noData = true
		e.why = fmt.Sprintf("no data: %d ready of %d, %d with a value", in.Ready, in.Current, len(keys))
		if !(target > 0) || math.IsInf(target, 0) {
			e.why = fmt.Sprintf("no valid target (%v)", target)
		}
		return e
	}
	ratio := e.mean / target
	e.raw = ceilCount(float64(in.Ready) * ratio)
	e.rec = e.raw
	e.clauses = append(e.clauses, fmt.Sprintf("observed %s against a target of %s (ratio %.2f) over %d ready of %d: want %d",
		metricValue(metric, e.mean), number(target), ratio, in.Ready, in.Current, e.raw))
	// The epsilon keeps a ratio of exactly 1 ± tolerance, which float
	// division may put a hair outside, within the tolerance.
	if math.Abs(ratio-1) <= tol+1e-9 && e.raw != in.Desired {
		e.rec = in.Desired
		e.clauses = append(e.clauses, fmt.Sprintf("within the %s%% tolerance: keep %d", number(tol*100), in.Desired))
	}
	return e
}

// decision is one evaluation on its way from raw to desired.
type decision struct {
	in  Input
	pol *pb.ScalingPolicy
	ev  *pb.ScaleEvent
	v   uint32   // the count so far
	by  string   // the last rule that changed v
	why []string // the reason's clauses
}

// set moves the count to v, naming rule when it changes it.
func (d *decision) set(rule string, v uint32) {
	if v != d.v {
		d.v, d.by = v, rule
	}
}

func (d *decision) say(format string, args ...any) {
	d.why = append(d.why, fmt.Sprintf(format, args...))
}

// hold ends the decision at the pool's desired, naming rule.
func (d *decision) hold(rule, why string) *pb.ScaleEvent {
	d.why = append(d.why, why)
	d.ev.Desired, d.ev.Acted, d.ev.LimitedBy = d.in.Desired, false, rule
	d.ev.Reason = strings.Join(d.why, "; ")
	return d.ev
}

// feedsWindows reports whether an event's recommendation counts in the
// stabilization windows: not when it was held for lack of trustworthy
// data (the HPA records no recommendation when it cannot read the
// metric), as its recommendation says nothing about the load.
func feedsWindows(e *pb.ScaleEvent) bool {
	if e.GetTime() == nil {
		return false
	}
	switch e.LimitedBy {
	case LimitedByNoData, LimitedByStale, LimitedByWarmingUp:
		return false
	}
	return true
}

// stabilize is the HPA's stabilizeRecommendationWithBehaviors: the count
// moves from Desired towards the recommendation only as far as the lowest
// recommendation of the scale-up window (when rising) and the highest of
// the scale-down window (when falling) allow.
func (d *decision) stabilize() {
	rec := d.v
	up, down := rec, rec
	upW := d.pol.ScaleUpStabilization.AsDuration()
	downW := d.pol.ScaleDownStabilization.AsDuration()
	for _, e := range d.in.Events {
		if !feedsWindows(e) {
			continue
		}
		t := e.Time.AsTime()
		if upW > 0 && t.After(d.in.Now.Add(-upW)) {
			up = min(up, e.Recommendation)
		}
		if downW > 0 && t.After(d.in.Now.Add(-downW)) {
			down = max(down, e.Recommendation)
		}
	}
	r := d.in.Desired
	if r < up {
		r = up
	}
	if r > down {
		r = down
	}
	if r == rec {
		return
	}
	d.set(LimitedByWindow, r)
	if r < rec {
		d.say("the lowest recommendation of the last %s is %d", duration(upW), up)
	} else {
		d.say("the highest recommendation of the last %s is %d", duration(downW), down)
	}
}

// rate is the HPA's convertDesiredReplicasWithBehaviorRate without its
// min/max part (bounds does that after it).
func (d *decision) rate() {
	desired := int64(d.in.Desired)
	switch {
	case int64(d.v) > desired:
		lim, clause := d.limit(true)
		if int64(d.v) > lim {
			d.set(LimitedByRate, uint32(lim))
		}
		d.say("%s", clause)
	case int64(d.v) < desired:
		lim, clause := d.limit(false)
		if int64(d.v) < lim {
			d.set(LimitedByRate, uint32(lim))
		}
		d.say("%s", clause)
	}
}

// limit returns the highest (up) or lowest (down) count the rate limits
// allow now, never beyond Desired in the other direction, and a clause
// naming the limit that decided. Each limit measures from the count at
// the start of its period: Desired less the instances acting events added
// within the period (up), or plus those they removed (down).
func (d *decision) limit(up bool) (int64, string) {
	desired := int64(d.in.Desired)
	limits, sel, dir := d.pol.ScaleDownLimits, d.pol.ScaleDownSelect, "down"
	if up {
		limits, sel, dir = d.pol.ScaleUpLimits, d.pol.ScaleUpSelect, "up"
	}
	if sel == pb.SelectPolicy_SELECT_POLICY_DISABLED {
		return desired, fmt.Sprintf("scaling %s is disabled", dir)
	}
	// MAX picks the limit allowing the largest change: the highest count
	// up, the lowest down; MIN the other way round.
	higher := up == (sel != pb.SelectPolicy_SELECT_POLICY_MIN)
	var (
		best    int64
		chosen  *pb.RateLimit
		changed int64
	)
	for _, l := range limits {
		period := l.GetPeriod().AsDuration()
		moved := d.changedWithin(period, up)
		var p int64
		switch l.GetKind() {
		case pb.RateLimitKind_RATE_LIMIT_KIND_INSTANCES:
			if up {
				p = desired - moved + int64(l.Value)
			} else {
				p = desired + moved - int64(l.Value)
			}
		case pb.RateLimitKind_RATE_LIMIT_KIND_PERCENT:
			// Rounded towards more change, as the HPA does, so that a
			// small pool can always move by one.
			if up {
				p = ceilDiv((desired-moved)*(100+int64(l.Value)), 100)
			} else {
				p = floorDiv((desired+moved)*(100-int64(l.Value)), 100)
			}
		default:
			continue // unvalidated policy: ignore what cannot be read
		}
		if chosen == nil || (higher && p > best) || (!higher && p < best) {
			best, chosen, changed = p, l, moved
		}
	}
	if chosen == nil {
		return desired, fmt.Sprintf("no scale-%s limit", dir)
	}
	// Changes already made in the period can put the limit behind
	// Desired: no further change until they age out of it.
	if up {
		best = max(best, desired)
	} else {
		best = min(best, desired)
	}
	best = min(max(best, 0), math.MaxUint32)
	clause := fmt.Sprintf("rate limit %s allows %d", describeLimit(chosen, up), best)
	if changed > 0 {
		verb := "removed"
		if up {
			verb = "added"
		}
		clause += fmt.Sprintf(" (%d %s in the last %s)", changed, verb, duration(chosen.GetPeriod().AsDuration()))
	}
	return best, clause
}

// changedWithin sums the instances that acting events within the period
// before Now added (up) or removed (down).
func (d *decision) changedWithin(period time.Duration, up bool) int64 {
	cutoff := d.in.Now.Add(-period)
	var n int64
	for _, e := range d.in.Events {
		if !e.GetActed() || e.GetTime() == nil || !e.Time.AsTime().After(cutoff) {
			continue
		}
		change := int64(e.Desired) - int64(e.PreviousDesired)
		if !up {
			change = -change
		}
		n += max(change, 0)
	}
	return n
}

// bounds clamps the count into the pool's min and max.
func (d *decision) bounds() {
	if d.v > d.in.Max {
		d.set(LimitedByMax, d.in.Max)
		d.say("the pool's max is %d", d.in.Max)
	}
	if d.v < d.in.Min {
		d.set(LimitedByMin, d.in.Min)
		d.say("the pool's min is %d", d.in.Min)
	}
	if d.v < MinInstances && d.in.Max >= MinInstances {
		d.set(LimitedByMin, MinInstances)
		d.say("autoscaling keeps at least %d instance: without one no metric would show the load come back", MinInstances)
	}
}

// zero applies the scale-to-zero rules; ok reports whether one decided.
func (d *decision) zero() (*pb.ScaleEvent, bool) {
	in, ev := d.in, d.ev
	after := d.pol.GetScaleToZeroAfter()
	if after == nil {
		return nil, false
	}
	var v uint32
	need := HeldNeed(d.pol, in.Waiting, in.Max)
	switch {
	case in.Waiting > 0 && in.Max >= MinInstances && (in.Desired == 0 || need > in.Desired):
		v = max(in.Desired, in.Min, MinInstances, need)
		ev.LimitedBy = LimitedByActivation
		ev.Reason = fmt.Sprintf("%d %s for an instance at the balancers", in.Waiting, plural(in.Waiting, "request waits", "requests wait"))
		if need == v && need > max(in.Min, MinInstances) {
			target, _ := concurrencyTarget(d.pol)
			ev.Reason += fmt.Sprintf(", %d instances at %s in flight each", v, number(target))
			if v == in.Max {
				ev.Reason += fmt.Sprintf(" (max %d)", in.Max)
			}
		}
		ev.Reason += fmt.Sprintf(" → %d", v)
	case in.Desired > 0 && in.Min == 0 && in.Waiting == 0 && in.IdleKnown && in.Idle >= after.AsDuration():
		ev.LimitedBy = LimitedByIdle
		ev.Reason = fmt.Sprintf("no request for %s (scale_to_zero_after %s) → 0", duration(in.Idle.Truncate(time.Second)), duration(after.AsDuration()))
	default:
		return nil, false
	}
	ev.RawDesired, ev.Recommendation, ev.Desired = v, v, v
	ev.Acted = v != in.Desired
	return ev, true
}

// HeldNeed is how many instances the requests held for want of one need
// (waiting), when a metric of pol is requests in flight: they are all in
// flight at once, so ceil(waiting / its target), at most max (Knative's
// activator sizes a pool woken from zero the same way). 0 without such a
// metric.
func HeldNeed(pol *pb.ScalingPolicy, waiting uint64, max uint32) uint32 {
	target, ok := concurrencyTarget(pol)
	if !ok || waiting == 0 {
		return 0
	}
	return min(ceilCount(float64(waiting)/target), max)
}

// concurrencyTarget is a policy's target of requests in flight per
// instance, when one of its metrics is that.
func concurrencyTarget(pol *pb.ScalingPolicy) (float64, bool) {
	if pol.GetMetric() == pb.ScalingMetric_SCALING_METRIC_CONCURRENCY_PER_INSTANCE {
		return pol.GetTarget(), pol.GetTarget() > 0
	}
	for _, m := range pol.GetMetrics() {
		if m.GetMetric() == pb.ScalingMetric_SCALING_METRIC_CONCURRENCY_PER_INSTANCE {
			return m.GetTarget(), m.GetTarget() > 0
		}
	}
	return 0, false
}

// plural picks the singular or the plural form for n.
func plural(n uint64, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// MinInstances is the fewest instances autoscaling leaves a pool, whatever
// its min: a pool of none reports no metric, so nothing would ever scale
// it up again. (The HPA's minReplicas defaults to 1 for the same reason.)
// A pool that scales to zero is woken by the requests its balancers hold
// instead. An operator's ScalePool to 0 stands, unless the pool scales to
// zero: with no instance ready the autoscaler holds.
const MinInstances = 1

// ceilCount is ceil(x) as a count, saturating; the epsilon keeps float
// noise (2 × 1.1 / 1.1 = 2.0000000000000004) from adding an instance.
func ceilCount(x float64) uint32 {
	c := math.Ceil(x - 1e-9)
	switch {
	case !(c > 0):
		return 0
	case c >= math.MaxUint32:
		return math.MaxUint32
	}
	return uint32(c)
}

// ceilDiv and floorDiv divide by b > 0, rounding up or down (Go's /
// truncates towards zero).
func ceilDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a > 0 {
		q++
	}
	return q
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

// describeLimit writes a limit as "+100%/15s" or "-1/60s".
func describeLimit(l *pb.RateLimit, up bool) string {
	sign, unit := "-", ""
	if up {
		sign = "+"
	}
	if l.GetKind() == pb.RateLimitKind_RATE_LIMIT_KIND_PERCENT {
		unit = "%"
	}
	return fmt.Sprintf("%s%d%s/%s", sign, l.GetValue(), unit, duration(l.GetPeriod().AsDuration()))
}

// duration writes whole seconds as "300s", the unit the policy docs use.
func duration(d time.Duration) string {
	if d%time.Second == 0 {
		return fmt.Sprintf("%ds", int64(d/time.Second))
	}
	return d.String()
}

// number writes a value with one decimal, or three significant digits
// below 1 so that small targets stay readable.
func number(v float64) string {
	if math.Abs(v) < 1 && v != 0 {
		return fmt.Sprintf("%.3g", v)
	}
	return fmt.Sprintf("%.1f", v)
}

// metricValue writes an observed value with its unit.
// metricName names a metric in a reason.
func metricName(m pb.ScalingMetric) string {
	switch m {
	case pb.ScalingMetric_SCALING_METRIC_HOST_CPU:
		return "host CPU"
	case pb.ScalingMetric_SCALING_METRIC_INSTANCE_CPU:
		return "CPU per instance"
	case pb.ScalingMetric_SCALING_METRIC_REQUESTS_PER_INSTANCE:
		return "req/s per instance"
	case pb.ScalingMetric_SCALING_METRIC_P95_LATENCY_MS:
		return "p95 latency"
	case pb.ScalingMetric_SCALING_METRIC_CONCURRENCY_PER_INSTANCE:
		return "requests in flight per instance"
	}
	return m.String()
}

func metricValue(m pb.ScalingMetric, v float64) string {
	switch m {
	case pb.ScalingMetric_SCALING_METRIC_HOST_CPU:
		return number(v) + "% host CPU"
	case pb.ScalingMetric_SCALING_METRIC_INSTANCE_CPU:
		return number(v) + "% CPU per instance"
	case pb.ScalingMetric_SCALING_METRIC_REQUESTS_PER_INSTANCE:
		return number(v) + " req/s per instance"
	case pb.ScalingMetric_SCALING_METRIC_P95_LATENCY_MS:
		return number(v) + " ms p95 latency"
	case pb.ScalingMetric_SCALING_METRIC_CONCURRENCY_PER_INSTANCE:
		return number(v) + " requests in flight per instance"
	}
	return number(v)
}
