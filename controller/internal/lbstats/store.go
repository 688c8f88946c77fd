// Package lbstats keeps, on the leader, the counters balancers report for
// each backend (ReportStats), and turns them into what the autoscaler
// reads: requests per second and requests in flight per backend address,
// and latency quantiles, over a window. Counters are cumulative, so a lost report loses nothing
// but resolution.
package lbstats

import (
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// point is one report of one backend by one balancer.
type point struct {
	at       time.Time
	requests uint64
	errors   uint64
	counts   []uint64
	// busy is the backend's request-seconds (in_flight_seconds); NaN when
	// the balancer does not measure it.
	busy float64
}

type series struct {
	pool, address string
	bounds        []float64
	points        []point
}

// Store is safe for concurrent use.
type Store struct {
	// Keep bounds the history kept per series.
	Keep time.Duration
	// Lost: a balancer that sent no report for this long is presumed gone
	// (killed, or its host lost): Activity no longer waits for it, as for
	// one that left (Forget), and the newest request it showed still
	// counts. Zero: it is waited for until its reports age out of Keep.
	Lost time.Duration

	mu     sync.Mutex
	series map[string]*series // by balancer, pool and address
	// byPool holds the same series by pool, then by key, so that a pool's
	// window reads its own series only.
	byPool   map[string]map[string]*series
	activity map[string]map[string]*activity // by pool, then balancer
	// leftActive is, by pool, the newest request the balancers that left
	// (Forget) had shown: the pool's idle time still counts from it.
	leftActive map[string]time.Time
	// started is, by balancer, the start of its counters in its last
	// report (ReportStatsRequest.started); reported, when that report came.
	started  map[string]time.Time
	reported map[string]time.Time
	// pruneAt is when series nobody reports are next looked for.
	pruneAt time.Time
	// demand is signalled when a report shows requests that found no
	// backend.
	demand chan struct{}
}

// activity is what one balancer's reports say of one pool's requests.
type activity struct {
	// The first and the newest report that named the pool.
	first, last time.Time
	// The newest report that showed a request: a backend's counter moved
	// or a request in flight, or a request that found no backend.
	active time.Time
	// The pool's counters in the newest report.
	waiting  uint32
	unserved uint64
	// turned is how many requests found no backend between the two
	// reports before turnedAt.
	turned   uint64
	turnedAt time.Time
}

// New returns a store keeping keep of history.
func New(keep time.Duration) *Store {
	return &Store{Keep: keep, series: map[string]*series{}, byPool: map[string]map[string]*series{},
		activity: map[string]map[string]*activity{}, leftActive: map[string]time.Time{}, started: map[string]time.Time{}, reported: map[string]time.Time{}, demand: make(chan struct{}, 1)}
}

// Demand is signalled, without blocking, after a report showing requests
// held or turned away for want of a backend: a pool scaled to zero may
// need activating at once rather than at its next evaluation.
func (s *Store) Demand() <-chan struct{} { return s.demand }

// pool returns the activity of a pool as a balancer reports it, made on
// the first report; it marks the report's time.
func (s *Store) pool(balancer, pool string, at time.Time) (*activity, bool) {
	byBalancer := s.activity[pool]
	if byBalancer == nil {
		byBalancer = map[string]*activity{}
		s.activity[pool] = byBalancer
	}
	a := byBalancer[balancer]
	fresh := a == nil
	if fresh {
		a = &activity{first: at}
		byBalancer[balancer] = a
	}
	a.last = at
	return a, fresh
}

// Record adds a balancer's report, stamped with the leader's clock at
// receipt (balancers' clocks are not trusted for rates).
func (s *Store) Record(balancer string, at time.Time, req *pb.ReportStatsRequest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if req.Started != nil {
		started := req.Started.AsTime()
		if prev, ok := s.started[balancer]; ok && !prev.Equal(started) {
			// A new process: its counters start again from zero, and
			// equal counts say nothing about requests in between. Its
			// series start over as if new.
			for k, sr := range s.series {
				if strings.HasPrefix(k, balancer+"\x00") {
					delete(s.series, k)
					delete(s.byPool[sr.pool], k)
					if len(s.byPool[sr.pool]) == 0 {
						delete(s.byPool, sr.pool)
					}
				}
			}
		}
		s.started[balancer] = started
	}
	s.reported[balancer] = at
	for _, b := range req.Backends {
		k := balancer + "\x00" + b.Pool + "\x00" + b.Address
		sr := s.series[k]
		if sr == nil {
			sr = &series{pool: b.Pool, address: b.Address}
			s.series[k] = sr
			if s.byPool[b.Pool] == nil {
				s.byPool[b.Pool] = map[string]*series{}
			}
			s.byPool[b.Pool][k] = sr
		}
		// A backend's first report counts as activity when it has served
		// requests: when, is not known, and keeping the pool is the safe
		// side.
		a, _ := s.pool(balancer, b.Pool, at)
		if n := len(sr.points); b.InFlight > 0 || (n == 0 && b.Requests > 0) || (n > 0 && sr.points[n-1].requests != b.Requests) {
			a.active = at
		}
		if !slices.Equal(sr.bounds, req.BucketBounds) {
			// New buckets: the old points cannot be compared.
			sr.bounds, sr.points = slices.Clone(req.BucketBounds), nil
		}
		busy := math.NaN()
		if b.InFlightSeconds != nil && *b.InFlightSeconds >= 0 && !math.IsInf(*b.InFlightSeconds, 0) {
			busy = *b.InFlightSeconds
		}
		sr.points = append(sr.points, point{at: at, requests: b.Requests, errors: b.Errors, counts: slices.Clone(b.LatencyCounts), busy: busy})
		cut := 0
		for cut < len(sr.points)-1 && at.Sub(sr.points[cut].at) > s.Keep {
			cut++
		}
		if cut > 0 {
			sr.points = append(sr.points[:0:0], sr.points[cut:]...)
		}
	}
	demand := false
	for _, p := range req.Pools {
		a, fresh := s.pool(balancer, p.Pool, at)
		if p.Waiting > 0 {
			a.active = at
			demand = true
		}
		switch {
		case fresh:
			// Requests turned away before this leader heard of them are
			// old news, but the pool has had requests.
			if p.Unserved > 0 {
				a.active = at
			}
		case p.Unserved != a.unserved:
			a.turned, a.turnedAt, a.active = p.Unserved-a.unserved, at, at
			if p.Unserved < a.unserved {
				a.turned = p.Unserved // the pool left the table and came back
			}
			demand = demand || a.turned > 0
		}
		a.waiting, a.unserved = p.Waiting, p.Unserved
	}
	if demand {
		select {
		case s.demand <- struct{}{}:
		default:
		}
	}
	// Series no balancer reported for a while are forgotten, looked for a
	// few times per Keep rather than at every report.
	if at.Before(s.pruneAt) {
		return
	}
	s.pruneAt = at.Add(s.Keep / 10)
	for k, sr := range s.series {
		if at.Sub(sr.points[len(sr.points)-1].at) > s.Keep {
			delete(s.series, k)
			delete(s.byPool[sr.pool], k)
			if len(s.byPool[sr.pool]) == 0 {
				delete(s.byPool, sr.pool)
			}
		}
	}
	for pool, byBalancer := range s.activity {
		for b, a := range byBalancer {
			if at.Sub(a.last) > s.Keep {
				delete(byBalancer, b)
			}
		}
		if len(byBalancer) == 0 {
			delete(s.activity, pool)
		}
	}
	for pool, t := range s.leftActive {
		if at.Sub(t) > s.Keep {
			delete(s.leftActive, pool)
		}
	}
	for b, t := range s.reported {
		if at.Sub(t) > s.Keep {
			delete(s.reported, b)
		}
	}
	for b := range s.started {
		if _, ok := s.reported[b]; !ok && !s.hasSeries(b) {
			delete(s.started, b)
		}
	}
}

// Activity is what the balancers' reports say of a pool's demand.
type Activity struct {
	// Waiting is, summed over balancers, the requests each holds now for
	// want of a backend or, when more, those it found no backend for in
	// its latest report within fresh.
	Waiting uint64
	// Idle is how long no balancer has shown a request for the pool,
	// counted from the first report this store has of it. Known is false
	// when no balancer reports the pool, or one that did has not for
	// longer than fresh, and has sent no report for less than Lost: it
	// may be routing requests it cannot report.
	Idle  time.Duration
	Known bool
}

// PresumedGone reports whether a balancer whose last report came at last
// is presumed gone at now: it has sent none for Lost.
func (s *Store) PresumedGone(last, now time.Time) bool {
	return s.Lost > 0 && now.Sub(last) > s.Lost
}

// Activity returns the demand for pool at now; reports older than fresh
// count for Idle's Known only.
func (s *Store) Activity(pool string, now time.Time, fresh time.Duration) Activity {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out Activity
	seen, stale := false, false
	var lostActive time.Time
	for b, a := range s.activity[pool] {
		if now.Sub(a.last) > fresh {
			if s.PresumedGone(a.last, now) && s.PresumedGone(s.reported[b], now) {
				if a.active.After(lostActive) {
					lostActive = a.active
				}
				continue
			}
			stale = true
			continue
		}
		// A held request was turned away too: count it once.
		w := uint64(a.waiting)
		if now.Sub(a.turnedAt) <= fresh {
			w = max(w, a.turned)
		}
		out.Waiting += w
		idle := now.Sub(a.first)
		if !a.active.IsZero() {
			idle = now.Sub(a.active)
		}
		if !seen || idle < out.Idle {
			out.Idle = idle
		}
		seen = true
	}
	for _, t := range [...]time.Time{s.leftActive[pool], lostActive} {
		if idle := now.Sub(t); !t.IsZero() && seen && idle < out.Idle {
			out.Idle = idle
		}
	}
	out.Known = seen && !stale
	if !out.Known {
		out.Idle = 0
	}
	return out
}

// Usage is a backend's traffic over a window, summed over balancers.
type Usage struct {
	// RequestsPerSecond over the window, and ErrorsPerSecond of them (5xx
	// answers and transport failures).
	RequestsPerSecond float64
	ErrorsPerSecond   float64
	// Concurrency is the mean of the requests in flight over the window;
	// NoConcurrency is set when a balancer that reported the backend does
	// not measure them.
	Concurrency   float64
	NoConcurrency bool
	// Newest is the time of the newest report that counted.
	Newest time.Time
}

// Window returns, for each backend address of pool, its requests per
// second and mean requests in flight over the window ending at now, summed
// over the balancers that reported it; and the pool's latency histogram
// over the window (bounds, counts). A series with a single report in the
// window gives no rate.
func (s *Store) Window(pool string, now time.Time, window time.Duration) (map[string]Usage, []float64, []uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]Usage{}
	var h histogram
	s.each(pool, now, window, func(sr *series, a, b point, dt float64) {
		u := out[sr.address]
		u.RequestsPerSecond += float64(b.requests-a.requests) / dt
		if b.errors >= a.errors {
			u.ErrorsPerSecond += float64(b.errors-a.errors) / dt
		}
		if math.IsNaN(a.busy) || math.IsNaN(b.busy) {
			u.NoConcurrency = true
		} else {
			u.Concurrency += (b.busy - a.busy) / dt
		}
		if b.at.After(u.Newest) {
			u.Newest = b.at
		}
		out[sr.address] = u
		h.add(sr, a, b)
	})
	return out, h.bounds, h.counts
}

// Totals is a pool's traffic over a window, summed over its backends and
// the balancers that reported them.
type Totals struct {
	RequestsPerSecond float64
	// ErrorsPerSecond counts 5xx answers and transport failures.
	ErrorsPerSecond float64
	// Concurrency is the mean of the requests in flight, over the backends
	// whose balancers measure it.
	Concurrency float64
	// The latency histogram over the window: bounds and counts.
	Bounds []float64
	Counts []uint64
}

// ErrorRatio is the failed requests per request; NaN without a request.
func (t Totals) ErrorRatio() float64 {
	if t.RequestsPerSecond == 0 {
		return math.NaN()
	}
	return t.ErrorsPerSecond / t.RequestsPerSecond
}

// LatencyMs is the q-quantile (0-1) of the latency in milliseconds; NaN
// without a request.
func (t Totals) LatencyMs(q float64) float64 { return Quantile(t.Bounds, t.Counts, q) * 1000 }

// Totals returns pool's traffic over the window ending at now. covered is
// false unless some balancer has reported the pool within fresh and this
// store has had its reports of the pool for the whole window: a new
// leader's totals cover less than the window, and a pool no balancer
// reports has none.
func (s *Store) Totals(pool string, now time.Time, window, fresh time.Duration) (t Totals, covered bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range s.activity[pool] {
		if now.Sub(a.last) <= fresh && now.Sub(a.first) >= window {
			covered = true
		}
	}
	var h histogram
	s.each(pool, now, window, func(sr *series, a, b point, dt float64) {
		t.RequestsPerSecond += float64(b.requests-a.requests) / dt
		if b.errors >= a.errors {
			t.ErrorsPerSecond += float64(b.errors-a.errors) / dt
		}
		if !math.IsNaN(a.busy) && !math.IsNaN(b.busy) {
			t.Concurrency += (b.busy - a.busy) / dt
		}
		h.add(sr, a, b)
	})
	t.Bounds, t.Counts = h.bounds, h.counts
	return t, covered
}

// each calls fn with each of pool's series that has two reports over the
// window ending at now: the first (the report just before the window, when
// there is one, or the first after the counters last restarted) and the
// last, dt seconds apart. s.mu is held.
func (s *Store) each(pool string, now time.Time, window time.Duration, fn func(sr *series, a, b point, dt float64)) {
	from := now.Add(-window)
	for _, sr := range s.byPool[pool] {
		first, last := -1, len(sr.points)-1
		for i, p := range sr.points {
			if !p.at.Before(from) {
				first = i
				break
			}
		}
		// The point just before the window starts it, when there is one.
		if first > 0 && sr.points[first].at.After(from) {
			first--
		}
		if first < 0 || first == last {
			continue
		}
		a, b := sr.points[first], sr.points[last]
		// Counters restart when a backend leaves and rejoins a table: use
		// the part after the restart.
		for i := last; i > first; i-- {
			p, q := sr.points[i-1], sr.points[i]
			if q.requests < p.requests || q.errors < p.errors || q.busy < p.busy {
				a = q
				break
			}
		}
		dt := b.at.Sub(a.at).Seconds()
		if dt <= 0 {
			continue
		}
		fn(sr, a, b, dt)
	}
}

// histogram sums latency counts over series with the same bounds.
type histogram struct {
	bounds []float64
	counts []uint64
}

func (h *histogram) add(sr *series, a, b point) {
	if len(b.counts) != len(a.counts) || len(b.counts) != len(sr.bounds)+1 {
		return
	}
	if h.bounds == nil {
		h.bounds, h.counts = sr.bounds, make([]uint64, len(b.counts))
	}
	if !slices.Equal(h.bounds, sr.bounds) {
		return
	}
	for i := range b.counts {
		if b.counts[i] >= a.counts[i] {
			h.counts[i] += b.counts[i] - a.counts[i]
		}
	}
}

// Quantile estimates the q-quantile (0-1) of a histogram whose bucket i
// holds values up to bounds[i] (the last bucket: above the last bound), by
// linear interpolation inside the bucket; NaN when it is empty.
func Quantile(bounds []float64, counts []uint64, q float64) float64 {
	var total uint64
	for _, c := range counts {
		total += c
	}
	if total == 0 || len(counts) != len(bounds)+1 {
		return math.NaN()
	}
	rank := q * float64(total)
	var seen float64
	for i, c := range counts {
		if seen+float64(c) >= rank && c > 0 {
			lo := 0.0
			if i > 0 {
				lo = bounds[i-1]
			}
			if i == len(bounds) {
				return lo // beyond the last bound: the bound is all we know
			}
			return lo + (bounds[i]-lo)*(rank-seen)/float64(c)
		}
		seen += float64(c)
	}
	return bounds[len(bounds)-1]
}

// Forget forgets balancer (it left): Activity no longer waits for its
// reports, though a pool's idle time still counts from the last request it
// showed. Its counters stay for the windows they fall in.
func (s *Store) Forget(balancer string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// started stays while its series do: a new process under the same
	// name must still start them again.
	delete(s.reported, balancer)
	for pool, byBalancer := range s.activity {
		if a := byBalancer[balancer]; a != nil && a.active.After(s.leftActive[pool]) {
			s.leftActive[pool] = a.active
		}
		delete(byBalancer, balancer)
		if len(byBalancer) == 0 {
			delete(s.activity, pool)
		}
	}
}

// Reset forgets everything (a leadership ended).
func (s *Store) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.series = map[string]*series{}
	s.byPool = map[string]map[string]*series{}
	s.activity = map[string]map[string]*activity{}
	s.leftActive = map[string]time.Time{}
	s.started = map[string]time.Time{}
	s.reported = map[string]time.Time{}
}

// hasSeries reports whether any series of balancer is kept.
func (s *Store) hasSeries(balancer string) bool {
	for k := range s.series {
		if strings.HasPrefix(k, balancer+"\x00") {
			return true
		}
	}
	return false
}

// BalancerReport is when a balancer's last report came, and the start of
// its counters it gave (zero when it gave none).
type BalancerReport struct{ At, Started time.Time }

// Balancers returns the last report of each balancer heard from within
// Keep, and not forgotten, by name.
func (s *Store) Balancers() map[string]BalancerReport {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]BalancerReport, len(s.reported))
	for b, at := range s.reported {
		out[b] = BalancerReport{At: at, Started: s.started[b]}
	}
	return out
}
