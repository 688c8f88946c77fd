package balancer

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fakePool builds a pool snapshot over fresh backends with the given weights.
func fakePool(policy Policy, weights ...int64) *poolSnap {
	st := &poolState{name: "p"}
	var ms []member
	for i, w := range weights {
		ms = append(ms, member{b: &backend{pool: "p", addr: fmt.Sprintf("10.0.0.%d:80", i+1)}, weight: w})
	}
	ps := newPoolSnap(st, ms, policy, 0, 10)
	st.current.Store(ps)
	return ps
}

func counts(ps *poolSnap, n int, now int64) map[*backend]int {
	out := map[*backend]int{}
	for i := 0; i < n; i++ {
		out[ps.picker.pick(now, nil)]++
	}
	return out
}

func TestWRR_smoothlyFollowsWeights(t *testing.T) {
	ps := fakePool(PolicyRoundRobin, 5, 1, 1)
	a, b, c := ps.members[0].b, ps.members[1].b, ps.members[2].b
	var seq []*backend
	for i := 0; i < 7; i++ {
		seq = append(seq, ps.picker.pick(1, nil))
	}
	// nginx's smooth weighted round robin for {5,1,1}.
	require.Equal(t, []*backend{a, a, b, a, c, a, a}, seq)
	got := counts(ps, 7000, 1)
	require.Equal(t, 5000, got[a])
	require.Equal(t, 1000, got[b])
	require.Equal(t, 1000, got[c])
}

func TestP2C_prefersFewerInFlightPerWeight(t *testing.T) {
	ps := fakePool(PolicyLeastRequest, 1, 1)
	a, b := ps.members[0].b, ps.members[1].b
	a.stats.inflight.Store(10)
	for i := 0; i < 100; i++ {
		require.Same(t, b, ps.picker.pick(1, nil))
	}
	// With equal load, weight decides: 30 in flight on a weight-3 backend is
	// the same load as 10 on a weight-1 one.
	ps = fakePool(PolicyLeastRequest, 3, 1)
	a, b = ps.members[0].b, ps.members[1].b
	a.stats.inflight.Store(20)
	b.stats.inflight.Store(10)
	for i := 0; i < 100; i++ {
		require.Same(t, a, ps.picker.pick(1, nil))
	}
}

func TestP2C_spreadsAcrossBackends(t *testing.T) {
	ps := fakePool(PolicyLeastRequest, 1, 1, 1, 1)
	got := counts(ps, 4000, 1)
	require.Len(t, got, 4)
	for be, n := range got {
		require.InDelta(t, 1000, n, 250, be.addr)
	}
}

func TestPick_skipsDrainingEjectedAndExcluded(t *testing.T) {
	for _, policy := range []Policy{PolicyLeastRequest, PolicyRoundRobin} {
		t.Run(string(policy), func(t *testing.T) {
			ps := fakePool(policy, 1, 1, 1)
			a, b, c := ps.members[0].b, ps.members[1].b, ps.members[2].b
			ps.members[0].draining = true
			b.health.ejectedUntil.Store(100)
			for i := 0; i < 50; i++ {
				require.Same(t, c, ps.picker.pick(50, nil))
			}
			// Excluding the only healthy backend falls back to the ejected one
			// (panic mode) rather than the draining one.
			require.Same(t, b, ps.picker.pick(50, c))
			// After the ejection ends, b is back.
			got := counts(ps, 100, 200)
			require.Zero(t, got[a])
			require.Positive(t, got[b])
			require.Positive(t, got[c])
		})
	}
}

func TestPick_allDrainingIsNil(t *testing.T) {
	ps := fakePool(PolicyLeastRequest, 1, 1)
	ps.members[0].draining, ps.members[1].draining = true, true
	require.Nil(t, ps.picker.pick(1, nil))
	ps = fakePool(PolicyRoundRobin)
	require.Nil(t, ps.picker.pick(1, nil))
}

func TestSlowStart_rampsNewBackendWeight(t *testing.T) {
	window := int64(10 * time.Second)
	st := &poolState{name: "p"}
	old := &backend{addr: "10.0.0.1:80"}
	fresh := &backend{addr: "10.0.0.2:80", addedAt: 1000}
	ps := newPoolSnap(st, []member{{b: old, weight: 1}, {b: fresh, weight: 1}}, PolicyRoundRobin, window, 10)
	require.EqualValues(t, 100, ps.effWeight(&ps.members[1], 1000), "starts at the minimum share")
	require.EqualValues(t, 500, ps.effWeight(&ps.members[1], 1000+window/2))
	require.EqualValues(t, 1000, ps.effWeight(&ps.members[1], 1000+window))
	require.EqualValues(t, 1000, ps.effWeight(&ps.members[0], 1000))

	got := counts(ps, 1100, 1000)
	require.Equal(t, 100, got[fresh], "a new backend gets 10%% of its share at first")

	// Least-request gives a backend in slow start the ramp's share of
	// the comparisons from the start, even when few requests are in flight
	// (it would otherwise lose every comparison against a tenth of its
	// weight), then competes at its full weight.
	ps = newPoolSnap(st, []member{{b: old, weight: 1}, {b: fresh, weight: 1}}, PolicyLeastRequest, window, 10)
	old.stats.inflight.Store(3)
	n := 0
	for range 10000 {
		if ps.picker.pick(1000, nil) == fresh {
			n++
		}
	}
	require.InDelta(t, 1000, n, 300, "about 10%% of the picks at first")
	n = 0
	for range 10000 {
		if ps.picker.pick(1000+window/2, nil) == fresh {
			n++
		}
	}
	require.InDelta(t, 5000, n, 500, "about half at mid-ramp")
	require.Same(t, fresh, ps.picker.pick(1000+window, nil), "after the ramp, the lower load wins")
	old.stats.inflight.Store(0)
}

func TestApply_slowStartOnlyForBackendsJoiningAnExistingPool(t *testing.T) {
	cfg := testConfig(t)
	cfg.SlowStart = time.Minute
	b, err := New(cfg)
	require.NoError(t, err)
	require.NoError(t, b.Apply(oneTable(1, "", "127.0.0.1:1001")))
	require.NoError(t, b.Apply(oneTable(2, "", "127.0.0.1:1001", "127.0.0.1:1002")))
	ms := b.snap.Load().pools[0].members
	require.Zero(t, ms[0].b.addedAt, "backends of the first table start at full weight")
	require.NotZero(t, ms[1].b.addedAt)
}

func TestHealth_ejectsAfterConsecutive5xxWithGrowingBackoff(t *testing.T) {
	hc := DefaultConfig().Health
	hc.Consecutive5xx = 3
	ps := fakePool(PolicyLeastRequest, 1, 1, 1, 1)
	st, a := ps.state, ps.members[0].b
	now := int64(1)
	require.False(t, st.report5xx(a, now, &hc))
	require.False(t, st.report5xx(a, now, &hc))
	st.reportSuccess(a, now, hc.BaseEjection) // a success resets the streak
	require.False(t, st.report5xx(a, now, &hc))
	require.False(t, st.report5xx(a, now, &hc))
	require.True(t, st.report5xx(a, now, &hc))
	require.True(t, a.health.ejected(now))
	require.Equal(t, now+int64(hc.BaseEjection), a.health.ejectedUntil.Load())

	// Back after the first ejection, failing again: ejected twice as long.
	now += int64(hc.BaseEjection)
	require.False(t, a.health.ejected(now))
	for i := 0; i < 3; i++ {
		st.report5xx(a, now, &hc)
	}
	require.Equal(t, now+2*int64(hc.BaseEjection), a.health.ejectedUntil.Load())

	// Capped at MaxEjection.
	for k := 0; k < 200; k++ {
		now = a.health.ejectedUntil.Load()
		for i := 0; i < 3; i++ {
			st.report5xx(a, now, &hc)
		}
	}
	require.Equal(t, now+int64(hc.MaxEjection), a.health.ejectedUntil.Load())

	// Serving well for a base ejection after coming back forgives the history.
	now = a.health.ejectedUntil.Load() + int64(hc.BaseEjection) + 1
	st.reportSuccess(a, now, hc.BaseEjection)
	require.Zero(t, a.health.ejections.Load())
}

func TestHealth_neverEjectsMoreThanMaxPercent(t *testing.T) {
	hc := DefaultConfig().Health
	hc.ConsecutiveConnectFailures = 1
	hc.MaxEjectionPercent = 50
	ps := fakePool(PolicyLeastRequest, 1, 1, 1, 1, 1)
	st := ps.state
	ejected := 0
	for i := range ps.members {
		if st.reportFailure(ps.members[i].b, 1, &hc) {
			ejected++
		}
	}
	require.Equal(t, 2, ejected, "floor(50%% of 5)")
	// Whatever happens, the pool keeps serving from the others.
	for i := 0; i < 20; i++ {
		be := ps.picker.pick(1, nil)
		require.False(t, be.health.ejected(1))
	}

	// A one-backend pool is never ejected: a client provoking errors cannot
	// empty it.
	one := fakePool(PolicyLeastRequest, 1)
	for i := 0; i < 10; i++ {
		require.False(t, one.state.reportFailure(one.members[0].b, 1, &hc))
	}
	require.NotNil(t, one.picker.pick(1, nil))
}

func TestRetryBudget_isShareOfActiveWithMinimum(t *testing.T) {
	require.True(t, retryAllowed(0, 0, 20, 3))
	require.True(t, retryAllowed(1, 2, 20, 3))
	require.False(t, retryAllowed(1, 3, 20, 3), "minimum concurrency of 3")
	require.True(t, retryAllowed(100, 19, 20, 3))
	require.False(t, retryAllowed(100, 20, 20, 3), "20%% of 100 in flight")
	require.False(t, retryAllowed(100, 0, 0, 0), "budget 0 disables retries")
}

func TestRetryBudget_concurrentReservationsNeverOverrunIt(t *testing.T) {
	var st poolState
	st.active.Store(100) // 20% of 100: 20 retries in flight at most
	const workers = 64
	var granted atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for j := 0; j < 10; j++ {
				if st.reserveRetry(20, 3) {
					granted.Add(1)
				}
			}
		}()
	}
	close(start)
	wg.Wait()
	require.Equal(t, int64(20), granted.Load())
	require.Equal(t, int64(20), st.retries.Load())
	st.retries.Add(-1)
	require.True(t, st.reserveRetry(20, 3), "a released slot can be taken again")
}

func TestRouter_hostsAndPrefixes(t *testing.T) {
	tbl := &Table{Pools: []Pool{
		{Name: "a", Hosts: []string{"Example.com"}, Backends: nil},
		{Name: "b", Hosts: []string{"example.com"}, PathPrefix: "/api"},
		{Name: "c", Hosts: []string{"*.example.com"}},
		{Name: "d", Hosts: []string{"*"}, PathPrefix: "/static/"},
		{Name: "e", Hosts: []string{"*"}},
	}}
	require.NoError(t, tbl.Validate())
	b, err := New(testConfig(t))
	require.NoError(t, err)
	require.NoError(t, b.Apply(tbl))
	r := b.snap.Load().router
	name := func(host, target string) string {
		ps := r.lookup([]byte(host), []byte(target))
		if ps == nil {
			return ""
		}
		return ps.state.name
	}
	require.Equal(t, "a", name("example.com", "/"))
	require.Equal(t, "a", name("EXAMPLE.COM:8080", "/x"))
	require.Equal(t, "a", name("example.com.", "/x"))
	require.Equal(t, "b", name("example.com", "/api"))
	require.Equal(t, "b", name("example.com", "/api/v1?q"))
	require.Equal(t, "b", name("example.com", "/api?q"))
	require.Equal(t, "a", name("example.com", "/apix"), "prefixes match at segment boundaries")
	require.Equal(t, "c", name("www.example.com", "/"))
	require.Equal(t, "c", name("a.b.example.com", "/"))
	require.Equal(t, "d", name("other.org", "/static/x.css"))
	require.Equal(t, "e", name("other.org", "/static"))
	require.Equal(t, "e", name("", "/"))
}
