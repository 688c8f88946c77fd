package alerts

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/hostscale/hostscale/controller/internal/metricstore"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// benchInputs is a flat Inputs for benchmarks: a value per node and series.
type benchInputs struct {
	nodes []NodeInfo
	index map[string]int
	vals  [][metricstore.NumSeries]float64
	at    time.Time
}

func (b *benchInputs) Nodes() []NodeInfo { return b.nodes }

func (b *benchInputs) Value(node, metric string) (float64, time.Time, bool) {
	i, ok := b.index[node]
	s, sok := metricstore.SeriesIndex(metric)
	if !ok || !sok {
		return 0, time.Time{}, false
	}
	return b.vals[i][s], b.at, true
}

func newBenchInputs(n int, at time.Time) *benchInputs {
	b := &benchInputs{index: make(map[string]int, n), vals: make([][metricstore.NumSeries]float64, n), at: at}
	zones := []string{"a", "b", "c"}
	for i := range n {
		name := fmt.Sprintf("node-%05d", i)
		b.nodes = append(b.nodes, NodeInfo{Name: name, Labels: map[string]string{"zone": zones[i%3], "tier": "web"}, Status: NodeUp})
		b.index[name] = i
		for s := range metricstore.NumSeries {
			b.vals[i][s] = float64((i*7 + s*13) % 100) // about a tenth of nodes above 90
		}
	}
	return b
}

func benchRules() []Rule {
	// The node rules: the benchmark's inputs have no pools.
	rules := slices.DeleteFunc(DefaultRules(), func(r Rule) bool { return r.Kind == KindPoolThreshold })
	for _, m := range []string{"load1", "swap_used_percent", "tcp_connections", "processes", "net_rx_bytes_per_second"} {
		rules = append(rules, Rule{Name: "bench-" + m[:4] + fmt.Sprint(len(rules)), Metric: m, Op: OpGE, Threshold: 95,
			For: time.Minute, Selector: "zone in (a,b),tier=web", Severity: SeverityInfo,
			Annotations: map[string]string{"summary": "{{ .Node }} {{ .Value }}"}})
	}
	return rules
}

// BenchmarkEvaluate_10kNodes10Rules measures one steady-state evaluation
// round: 10,000 nodes, 10 rules, and the alerts of earlier rounds (about a
// tenth of the pairs) in current.
func BenchmarkEvaluate_10kNodes10Rules(b *testing.B) {
	rules := benchRules()
	if len(rules) != 10 {
		b.Fatalf("%d rules", len(rules))
	}
	now := t0
	in := newBenchInputs(10_000, now)
	ev, err := NewEvaluator(DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	current := map[Fingerprint]Alert{}
	Apply(current, ev.Evaluate(now, rules, in, current)...)
	Apply(current, ev.Evaluate(now.Add(time.Minute), rules, in, current)...)
	b.ReportAllocs()
	for b.Loop() {
		if ts := ev.Evaluate(now.Add(time.Minute+time.Second), rules, in, current); len(ts) != 0 {
			b.Fatalf("steady state produced %d transitions", len(ts))
		}
	}
	b.ReportMetric(float64(len(current)), "alerts")
}

// BenchmarkEvaluate_10kNodes10Rules_metricStore reads a real metricstore
// holding 300 samples (5 minutes) per node through StoreInputs and the
// store's Latest.
func BenchmarkEvaluate_10kNodes10Rules_metricStore(b *testing.B) {
	const nodes, slots = 10_000, 300
	st := metricstore.New(slots)
	fake := newBenchInputs(nodes, t0)
	for i, n := range fake.nodes {
		for k := range slots {
			at := t0.Add(time.Duration(k-slots+1) * time.Second)
			v := fake.vals[i]
			st.Add(n.Name, &pb.Sample{Time: timestamppb.New(at), CpuPercent: v[metricstore.CPUPercent],
				MemoryUsedPercent: v[metricstore.MemoryUsedPercent], Load1: v[metricstore.Load1], Load5: v[metricstore.Load5],
				SwapUsedPercent: v[metricstore.SwapUsedPercent], TcpConnections: uint32(v[metricstore.TCPConnections]),
				Processes: uint32(v[metricstore.Processes]), NetRxBytesPerSecond: v[metricstore.NetRxBytesPerSecond],
				Disks: []*pb.DiskUsage{{UsedPercent: v[metricstore.DiskUsedPercent]}}})
		}
	}
	cfg := DefaultConfig()
	in := &StoreInputs{Store: st, NodeList: fake.nodes, From: t0.Add(-cfg.Staleness), Latest: st.Latest}
	rules := benchRules()
	ev, _ := NewEvaluator(cfg)
	current := map[Fingerprint]Alert{}
	Apply(current, ev.Evaluate(t0, rules, in, current)...)
	b.ReportAllocs()
	for b.Loop() {
		_ = ev.Evaluate(t0, rules, in, current)
	}
	b.ReportMetric(float64(len(current)), "alerts")
}

// BenchmarkEvaluate_10kNodes10Rules_firstRound is the worst round: every
// matching pair turns pending, so labels and annotations are built.
func BenchmarkEvaluate_10kNodes10Rules_firstRound(b *testing.B) {
	rules := benchRules()
	in := newBenchInputs(10_000, t0)
	ev, _ := NewEvaluator(DefaultConfig())
	b.ReportAllocs()
	for b.Loop() {
		_ = ev.Evaluate(t0, rules, in, nil)
	}
}
