package alerts

import (
	"time"
)

// fakeInputs is a hand-written Inputs: nodes and, per node and metric, the
// newest sample (and optionally a window of samples).
type fakeInputs struct {
	nodes  []NodeInfo
	latest map[string]map[string]Sample
	window map[string]map[string][]Sample
}

var _ Inputs = (*fakeInputs)(nil)

func newFake(nodes ...string) *fakeInputs {
	f := &fakeInputs{latest: map[string]map[string]Sample{}}
	for _, n := range nodes {
		f.nodes = append(f.nodes, NodeInfo{Name: n, Labels: map[string]string{}, Status: NodeUp})
	}
	return f
}

func (f *fakeInputs) Nodes() []NodeInfo { return f.nodes }

func (f *fakeInputs) Value(node, metric string) (float64, time.Time, bool) {
	s, ok := f.latest[node][metric]
	return s.Value, s.Time, ok
}

func (f *fakeInputs) set(node, metric string, v float64, at time.Time) {
	if f.latest[node] == nil {
		f.latest[node] = map[string]Sample{}
	}
	f.latest[node][metric] = Sample{Time: at, Value: v}
	if f.window != nil {
		if f.window[node] == nil {
			f.window[node] = map[string][]Sample{}
		}
		f.window[node][metric] = append(f.window[node][metric], Sample{Time: at, Value: v})
	}
}

func (f *fakeInputs) status(node string, s NodeStatus) {
	for i := range f.nodes {
		if f.nodes[i].Name == node {
			f.nodes[i].Status = s
		}
	}
}

func (f *fakeInputs) remove(node string) {
	out := f.nodes[:0]
	for _, n := range f.nodes {
		if n.Name != node {
			out = append(out, n)
		}
	}
	f.nodes = out
}

// windowInputs adds Window to fakeInputs.
type windowInputs struct{ *fakeInputs }

var _ WindowInputs = windowInputs{}

func (w windowInputs) Window(node, metric string, from time.Time) []Sample {
	var out []Sample
	for _, s := range w.window[node][metric] {
		if !s.Time.Before(from) {
			out = append(out, s)
		}
	}
	return out
}

func (f *fakeInputs) conditions(node string, names ...string) {
	for i := range f.nodes {
		if f.nodes[i].Name == node {
			f.nodes[i].Conditions = names
		}
	}
}

// poolInputs adds pools and their traffic to fakeInputs.
type poolInputs struct {
	*fakeInputs
	pools []PoolInfo
	// traffic is each pool's metrics; a pool missing from it has no data.
	traffic map[string]map[string]float64
	// windows records the window each traffic lookup asked for.
	windows []time.Duration
}

var _ PoolInputs = (*poolInputs)(nil)

func (p *poolInputs) Pools() []PoolInfo { return p.pools }

func (p *poolInputs) PoolTraffic(pool, metric string, now time.Time, window time.Duration) (float64, bool) {
	p.windows = append(p.windows, window)
	m, ok := p.traffic[pool]
	if !ok {
		return 0, false
	}
	v, ok := m[metric]
	return v, ok
}
