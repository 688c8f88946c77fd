package alerts

import (
	"time"

	"github.com/hostscale/hostscale/controller/internal/lbstats"
	"github.com/hostscale/hostscale/controller/internal/metricstore"
)

// StoreInputs adapts the leader's metric store and the registered nodes to
// WindowInputs, and its balancers' traffic and the pools to PoolInputs. It reads the store under the store's own lock per call.
//
// Cost: metricstore.Store has no accessor for a node's newest values, so
// without Latest each Value call copies a window through Series (one
// allocation of the ring's capacity): about 150 ms and 680 MB of garbage
// per round at 10,000 nodes, 300 slots and 10 rules. Set Latest to a
// store method that returns the newest slot without copying the window,
// and a round costs what the evaluator itself costs (about 8 ms).
type StoreInputs struct {
	Store *metricstore.Store
	// Latest, when set, returns node's newest sample time and values; Value
	// then uses it instead of Series.
	Latest func(node string) (time.Time, [metricstore.NumSeries]float64, bool)
	// NodeList is returned by Nodes; the leader builds it from the FSM.
	NodeList []NodeInfo
	// From bounds how far back Value looks (now minus the evaluator's
	// staleness is enough); older samples are not copied.
	From time.Time
	// PoolList is returned by Pools.
	PoolList []PoolInfo
	// Traffic is the balancers' reports; nil: pool rules on traffic have
	// no data. TrafficFresh is how recent a balancer's report of a pool
	// must be to count.
	Traffic      *lbstats.Store
	TrafficFresh time.Duration
}

var (
	_ WindowInputs = (*StoreInputs)(nil)
	_ PoolInputs   = (*StoreInputs)(nil)
)

// Pools returns PoolList.
func (s *StoreInputs) Pools() []PoolInfo { return s.PoolList }

// PoolTraffic returns a traffic metric of pool from Traffic.
func (s *StoreInputs) PoolTraffic(pool, metric string, now time.Time, window time.Duration) (float64, bool) {
	if s.Traffic == nil {
		return 0, false
	}
	t, ok := s.Traffic.Totals(pool, now, window, s.TrafficFresh)
	if !ok {
		return 0, false
	}
	switch metric {
	case "request_rate":
		return t.RequestsPerSecond, true
	case "error_rate":
		return t.ErrorsPerSecond, true
	case "error_ratio":
		return t.ErrorRatio(), true
	case "p95_latency_ms":
		return t.LatencyMs(0.95), true
	case "p99_latency_ms":
		return t.LatencyMs(0.99), true
	case "in_flight":
		return t.Concurrency, true
	}
	return 0, false
}

// Nodes returns NodeList.
func (s *StoreInputs) Nodes() []NodeInfo { return s.NodeList }

// Value returns node's newest sample of metric since From.
func (s *StoreInputs) Value(node, metric string) (float64, time.Time, bool) {
	i, ok := metricstore.SeriesIndex(metric)
	if !ok {
		return 0, time.Time{}, false
	}
	if s.Latest != nil {
		at, vs, ok := s.Latest(node)
		return vs[i], at, ok
	}
	if newest, ok := s.Store.Newest(node); !ok || newest.Before(s.From) {
		return 0, time.Time{}, false // skip the copy for silent nodes
	}
	pts := s.Store.Series(node, i, s.From)
	if len(pts) == 0 {
		return 0, time.Time{}, false
	}
	p := pts[len(pts)-1]
	return p.Value, p.Time, true
}

// Window returns node's samples of metric since from.
func (s *StoreInputs) Window(node, metric string, from time.Time) []Sample {
	i, ok := metricstore.SeriesIndex(metric)
	if !ok {
		return nil
	}
	pts := s.Store.Series(node, i, from)
	out := make([]Sample, len(pts))
	for j, p := range pts {
		out[j] = Sample{Time: p.Time, Value: p.Value}
	}
	return out
}
