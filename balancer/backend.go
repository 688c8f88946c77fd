package balancer

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// epoch anchors monotonic nanosecond timestamps used on the hot path.
var epoch = time.Now()

// monoNow returns monotonic nanoseconds since epoch.
func monoNow() int64 { return int64(time.Since(epoch)) }

// backend is the live state of one backend of one pool. It survives table
// updates that keep the backend (same pool name and address), so its
// connections, statistics and health carry over.
type backend struct {
	pool    string
	addr    string
	addedAt int64 // monoNow at which slow start began; 0: no slow start
	removed atomic.Bool

	stats  backendStats
	health health
	conns  connPool
}

// LatencyBuckets are the upper bounds of the per-backend latency histogram.
var LatencyBuckets = []time.Duration{
	500 * time.Microsecond, time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond,
	250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2500 * time.Millisecond,
	5 * time.Second, 10 * time.Second,
}

const ewmaAlpha = 0.1

type backendStats struct {
	requests atomic.Uint64
	errors   atomic.Uint64
	inflight atomic.Int64
	busy     busyClock
	latSum   atomic.Uint64 // nanoseconds
	ewma     atomic.Uint64 // float64 bits, nanoseconds
	buckets  [15]atomic.Uint64
}

// enter counts a request sent to the backend at now (monoNow); leave
// counts it done.
func (s *backendStats) enter(now int64) {
	s.inflight.Add(1)
	s.busy.add(now, 1)
}

func (s *backendStats) leave() {
	s.busy.add(monoNow(), -1)
	s.inflight.Add(-1)
}

// busyClock integrates a backend's requests in flight over time: request
// seconds, whose increase over a window, divided by the window, is the
// mean number of requests in flight there (Little's law), as Knative's
// queue-proxy measures concurrency. A request that lasts an hour counts
// in every second of it, not at its end.
type busyClock struct {
	mu   sync.Mutex
	n    int64  // requests in flight
	last int64  // monoNow of the last accrual
	us   uint64 // whole request-microseconds
	ns   int64  // the rest, below 1,000 request-nanoseconds
}

func (c *busyClock) add(now, delta int64) {
	c.mu.Lock()
	c.accrue(now)
	c.n += delta
	c.mu.Unlock()
}

// accrue adds the requests in flight since the last accrual; c.mu held.
func (c *busyClock) accrue(now int64) {
	if now <= c.last {
		return
	}
	if c.n > 0 {
		dt := now - c.last
		c.us += uint64(c.n) * uint64(dt/1000)
		c.ns += c.n * (dt % 1000)
		c.us += uint64(c.ns / 1000)
		c.ns %= 1000
	}
	c.last = now
}

// seconds returns the request-seconds accrued up to now.
func (c *busyClock) seconds(now int64) float64 {
	c.mu.Lock()
	c.accrue(now)
	us, ns := c.us, c.ns
	c.mu.Unlock()
	return float64(us)/1e6 + float64(ns)/1e9
}

// observe records a finished request. failed marks 5xx answers and transport
// errors.
func (s *backendStats) observe(d time.Duration, failed bool) {
	s.requests.Add(1)
	if failed {
		s.errors.Add(1)
	}
	if d < 0 {
		d = 0
	}
	s.latSum.Add(uint64(d))
	i := 0
	for i < len(LatencyBuckets) && d > LatencyBuckets[i] {
		i++
	}
	s.buckets[i].Add(1)
	for {
		old := s.ewma.Load()
		prev := math.Float64frombits(old)
		next := float64(d)
		if old != 0 {
			next = prev + ewmaAlpha*(float64(d)-prev)
		}
		if s.ewma.CompareAndSwap(old, math.Float64bits(next)) {
			return
		}
	}
}

// BackendStats is a point-in-time copy of one backend's counters.
type BackendStats struct {
	Pool    string
	Address string
	// Requests and Errors count finished requests since the backend joined
	// the pool; Errors are 5xx answers and transport failures.
	Requests uint64
	Errors   uint64
	InFlight int64
	// InFlightSeconds is InFlight integrated over time since the backend
	// joined (request-seconds): its rate is the mean concurrency.
	InFlightSeconds float64
	Ejected         bool
	Draining        bool
	// LatencyEWMA is an exponentially weighted moving average of request
	// latency (α = 0.1).
	LatencyEWMA time.Duration
	LatencySum  time.Duration
	// LatencyCounts[i] counts requests with latency ≤ LatencyBuckets[i] and
	// above the previous bound; the last entry counts the rest.
	LatencyCounts []uint64
}

func (b *backend) snapshotStats(now int64, draining bool) BackendStats {
	s := &b.stats
	st := BackendStats{
		Pool:            b.pool,
		Address:         b.addr,
		Requests:        s.requests.Load(),
		Errors:          s.errors.Load(),
		InFlight:        s.inflight.Load(),
		InFlightSeconds: s.busy.seconds(now),
		Ejected:         b.health.ejected(now),
		Draining:        draining,
		LatencyEWMA:     time.Duration(math.Float64frombits(s.ewma.Load())),
		LatencySum:      time.Duration(s.latSum.Load()),
		LatencyCounts:   make([]uint64, len(s.buckets)),
	}
	for i := range s.buckets {
		st.LatencyCounts[i] = s.buckets[i].Load()
	}
	return st
}

// health is the passive health state of a backend.
type health struct {
	consec5xx    atomic.Int32
	consecFail   atomic.Int32
	ejectedUntil atomic.Int64 // monoNow; 0: never ejected
	ejections    atomic.Int32 // consecutive ejections, for back-off
}

func (h *health) ejected(now int64) bool { return h.ejectedUntil.Load() > now }

// poolState is the live state of a pool that survives table updates.
type poolState struct {
	name string
	// active counts requests in flight; retries counts retries in flight.
	active  atomic.Int64
	retries atomic.Int64
	// ejectMu serializes ejection decisions so the cap on ejected backends
	// holds under concurrent failures. Only the failure path takes it.
	ejectMu sync.Mutex
	current atomic.Pointer[poolSnap]

	// waiting counts requests held for a backend now; unserved counts the
	// requests that found none; held counts ended holds by outcome.
	waiting  atomic.Int64
	unserved atomic.Uint64
	held     [heldOutcomes]atomic.Uint64
}

// How a held request stopped waiting (HeldCounts).
const (
	heldServed = iota
	heldTimedOut
	heldClosed
	heldRemoved
	heldGone
	heldOutcomes
)

func (p *poolState) snapshotStats() PoolStats {
	return PoolStats{
		Pool:     p.name,
		Waiting:  p.waiting.Load(),
		Unserved: p.unserved.Load(),
		Held: HeldCounts{
			Served:   p.held[heldServed].Load(),
			TimedOut: p.held[heldTimedOut].Load(),
			Closed:   p.held[heldClosed].Load(),
			Removed:  p.held[heldRemoved].Load(),
			Gone:     p.held[heldGone].Load(),
		},
	}
}

// retryAllowed reports whether one more retry fits the budget: retries in
// flight stay below max(minConc, budgetPct% of requests in flight).
func retryAllowed(active, retries int64, budgetPct, minConc int) bool {
	limit := active * int64(budgetPct) / 100
	if limit < int64(minConc) {
		limit = int64(minConc)
	}
	return retries < limit
}

// reserveRetry takes one retry slot if the budget has room and reports
// whether it did; the caller gives it back with retries.Add(-1). Check and
// take are one compare-and-swap so that concurrent failures cannot all pass
// the check and overrun the budget together.
func (p *poolState) reserveRetry(budgetPct, minConc int) bool {
	for {
		r := p.retries.Load()
		if !retryAllowed(p.active.Load(), r, budgetPct, minConc) {
			return false
		}
		if p.retries.CompareAndSwap(r, r+1) {
			return true
		}
	}
}

// reportSuccess records a response below 500.
func (p *poolState) reportSuccess(b *backend, now int64, base time.Duration) {
	h := &b.health
	if h.consec5xx.Load() != 0 {
		h.consec5xx.Store(0)
	}
	if h.consecFail.Load() != 0 {
		h.consecFail.Store(0)
	}
	// Forgive past ejections once the backend has served well for a while.
	if h.ejections.Load() != 0 && now > h.ejectedUntil.Load()+int64(base) {
		h.ejections.Store(0)
	}
}

// report5xx records a 5xx response and may eject the backend.
func (p *poolState) report5xx(b *backend, now int64, hc *HealthConfig) bool {
	n := b.health.consec5xx.Add(1)
	if hc.Consecutive5xx > 0 && int(n) >= hc.Consecutive5xx {
		return p.tryEject(b, now, hc)
	}
	return false
}

// reportFailure records a failed connect or a reset before any response byte
// and may eject the backend.
func (p *poolState) reportFailure(b *backend, now int64, hc *HealthConfig) bool {
	n := b.health.consecFail.Add(1)
	if hc.ConsecutiveConnectFailures > 0 && int(n) >= hc.ConsecutiveConnectFailures {
		return p.tryEject(b, now, hc)
	}
	return false
}

// tryEject ejects b unless that would put the pool over its ejection cap.
func (p *poolState) tryEject(b *backend, now int64, hc *HealthConfig) bool {
	p.ejectMu.Lock()
	defer p.ejectMu.Unlock()
	h := &b.health
	if h.ejected(now) {
		return false
	}
	snap := p.current.Load()
	eligible, ejected := 0, 0
	if snap != nil {
		for i := range snap.members {
			m := &snap.members[i]
			if m.draining {
				continue
			}
			eligible++
			if m.b.health.ejected(now) {
				ejected++
			}
		}
	}
	if (ejected+1)*100 > eligible*hc.MaxEjectionPercent {
		return false
	}
	n := h.ejections.Add(1)
	d := time.Duration(n) * hc.BaseEjection
	if d > hc.MaxEjection || d <= 0 {
		d = hc.MaxEjection
	}
	h.ejectedUntil.Store(now + int64(d))
	h.consec5xx.Store(0)
	h.consecFail.Store(0)
	return true
}
