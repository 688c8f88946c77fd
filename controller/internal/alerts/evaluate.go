package alerts

import (
	"bytes"
	"cmp"
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"text/template"
	"time"

	"github.com/hostscale/hostscale/internal/labels"
)

// NodeStatus is a node's liveness as the liveness loop sees it.
type NodeStatus uint8

// The node statuses.
const (
	NodeUnknown NodeStatus = iota
	NodeUp
	NodeDown
)

// NodeInfo is a registered node.
type NodeInfo struct {
	Name   string
	Labels map[string]string
	Status NodeStatus
	// Conditions are those the node's agent reports (disk_pressure, ...).
	Conditions []string
}

// Inputs is what the evaluator reads: the registered nodes and the latest
// value of a node's metric. Implementations must return the same answers
// for the duration of one Evaluate call.
type Inputs interface {
	// Nodes returns the registered nodes; the caller does not modify the
	// slice.
	Nodes() []NodeInfo
	// Value returns the newest value of metric on node and its time; ok is
	// false when there is none.
	Value(node, metric string) (v float64, at time.Time, ok bool)
}

// PoolInfo is a pool, for pool rules.
type PoolInfo struct {
	Name string
	// Desired and Healthy count its instances.
	Desired, Healthy uint32
}

// PoolInputs is an optional extension of Inputs for pool rules; without
// it, pool rules raise nothing.
type PoolInputs interface {
	// Pools returns the pools; the caller does not modify the slice.
	Pools() []PoolInfo
	// PoolTraffic returns pool's metric, one of the traffic metrics of
	// PoolMetrics, over the window ending at now. ok is false when there is
	// no data: no balancer reports the pool afresh, or their reports do not
	// cover the window yet (a new leader). NaN is a window without
	// requests, for the metrics taken per request.
	PoolTraffic(pool, metric string, now time.Time, window time.Duration) (v float64, ok bool)
}

// Sample is one timestamped value.
type Sample struct {
	Time  time.Time
	Value float64
}

// WindowInputs is an optional extension of Inputs. When the inputs
// implement it, a pending alert is promoted to firing only if every sample
// since it became active satisfied the condition, so a dip between two
// evaluations also counts as a flap.
type WindowInputs interface {
	Inputs
	// Window returns node's samples of metric since from, oldest first.
	Window(node, metric string, from time.Time) []Sample
}

// Config configures an Evaluator.
type Config struct {
	// Staleness is how old a value may be and still count; older values
	// are missing data. Prometheus calls this the lookback delta.
	Staleness time.Duration
	// ResolvedRetention is how long a resolved alert is kept before it is
	// dropped (Prometheus keeps resolved alerts 15 minutes).
	ResolvedRetention time.Duration
}

// DefaultConfig returns a 30 s staleness (agents sample every second) and
// a 15 min resolved retention.
func DefaultConfig() Config {
	return Config{Staleness: 30 * time.Second, ResolvedRetention: 15 * time.Minute}
}

// Validate checks the durations.
func (c Config) Validate() error {
	if c.Staleness <= 0 {
		return fieldErr("config.staleness", "must be positive, got %s", c.Staleness)
	}
	if c.ResolvedRetention < 0 {
		return fieldErr("config.resolved_retention", "must not be negative, got %s", c.ResolvedRetention)
	}
	return nil
}

// Evaluator computes alert transitions. It holds only its configuration:
// it is safe for concurrent use and Evaluate is a pure function of its
// arguments.
type Evaluator struct {
	cfg Config
}

// NewEvaluator validates cfg and returns an evaluator.
func NewEvaluator(cfg Config) (*Evaluator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Evaluator{cfg: cfg}, nil
}

// Evaluate runs one evaluation round at now and returns the transitions,
// in rule order then node (or pool) order, then transitions of alerts
// whose rule, node or pool is gone in fingerprint order. It does not modify current: the
// caller persists the transitions and applies them with Apply.
//
// Per (rule, node) the state machine is Prometheus':
//   - inactive (or resolved) → pending when the condition holds; straight
//     to firing when For is 0;
//   - pending → firing once the condition has held for For, checked at each
//     evaluation (and, with WindowInputs, at every sample in between);
//   - pending → inactive as soon as an evaluation sees the condition not
//     hold: a value flapping inside For never fires;
//   - firing → resolved when the condition does not hold;
//   - resolved → inactive (dropped) after ResolvedRetention.
//
// Missing data (no value, a NaN, or a value older than Staleness) differs
// from Prometheus on purpose: Prometheus resolves an alert whose series
// vanished, but a new leader starts with empty metric windows, so doing
// that would resolve and later re-fire every alert at each failover.
// Here missing data changes nothing: a pending alert is not promoted, a
// firing alert stays firing (as with Prometheus' restored for-state after
// a restart). An alert ends on missing data only when its node leaves the
// inputs or the rule's selector, or its rule is removed: firing → resolved,
// pending → inactive. The same holds for a pool rule's pools, with one
// more case: a window without requests is data, in which nothing fails
// and nothing is slow (Prometheus' rate ratio is then NaN, which compares
// false), so an error or latency alert resolves when its traffic stops.
//
// Rules must have passed Validate; a rule that does not compile is skipped
// and its alerts are treated as removed.
func (e *Evaluator) Evaluate(now time.Time, rules []Rule, in Inputs, current map[Fingerprint]Alert) []Transition {
	nodes := in.Nodes()
	win, _ := in.(WindowInputs)
	pin, _ := in.(PoolInputs)
	var pools []PoolInfo
	var poolLabels []map[string]string
	if pin != nil {
		pools = pin.Pools()
		poolLabels = make([]map[string]string, len(pools))
		for i, p := range pools {
			poolLabels[i] = map[string]string{LabelPool: p.Name}
		}
	}
	var out []ordered
	var seen map[Fingerprint]struct{}
	if len(current) > 0 {
		seen = make(map[Fingerprint]struct{}, len(current))
	}
	byName := make(map[string]*compiled, len(rules))
	for ri := range rules {
		c, err := compile(rules[ri])
		if err != nil {
			continue
		}
		byName[c.rule.Name] = c
		// visit moves the rule's alert on subject (a node, or a pool) by o.
		visit := func(subject string, o observation) {
			fp := c.fingerprint(subject)
			cur, has := current[fp]
			if has {
				seen[fp] = struct{}{}
			}
			if t, ok := e.step(now, c, subject, fp, cur, has, o, win); ok {
				out = append(out, ordered{ri, subject, t})
			}
		}
		if c.pool {
			for i, p := range pools {
				if c.sel.Matches(poolLabels[i]) {
					visit(p.Name, e.observePool(now, c, p, pin))
				}
			}
			continue
		}
		for _, n := range nodes {
			if c.sel.Matches(n.Labels) {
				visit(n.Name, e.observe(now, c, n, in))
			}
		}
	}
	slices.SortStableFunc(out, func(a, b ordered) int {
		return cmp.Or(cmp.Compare(a.rule, b.rule), cmp.Compare(a.subject, b.subject))
	})
	ts := make([]Transition, 0, len(out))
	for _, o := range out {
		ts = append(ts, o.t)
	}
	if len(seen) == len(current) {
		return ts
	}
	for _, fp := range sortedFingerprints(current) {
		if _, ok := seen[fp]; ok {
			continue
		}
		cur := current[fp]
		reason, subject := ReasonNodeGone, cur.Node
		if cur.Pool != "" {
			reason, subject = ReasonPoolGone, cur.Pool
		}
		if c := byName[cur.Rule]; c == nil || c.pool != (cur.Pool != "") || c.fingerprint(subject) != fp {
			reason = ReasonRuleRemoved
		}
		if t, ok := e.gone(now, cur, reason); ok {
			ts = append(ts, t)
		}
	}
	return ts
}

type ordered struct {
	rule    int
	subject string // node or pool
	t       Transition
}

type observation struct {
	value float64
	have  bool // fresh data
	holds bool // the condition holds on fresh data
}

func (e *Evaluator) observe(now time.Time, c *compiled, n NodeInfo, in Inputs) observation {
	switch c.rule.Kind {
	case KindNodeDown:
		switch n.Status {
		case NodeDown:
			return observation{value: 1, have: true, holds: true}
		case NodeUp:
			return observation{value: 0, have: true}
		}
		return observation{}
	case KindNodeCondition:
		// A down node's conditions are its last word: they change nothing.
		if n.Status != NodeUp {
			return observation{}
		}
		under := 0
		for _, name := range n.Conditions {
			if c.rule.Metric == "" || name == c.rule.Metric {
				under++
			}
		}
		return observation{value: float64(under), have: true, holds: under > 0}
	}
	v, at, ok := in.Value(n.Name, c.rule.Metric)
	if !ok || math.IsNaN(v) || now.Sub(at) > e.cfg.Staleness {
		return observation{}
	}
	return observation{value: v, have: true, holds: c.rule.Op.Holds(v, c.rule.Threshold)}
}

// observePool observes a pool rule's metric on pool p.
func (e *Evaluator) observePool(now time.Time, c *compiled, p PoolInfo, in PoolInputs) observation {
	var v float64
	switch c.rule.Metric {
	case "healthy_instances":
		v = float64(p.Healthy)
	case "missing_instances":
		v = float64(p.Desired - min(p.Healthy, p.Desired))
	default:
		var ok bool
		v, ok = in.PoolTraffic(p.Name, c.rule.Metric, now, cmp.Or(c.rule.Window, DefaultPoolWindow))
		if !ok {
			return observation{}
		}
		if math.IsNaN(v) {
			// No request in the window: none failed, none was slow.
			return observation{value: 0, have: true}
		}
	}
	return observation{value: v, have: true, holds: c.rule.Op.Holds(v, c.rule.Threshold)}
}

// step moves the alert of rule c on subject (a node, or a pool for a pool
// rule) by observation o.
func (e *Evaluator) step(now time.Time, c *compiled, subject string, fp Fingerprint, cur Alert, has bool, o observation, win WindowInputs) (Transition, bool) {
	state := StateInactive
	if has {
		state = cur.State
	}
	switch state {
	case StateInactive, StateResolved:
		if o.holds {
			a := Alert{Fingerprint: fp, Rule: c.rule.Name, State: StatePending,
				ActiveSince: now, Value: o.value, UpdatedAt: now}
			if c.pool {
				a.Pool = subject
			} else {
				a.Node = subject
			}
			if has {
				a.Labels = cur.Labels
			} else {
				a.Labels = c.labelsFor(subject)
			}
			if c.rule.For == 0 {
				a.State, a.FiredAt = StateFiring, now
			}
			a.Annotations = c.render(a)
			return transition(state, a, o.value, ReasonConditionMet), true
		}
		if state == StateResolved && !now.Before(cur.ResolvedAt.Add(e.cfg.ResolvedRetention)) {
			return drop(cur, now, 0, ReasonRetentionExpired), true
		}
	case StatePending:
		switch {
		case !o.have:
		case !o.holds:
			return drop(cur, now, o.value, ReasonConditionCleared), true
		case now.Sub(cur.ActiveSince) >= c.rule.For:
			if win != nil && (c.rule.Kind == KindThreshold || c.rule.Kind == "") {
				for _, s := range win.Window(subject, c.rule.Metric, cur.ActiveSince) {
					if !s.Time.After(now) && !math.IsNaN(s.Value) && !c.rule.Op.Holds(s.Value, c.rule.Threshold) {
						return drop(cur, now, s.Value, ReasonFlapped), true
					}
				}
			}
			a := cur
			a.State, a.FiredAt, a.Value, a.UpdatedAt = StateFiring, now, o.value, now
			a.Annotations = c.render(a)
			return transition(StatePending, a, o.value, ReasonForElapsed), true
		}
	case StateFiring:
		if o.have && !o.holds {
			a := cur
			a.State, a.ResolvedAt, a.Value, a.UpdatedAt = StateResolved, now, o.value, now
			return transition(StateFiring, a, o.value, ReasonConditionCleared), true
		}
	}
	return Transition{}, false
}

// gone ends an alert whose node, pool or rule is no longer evaluated.
func (e *Evaluator) gone(now time.Time, cur Alert, reason Reason) (Transition, bool) {
	switch cur.State {
	case StateFiring:
		a := cur
		a.State, a.ResolvedAt, a.UpdatedAt = StateResolved, now, now
		return transition(StateFiring, a, 0, reason), true
	case StateResolved:
		if now.Before(cur.ResolvedAt.Add(e.cfg.ResolvedRetention)) {
			return Transition{}, false
		}
		reason = ReasonRetentionExpired
	}
	return drop(cur, now, 0, reason), true
}

func transition(from State, a Alert, v float64, r Reason) Transition {
	return Transition{Fingerprint: a.Fingerprint, From: from, To: a.State, At: a.UpdatedAt, Value: v, Reason: r, Alert: a}
}

func drop(cur Alert, now time.Time, v float64, r Reason) Transition {
	return Transition{Fingerprint: cur.Fingerprint, From: cur.State, To: StateInactive, At: now, Value: v, Reason: r}
}

// compiled is a rule prepared for one evaluation round.
type compiled struct {
	rule Rule
	sel  labels.Selector
	// pool: a pool rule, whose alerts are per pool; subject is the label
	// naming the node or the pool.
	pool    bool
	subject string
	// base are the alert labels without the subject, sorted by key; prefix
	// is the FNV state after the pairs that sort before the subject.
	keys, vals []string
	split      int
	prefix     uint64
	tmpls      map[string]*template.Template
}

func compile(r Rule) (*compiled, error) {
	if r.Kind == "" {
		r.Kind = KindThreshold
	}
	sel, err := labels.Parse(r.Selector)
	if err != nil {
		return nil, err
	}
	base := maps.Clone(r.Labels)
	if base == nil {
		base = map[string]string{}
	}
	base[LabelAlertName], base[LabelSeverity] = r.Name, string(r.Severity)
	delete(base, LabelNode)
	delete(base, LabelPool)
	c := &compiled{rule: r, sel: sel, keys: sortedKeys(base), subject: LabelNode}
	if r.Kind == KindPoolThreshold {
		c.pool, c.subject = true, LabelPool
	}
	c.split = sort.SearchStrings(c.keys, c.subject)
	h := uint64(fnvOffset)
	for i, k := range c.keys {
		c.vals = append(c.vals, base[k])
		if i < c.split {
			h = fnvString(fnvString(h, k), base[k])
		}
	}
	c.prefix = h
	return c, nil
}

// fingerprint equals FingerprintOf(c.labelsFor(subject)) without building
// the map.
func (c *compiled) fingerprint(subject string) Fingerprint {
	h := fnvString(fnvString(c.prefix, c.subject), subject)
	for i := c.split; i < len(c.keys); i++ {
		h = fnvString(fnvString(h, c.keys[i]), c.vals[i])
	}
	return Fingerprint(h)
}

func (c *compiled) labelsFor(subject string) map[string]string {
	m := make(map[string]string, len(c.keys)+1)
	for i, k := range c.keys {
		m[k] = c.vals[i]
	}
	m[c.subject] = subject
	return m
}

// render expands the annotations; a template that fails leaves its error
// in the annotation, as Prometheus does.
func (c *compiled) render(a Alert) map[string]string {
	if len(c.rule.Annotations) == 0 {
		return nil
	}
	data := AnnotationData{Labels: a.Labels, Value: a.Value, Node: a.Node, Pool: a.Pool, Rule: a.Rule}
	out := make(map[string]string, len(c.rule.Annotations))
	var buf bytes.Buffer
	for k, text := range c.rule.Annotations {
		t := c.tmpls[k]
		if t == nil {
			var err error
			if t, err = parseTemplate(k, text); err != nil {
				out[k] = fmt.Sprintf("<error expanding template: %v>", err)
				continue
			}
			if c.tmpls == nil {
				c.tmpls = map[string]*template.Template{}
			}
			c.tmpls[k] = t
		}
		buf.Reset()
		if err := t.Execute(&buf, data); err != nil {
			out[k] = fmt.Sprintf("<error expanding template: %v>", err)
			continue
		}
		out[k] = buf.String()
	}
	return out
}
