// Package lbstats keeps, on the leader, the counters balancers report for
// each backend (ReportStats), and turns them into what the autoscaler
// reads: requests per second per backend address and latency quantiles,
// over a window. Counters are cumulative, so a lost report loses nothing
// but resolution.
package lbstats

import (
	"math"
	"slices"
	"sync"
	"time"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// point is one report of one backend by one balancer.
type point struct {
	at       time.Time
	requests uint64
	counts   []uint64
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

	mu     sync.Mutex
	series map[string]*series // by balancer, pool and address
	// pruneAt is when series nobody reports are next looked for.
	pruneAt time.Time
}

// New returns a store keeping keep of history.
func New(keep time.Duration) *Store {
	return &Store{Keep: keep, series: map[string]*series{}}
}

// Record adds a balancer's report, stamped with the leader's clock at
// receipt (balancers' clocks are not trusted for rates).
func (s *Store) Record(balancer string, at time.Time, req *pb.ReportStatsRequest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, b := range req.Backends {
		k := balancer + "\x00" + b.Pool + "\x00" + b.Address
		sr := s.series[k]
		if sr == nil {
			sr = &series{pool: b.Pool, address: b.Address}
			s.series[k] = sr
		}
		if !slices.Equal(sr.bounds, req.BucketBounds) {
			// New buckets: the old points cannot be compared.
			sr.bounds, sr.points = slices.Clone(req.BucketBounds), nil
		}
		sr.points = append(sr.points, point{at: at, requests: b.Requests, counts: slices.Clone(b.LatencyCounts)})
		cut := 0
		for cut < len(sr.points)-1 && at.Sub(sr.points[cut].at) > s.Keep {
			cut++
		}
		if cut > 0 {
			sr.points = append(sr.points[:0:0], sr.points[cut:]...)
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
		}
	}
}

// Usage is a backend's traffic over a window, summed over balancers.
type Usage struct {
	// RequestsPerSecond over the window.
	RequestsPerSecond float64
	// Newest is the time of the newest report that counted.
	Newest time.Time
}

// Window returns, for each backend address of pool, its requests per
// second over the window ending at now, summed over the balancers that
// reported it; and the pool's latency histogram over the window (bounds,
// counts). A series with a single report in the window gives no rate.
func (s *Store) Window(pool string, now time.Time, window time.Duration) (map[string]Usage, []float64, []uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]Usage{}
	var bounds []float64
	var hist []uint64
	from := now.Add(-window)
	for _, sr := range s.series {
		if sr.pool != pool {
			continue
		}
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
			if sr.points[i].requests < sr.points[i-1].requests {
				a = sr.points[i]
				break
			}
		}
		dt := b.at.Sub(a.at).Seconds()
		if dt <= 0 {
			continue
		}
		u := out[sr.address]
		u.RequestsPerSecond += float64(b.requests-a.requests) / dt
		if b.at.After(u.Newest) {
			u.Newest = b.at
		}
		out[sr.address] = u
		if len(b.counts) == len(a.counts) && len(b.counts) == len(sr.bounds)+1 {
			if bounds == nil {
				bounds, hist = sr.bounds, make([]uint64, len(b.counts))
			}
			if slices.Equal(bounds, sr.bounds) {
				for i := range b.counts {
					if b.counts[i] >= a.counts[i] {
						hist[i] += b.counts[i] - a.counts[i]
					}
				}
			}
		}
	}
	return out, bounds, hist
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

// Reset forgets everything (a leadership ended).
func (s *Store) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.series = map[string]*series{}
}
