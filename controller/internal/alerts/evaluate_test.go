package alerts

import (
	"encoding/json"
	"hash/fnv"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

type harness struct {
	t     *testing.T
	ev    *Evaluator
	rules []Rule
	in    Inputs
	fake  *fakeInputs
	cur   map[Fingerprint]Alert
}

func newHarness(t *testing.T, rules ...Rule) *harness {
	t.Helper()
	ev, err := NewEvaluator(DefaultConfig())
	require.NoError(t, err)
	f := newFake("n1")
	return &harness{t: t, ev: ev, rules: rules, in: f, fake: f, cur: map[Fingerprint]Alert{}}
}

// eval sets cpu of n1 to v (NaN: leaves it) at t0+d, evaluates and applies.
func (h *harness) eval(d time.Duration, v float64) []Transition {
	now := t0.Add(d)
	if !math.IsNaN(v) {
		h.fake.set("n1", "cpu_percent", v, now)
	}
	ts := h.ev.Evaluate(now, h.rules, h.in, h.cur)
	Apply(h.cur, ts...)
	return ts
}

func (h *harness) only() Alert {
	h.t.Helper()
	require.Len(h.t, h.cur, 1)
	for _, a := range h.cur {
		return a
	}
	return Alert{}
}

func kinds(ts []Transition) []string {
	var out []string
	for _, t := range ts {
		out = append(out, t.From.String()+"->"+t.To.String()+"/"+string(t.Reason))
	}
	return out
}

func TestEvaluate_stateMachine(t *testing.T) {
	type step struct {
		at   time.Duration
		v    float64 // NaN: no new sample
		want []string
	}
	nan := math.NaN()
	tests := []struct {
		name  string
		steps []step
		final State
	}{
		{"pending then firing after for", []step{
			{0, 95, []string{"inactive->pending/condition_met"}},
			{30 * time.Second, 96, nil},
			{59 * time.Second, 97, nil},
			{60 * time.Second, 98, []string{"pending->firing/for_elapsed"}},
			{70 * time.Second, 99, nil},
		}, StateFiring},
		{"flapping inside for never fires", []step{
			{0, 95, []string{"inactive->pending/condition_met"}},
			{20 * time.Second, 50, []string{"pending->inactive/condition_cleared"}},
			{40 * time.Second, 95, []string{"inactive->pending/condition_met"}},
			{60 * time.Second, 40, []string{"pending->inactive/condition_cleared"}},
			{80 * time.Second, 95, []string{"inactive->pending/condition_met"}},
			{100 * time.Second, 10, []string{"pending->inactive/condition_cleared"}},
			{120 * time.Second, 95, []string{"inactive->pending/condition_met"}},
		}, StatePending},
		{"firing then resolved then dropped after retention", []step{
			{0, 95, []string{"inactive->pending/condition_met"}},
			{time.Minute, 95, []string{"pending->firing/for_elapsed"}},
			{2 * time.Minute, 20, []string{"firing->resolved/condition_cleared"}},
			{10 * time.Minute, 20, nil},
			{17 * time.Minute, 20, []string{"resolved->inactive/retention_expired"}},
		}, StateInactive},
		{"resolved alert becomes pending again", []step{
			{0, 95, []string{"inactive->pending/condition_met"}},
			{time.Minute, 95, []string{"pending->firing/for_elapsed"}},
			{2 * time.Minute, 20, []string{"firing->resolved/condition_cleared"}},
			{3 * time.Minute, 95, []string{"resolved->pending/condition_met"}},
		}, StatePending},
		{"missing data: pending is not promoted", []step{
			{0, 95, []string{"inactive->pending/condition_met"}},
			{10 * time.Second, nan, nil},
			{2 * time.Minute, nan, nil}, // the last sample is stale
		}, StatePending},
		{"missing data: pending fires when data returns and still holds", []step{
			{0, 95, []string{"inactive->pending/condition_met"}},
			{2 * time.Minute, nan, nil},
			{3 * time.Minute, 95, []string{"pending->firing/for_elapsed"}},
		}, StateFiring},
		{"missing data: firing stays firing until data clears it", []step{
			{0, 95, []string{"inactive->pending/condition_met"}},
			{time.Minute, 95, []string{"pending->firing/for_elapsed"}},
			{5 * time.Minute, nan, nil},
			{30 * time.Minute, nan, nil},
			{31 * time.Minute, 5, []string{"firing->resolved/condition_cleared"}},
		}, StateResolved},
		{"stale data never starts an alert", []step{
			{0, 95, []string{"inactive->pending/condition_met"}},
			{5 * time.Second, 10, []string{"pending->inactive/condition_cleared"}},
			{2 * time.Minute, nan, nil},
		}, StateInactive},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, cpuRule())
			for _, s := range tt.steps {
				require.Equal(t, s.want, kinds(h.eval(s.at, s.v)), "at %s", s.at)
			}
			if tt.final == StateInactive {
				require.Empty(t, h.cur)
				return
			}
			require.Equal(t, tt.final, h.only().State)
		})
	}
}

func TestEvaluate_forZeroFiresOnFirstEvaluation(t *testing.T) {
	r := cpuRule()
	r.For = 0
	h := newHarness(t, r)
	ts := h.eval(0, 95)
	require.Equal(t, []string{"inactive->firing/condition_met"}, kinds(ts))
	a := h.only()
	require.Equal(t, t0, a.ActiveSince)
	require.Equal(t, t0, a.FiredAt)
}

func TestEvaluate_transitionCarriesValueAndAnnotations(t *testing.T) {
	h := newHarness(t, cpuRule())
	h.eval(0, 91.2)
	ts := h.eval(time.Minute, 97.6)
	require.Len(t, ts, 1)
	tr := ts[0]
	require.Equal(t, 97.6, tr.Value)
	require.Equal(t, t0.Add(time.Minute), tr.At)
	require.Equal(t, t0, tr.Alert.ActiveSince)
	require.Equal(t, t0.Add(time.Minute), tr.Alert.FiredAt)
	require.Equal(t, "n1 cpu 98", tr.Alert.Annotations["summary"])
	require.Equal(t, map[string]string{"alertname": "cpu-high", "node": "n1", "severity": "warning", "team": "infra"}, tr.Alert.Labels)
	require.Equal(t, FingerprintOf(tr.Alert.Labels), tr.Fingerprint)
	require.Equal(t, AlertKey(tr.Alert), tr.Key())

	res := h.eval(2*time.Minute, 12)
	require.Equal(t, 12.0, res[0].Value)
	require.Equal(t, "n1 cpu 98", res[0].Alert.Annotations["summary"], "a resolved alert keeps its firing annotations")
}

func TestEvaluate_windowFlapBetweenEvaluationsResets(t *testing.T) {
	h := newHarness(t, cpuRule())
	h.fake.window = map[string]map[string][]Sample{}
	h.in = windowInputs{h.fake}
	h.eval(0, 95)
	h.fake.set("n1", "cpu_percent", 30, t0.Add(31*time.Second)) // a dip no evaluation saw
	h.eval(45*time.Second, 95)
	ts := h.eval(time.Minute, 95)
	require.Equal(t, []string{"pending->inactive/flapped"}, kinds(ts))
	require.Equal(t, 30.0, ts[0].Value)
	require.Empty(t, h.cur)
	require.Equal(t, []string{"inactive->pending/condition_met"}, kinds(h.eval(65*time.Second, 95)))
}

func TestEvaluate_nodeGoneAndSelector(t *testing.T) {
	r := cpuRule()
	r.For = 0
	r.Selector = "zone=a"
	h := newHarness(t, r)
	h.fake.nodes = []NodeInfo{
		{Name: "n1", Labels: map[string]string{"zone": "a"}, Status: NodeUp},
		{Name: "n2", Labels: map[string]string{"zone": "b"}, Status: NodeUp},
	}
	h.fake.set("n2", "cpu_percent", 99, t0)
	require.Equal(t, []string{"inactive->firing/condition_met"}, kinds(h.eval(0, 95)))
	require.Equal(t, "n1", h.only().Node, "n2 is not selected")

	h.fake.nodes[0].Labels = map[string]string{"zone": "b"}
	ts := h.eval(10*time.Second, 95)
	require.Equal(t, []string{"firing->resolved/node_gone"}, kinds(ts))
	require.Equal(t, t0.Add(10*time.Second), h.only().ResolvedAt)

	h.fake.nodes[0].Labels = map[string]string{"zone": "a"}
	h.eval(20*time.Second, 95)
	h.fake.remove("n1")
	require.Equal(t, []string{"firing->resolved/node_gone"}, kinds(h.eval(30*time.Second, math.NaN())))
	require.Empty(t, h.eval(time.Minute, math.NaN()))
	require.Equal(t, []string{"resolved->inactive/retention_expired"}, kinds(h.eval(16*time.Minute, math.NaN())))
}

func TestEvaluate_ruleRemovedOrRelabelled(t *testing.T) {
	h := newHarness(t, cpuRule())
	h.eval(0, 95)
	h.rules = nil
	require.Equal(t, []string{"pending->inactive/rule_removed"}, kinds(h.eval(10*time.Second, 95)))

	h.rules = []Rule{cpuRule()}
	h.eval(20*time.Second, 95)
	h.eval(80*time.Second, 95)
	old := h.only()
	require.Equal(t, StateFiring, old.State)

	relabelled := cpuRule()
	relabelled.Labels = map[string]string{"team": "db"}
	h.rules = []Rule{relabelled}
	ts := h.eval(90*time.Second, 95)
	require.Equal(t, []string{"inactive->pending/condition_met", "firing->resolved/rule_removed"}, kinds(ts))
	require.Equal(t, old.Fingerprint, ts[1].Fingerprint)
}

func TestEvaluate_nodeDownRule(t *testing.T) {
	nd := DefaultRules()[3]
	require.Equal(t, KindNodeDown, nd.Kind)
	h := newHarness(t, nd)
	require.Empty(t, h.eval(0, math.NaN()))
	h.fake.status("n1", NodeDown)
	ts := h.eval(5*time.Second, math.NaN())
	require.Equal(t, []string{"inactive->firing/condition_met"}, kinds(ts))
	require.Equal(t, 1.0, ts[0].Value)
	require.Equal(t, "Node n1 is down", ts[0].Alert.Annotations["summary"])
	h.fake.status("n1", NodeUnknown)
	require.Empty(t, h.eval(10*time.Second, math.NaN()), "unknown status is missing data")
	h.fake.status("n1", NodeUp)
	require.Equal(t, []string{"firing->resolved/condition_cleared"}, kinds(h.eval(15*time.Second, math.NaN())))

	withFor := nd
	withFor.For = 30 * time.Second
	h = newHarness(t, withFor)
	h.fake.status("n1", NodeDown)
	require.Equal(t, []string{"inactive->pending/condition_met"}, kinds(h.eval(0, math.NaN())))
	require.Equal(t, []string{"pending->firing/for_elapsed"}, kinds(h.eval(30*time.Second, math.NaN())))
}

func TestEvaluate_nodeConditionRule(t *testing.T) {
	stalled := DefaultRules()[4]
	require.Equal(t, KindNodeCondition, stalled.Kind)
	require.Equal(t, "disk_stalled", stalled.Metric)
	any := Rule{Name: "node-condition", Kind: KindNodeCondition, Severity: SeverityWarning}
	h := newHarness(t, stalled, any)
	require.Empty(t, h.eval(0, math.NaN()))

	h.fake.conditions("n1", "disk_pressure")
	ts := h.eval(time.Second, math.NaN())
	require.Equal(t, []string{"inactive->firing/condition_met"}, kinds(ts), "only the rule for any condition, whose for is 0")
	require.Equal(t, "node-condition", ts[0].Alert.Rule)

	h.fake.conditions("n1", "disk_pressure", "disk_stalled")
	ts = h.eval(2*time.Second, math.NaN())
	require.Equal(t, []string{"inactive->pending/condition_met"}, kinds(ts))
	require.Equal(t, "node-disk-stalled", ts[0].Alert.Rule)
	require.Empty(t, h.eval(61*time.Second, math.NaN()))
	ts = h.eval(62*time.Second, math.NaN())
	require.Equal(t, []string{"pending->firing/for_elapsed"}, kinds(ts))
	require.Equal(t, 1.0, ts[0].Value)
	require.Equal(t, "The disk of n1 is stalled", ts[0].Alert.Annotations["summary"])

	h.fake.status("n1", NodeDown)
	h.fake.conditions("n1")
	require.Empty(t, h.eval(70*time.Second, math.NaN()), "a down node's conditions change nothing")
	h.fake.status("n1", NodeUp)
	require.ElementsMatch(t, []string{"firing->resolved/condition_cleared", "firing->resolved/condition_cleared"},
		kinds(h.eval(75*time.Second, math.NaN())))
}

func TestEvaluate_poolRule(t *testing.T) {
	errorsRule := Rule{Name: "pool-errors", Kind: KindPoolThreshold, Metric: "error_ratio", Op: OpGT, Threshold: 0.05,
		For: 30 * time.Second, Selector: "pool in (web,api)", Severity: SeverityCritical, Labels: map[string]string{"team": "web"},
		Annotations: map[string]string{"summary": `{{ .Pool }} fails {{ printf "%.2f" .Value }}`}}
	missing := Rule{Name: "pool-missing", Kind: KindPoolThreshold, Metric: "missing_instances", Op: OpGT, Threshold: 0,
		Window: 20 * time.Second, Severity: SeverityWarning}
	h := newHarness(t, errorsRule, missing)
	in := &poolInputs{fakeInputs: h.fake, traffic: map[string]map[string]float64{},
		pools: []PoolInfo{{Name: "web", Desired: 3, Healthy: 3}, {Name: "api", Desired: 2, Healthy: 2}, {Name: "batch", Desired: 1, Healthy: 1}}}
	h.in = in
	require.Empty(t, h.eval(0, math.NaN()), "no traffic data, every instance healthy")

	// web fails 10 % of its requests, batch 50 % (not selected).
	in.traffic["web"] = map[string]float64{"error_ratio": 0.1}
	in.traffic["batch"] = map[string]float64{"error_ratio": 0.5}
	ts := h.eval(time.Second, math.NaN())
	require.Equal(t, []string{"inactive->pending/condition_met"}, kinds(ts))
	a := ts[0].Alert
	require.Equal(t, "web", a.Pool)
	require.Empty(t, a.Node)
	require.Equal(t, map[string]string{"alertname": "pool-errors", "pool": "web", "severity": "critical", "team": "web"}, a.Labels)
	require.Equal(t, FingerprintOf(a.Labels), a.Fingerprint)
	require.Equal(t, []time.Duration{DefaultPoolWindow, DefaultPoolWindow}, in.windows[:2], "window unset: 1m")

	// No data for a while (a new leader): nothing changes, nothing fires.
	delete(in.traffic, "web")
	require.Empty(t, h.eval(40*time.Second, math.NaN()))
	in.traffic["web"] = map[string]float64{"error_ratio": 0.1}
	ts = h.eval(41*time.Second, math.NaN())
	require.Equal(t, []string{"pending->firing/for_elapsed"}, kinds(ts))
	require.Equal(t, "web fails 0.10", ts[0].Alert.Annotations["summary"])

	// The traffic stops: a window without requests resolves it.
	in.traffic["web"] = map[string]float64{"error_ratio": math.NaN()}
	ts = h.eval(50*time.Second, math.NaN())
	require.Equal(t, []string{"firing->resolved/condition_cleared"}, kinds(ts))
	require.Zero(t, ts[0].Value)

	// api loses an instance: missing_instances fires at once (for 0).
	in.windows = nil
	in.pools[1].Healthy = 1
	ts = h.eval(60*time.Second, math.NaN())
	require.Equal(t, []string{"inactive->firing/condition_met"}, kinds(ts))
	require.Equal(t, "api", ts[0].Alert.Pool)
	require.Equal(t, 1.0, ts[0].Value)
	require.NotContains(t, in.windows, 20*time.Second, "instance counts read no traffic")

	// api is deleted: its alert ends as the pool's is gone.
	in.pools = in.pools[:1]
	ts = h.eval(70*time.Second, math.NaN())
	require.Equal(t, []string{"firing->resolved/pool_gone"}, kinds(ts))

	// Without pool inputs, pool rules raise nothing.
	h2 := newHarness(t, missing)
	require.Empty(t, h2.eval(0, 95))
}

func TestEvaluate_poolAndNodeAlertsOfOneNameDiffer(t *testing.T) {
	node := Rule{Name: "same", Metric: "cpu_percent", Op: OpGT, Threshold: 90, Severity: SeverityWarning}
	pool := Rule{Name: "same", Kind: KindPoolThreshold, Metric: "request_rate", Op: OpGT, Threshold: 1, Severity: SeverityWarning}
	h := newHarness(t, node)
	in := &poolInputs{fakeInputs: h.fake, pools: []PoolInfo{{Name: "n1"}},
		traffic: map[string]map[string]float64{"n1": {"request_rate": 5}}}
	h.in = in
	ts := h.eval(0, 95)
	require.Equal(t, []string{"inactive->firing/condition_met"}, kinds(ts))
	require.Equal(t, "n1", ts[0].Alert.Node)
	// The rule becomes a pool rule of the same name: the node's alert is
	// the removed rule's, and the pool's is a new one.
	h.rules = []Rule{pool}
	ts = h.eval(time.Second, 95)
	require.ElementsMatch(t, []string{"inactive->firing/condition_met", "firing->resolved/rule_removed"}, kinds(ts))
	require.Len(t, h.cur, 2)
}

// A new leader rebuilds current from the replicated transitions: it must
// keep active_since and neither re-fire nor re-pend.
func TestEvaluate_restartFromPersistedStateKeepsActiveSinceAndDoesNotRefire(t *testing.T) {
	h := newHarness(t, cpuRule(), DefaultRules()[1])
	var log []Transition // what went through Raft
	log = append(log, h.eval(0, 95)...)
	log = append(log, h.eval(time.Minute, 95)...)
	h.fake.set("n1", "memory_used_percent", 85, t0.Add(90*time.Second))
	log = append(log, h.eval(90*time.Second, 95)...)
	require.Len(t, log, 3)

	// Replay the log through JSON, as another replica would after decoding.
	raw, err := json.Marshal(log)
	require.NoError(t, err)
	var replayed []Transition
	require.NoError(t, json.Unmarshal(raw, &replayed))
	restored := map[Fingerprint]Alert{}
	Apply(restored, replayed...)
	require.Equal(t, h.cur, restored)

	// The new leader starts with empty metric windows.
	ev, err := NewEvaluator(DefaultConfig())
	require.NoError(t, err)
	empty := newFake("n1")
	require.Empty(t, ev.Evaluate(t0.Add(2*time.Minute), h.rules, empty, restored), "missing data changes nothing")

	// Data comes back, still above the thresholds.
	empty.set("n1", "cpu_percent", 97, t0.Add(3*time.Minute))
	empty.set("n1", "memory_used_percent", 86, t0.Add(3*time.Minute))
	ts := ev.Evaluate(t0.Add(3*time.Minute), h.rules, empty, restored)
	require.Equal(t, []string{"pending->firing/for_elapsed"}, kinds(ts), "only the memory alert, pending since 90s, fires")
	require.Equal(t, t0.Add(90*time.Second), ts[0].Alert.ActiveSince)
	for _, a := range restored {
		if a.Rule == "cpu-high" {
			require.Equal(t, t0, a.ActiveSince)
			require.Equal(t, t0.Add(time.Minute), a.FiredAt)
		}
	}
}

func TestEvaluate_isDeterministicAndOrdered(t *testing.T) {
	rules := []Rule{cpuRule(), DefaultRules()[1]}
	rules[0].For = 0
	rules[1].For = 0
	f := newFake("c", "a", "b")
	for _, n := range []string{"a", "b", "c"} {
		f.set(n, "cpu_percent", 99, t0)
		f.set(n, "memory_used_percent", 99, t0)
	}
	ev, err := NewEvaluator(DefaultConfig())
	require.NoError(t, err)
	first := ev.Evaluate(t0, rules, f, nil)
	for range 5 {
		require.Equal(t, first, ev.Evaluate(t0, rules, f, nil))
	}
	var order []string
	for _, tr := range first {
		order = append(order, tr.Alert.Rule+"/"+tr.Alert.Node)
	}
	require.Equal(t, []string{"cpu-high/a", "cpu-high/b", "cpu-high/c", "host-memory-high/a", "host-memory-high/b", "host-memory-high/c"}, order)
}

func TestEvaluate_invalidRuleIsSkipped(t *testing.T) {
	r := cpuRule()
	r.Selector = "zone in ("
	h := newHarness(t, r)
	require.Empty(t, h.eval(0, 99))
}

func TestConfig_Validate(t *testing.T) {
	_, err := NewEvaluator(Config{Staleness: 0})
	require.ErrorContains(t, err, "config.staleness")
	_, err = NewEvaluator(Config{Staleness: time.Second, ResolvedRetention: -1})
	require.ErrorContains(t, err, "config.resolved_retention")
}

func TestFingerprint_stable(t *testing.T) {
	ls := map[string]string{"alertname": "cpu-high", "node": "n1", "severity": "warning", "team": "infra"}
	fp := FingerprintOf(ls)
	// Golden: changing the hash breaks every stored alert and ledger key.
	require.Equal(t, "4f5df16af77cc514", fp.String())
	// It is FNV-1a over the sorted pairs, each string followed by 0xff.
	h := fnv.New64a()
	for _, k := range []string{"alertname", "node", "severity", "team"} {
		h.Write(append([]byte(k), 0xff))
		h.Write(append([]byte(ls[k]), 0xff))
	}
	require.Equal(t, h.Sum64(), uint64(fp))
	require.Equal(t, fp, FingerprintOf(map[string]string{"team": "infra", "severity": "warning", "node": "n1", "alertname": "cpu-high"}))
	require.NotEqual(t, fp, FingerprintOf(map[string]string{"alertname": "cpu-high", "node": "n2", "severity": "warning", "team": "infra"}))
	// Pairs cannot run together.
	require.NotEqual(t, FingerprintOf(map[string]string{"a": "bc"}), FingerprintOf(map[string]string{"ab": "c"}))

	for _, r := range append(DefaultRules(), cpuRule()) {
		r.Labels = map[string]string{"a": "1", "zz": "2", "nodf": "3", "nodez": "4"}
		c, err := compile(r)
		require.NoError(t, err)
		for _, n := range []string{"n1", "", "node-42"} {
			require.Equal(t, FingerprintOf(c.labelsFor(n)), c.fingerprint(n))
		}
	}
}
