package balancer

import (
	"math/rand/v2"
	"sync"
	"time"
)

// picker chooses a backend for one request. Implementations are safe for
// concurrent use; exclude (possibly nil) is a backend that just failed this
// request and must not be chosen again.
type picker interface {
	pick(now int64, exclude *backend) *backend
}

var (
	_ picker = (*p2cPicker)(nil)
	_ picker = (*wrrPicker)(nil)
)

// member is a backend's place in one table's pool.
type member struct {
	b        *backend
	weight   int64
	draining bool
}

// poolSnap is a pool as one table defines it. Immutable except for the
// picker's internal state.
type poolSnap struct {
	state   *poolState
	members []member
	picker  picker
	// slowStart is the ramp window in nanoseconds (0: off); slowMin is the
	// starting share in thousandths.
	slowStart int64
	slowMin   int64
	// hold is the pool's HoldWhenEmpty.
	hold time.Duration
	// httpsRedirect is the pool's HTTPSRedirect.
	httpsRedirect bool
}

func newPoolSnap(st *poolState, members []member, policy Policy, slowStart int64, slowMinPct int) *poolSnap {
	ps := &poolSnap{state: st, members: members, slowStart: slowStart, slowMin: int64(slowMinPct) * 10}
	switch policy {
	case PolicyRoundRobin:
		ps.picker = &wrrPicker{ps: ps, current: make([]int64, len(members))}
	default:
		ps.picker = &p2cPicker{ps: ps}
	}
	return ps
}

// effWeight is the member's weight in thousandths, scaled down during slow start.
func (ps *poolSnap) effWeight(m *member, now int64) int64 {
	w := m.weight * 1000
	if ps.slowStart > 0 && m.b.addedAt > 0 {
		el := now - m.b.addedAt
		if el < ps.slowStart {
			f := el * 1000 / ps.slowStart
			if f < ps.slowMin {
				f = ps.slowMin
			}
			w = w * f / 1000
			if w < 1 {
				w = 1
			}
		}
	}
	return w
}

// usable reports whether m may take a new request; strict also excludes
// ejected backends (relaxed is the panic mode used when every backend is out).
func (m *member) usable(now int64, exclude *backend, strict bool) bool {
	if m.draining || m.b == exclude {
		return false
	}
	return !strict || !m.b.health.ejected(now)
}

// p2cPicker is least-request with power of two choices: of two random usable
// backends, the one with fewer requests in flight per unit of weight wins.
type p2cPicker struct{ ps *poolSnap }

func (p *p2cPicker) pick(now int64, exclude *backend) *backend {
	ms := p.ps.members
	n := len(ms)
	switch n {
	case 0:
		return nil
	case 1:
		if ms[0].usable(now, exclude, false) {
			return ms[0].b
		}
		return nil
	}
	for strict := true; ; strict = false {
		for try := 0; try < 3; try++ {
			i := rand.IntN(n)
			j := rand.IntN(n - 1)
			if j >= i {
				j++
			}
			a, b := &ms[i], &ms[j]
			au, bu := a.usable(now, exclude, strict), b.usable(now, exclude, strict)
			switch {
			case au && bu:
				// A backend in slow start enters the comparison with the
				// probability of its ramp, then competes at its full
				// weight: it gets a growing share of the requests at once,
				// whatever the concurrency (comparing in-flight counts
				// against a tenth of the weight would starve it while
				// few requests are in flight).
				if !p.ps.admitted(a, now) {
					return b.b
				}
				if !p.ps.admitted(b, now) {
					return a.b
				}
				if p.load(b) < p.load(a) {
					return b.b
				}
				return a.b
			case au:
				return a.b
			case bu:
				return b.b
			}
		}
		start := rand.IntN(n)
		for k := 0; k < n; k++ {
			m := &ms[(start+k)%n]
			if m.usable(now, exclude, strict) {
				return m.b
			}
		}
		if !strict {
			return nil
		}
	}
}

// load is the member's requests in flight per unit of its full weight.
func (p *p2cPicker) load(m *member) int64 {
	return (m.b.stats.inflight.Load() + 1) * 1_000_000_000 / (m.weight * 1000)
}

// admitted draws whether a member in slow start takes part in a
// comparison: with the probability of its ramp (always after it).
func (ps *poolSnap) admitted(m *member, now int64) bool {
	if ps.slowStart == 0 || m.b.addedAt == 0 || now-m.b.addedAt >= ps.slowStart {
		return true
	}
	f := ps.effWeight(m, now) * 1000 / (m.weight * 1000)
	return f >= 1000 || rand.Int64N(1000) < f
}

// wrrPicker is smooth weighted round robin (as in nginx): each pick adds every
// usable backend's weight to its current value, takes the largest and
// subtracts the total from it, which interleaves backends evenly.
type wrrPicker struct {
	ps      *poolSnap
	mu      sync.Mutex // guards current; belongs to this table's snapshot only
	current []int64
}

func (p *wrrPicker) pick(now int64, exclude *backend) *backend {
	ms := p.ps.members
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, strict := range [2]bool{true, false} {
		best, total := -1, int64(0)
		for i := range ms {
			m := &ms[i]
			if !m.usable(now, exclude, strict) {
				continue
			}
			w := p.ps.effWeight(m, now)
			p.current[i] += w
			total += w
			if best < 0 || p.current[i] > p.current[best] {
				best = i
			}
		}
		if best >= 0 {
			p.current[best] -= total
			return ms[best].b
		}
	}
	return nil
}
