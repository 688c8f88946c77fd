package balancer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// holdTable is one pool, "web", for any host, holding requests for hold
// while it has no backend.
func holdTable(idx uint64, hold time.Duration, addrs ...string) *Table {
	t := oneTable(idx, PolicyRoundRobin, addrs...)
	t.Pools[0].HoldWhenEmpty = hold
	return t
}

// poolStats returns the counters of the pool named name in the table in force.
func poolStats(t *testing.T, b *Balancer, name string) PoolStats {
	t.Helper()
	for _, p := range b.PoolStats() {
		if p.Pool == name {
			return p
		}
	}
	t.Fatalf("no pool %q in %v", name, b.PoolStats())
	return PoolStats{}
}

// answer is how a request sent by send ended.
type answer struct {
	code    int
	body    string
	err     error
	elapsed time.Duration
}

// send runs req with c in the background.
func send(c *http.Client, req *http.Request) <-chan answer {
	ch := make(chan answer, 1)
	start := time.Now()
	go func() {
		resp, err := c.Do(req)
		if err != nil {
			ch <- answer{err: err, elapsed: time.Since(start)}
			return
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		ch <- answer{code: resp.StatusCode, body: string(body), err: err, elapsed: time.Since(start)}
	}()
	return ch
}

func sendGet(t *testing.T, c *http.Client, url string) <-chan answer {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	require.NoError(t, err)
	return send(c, req)
}

func await(t *testing.T, ch <-chan answer, within time.Duration) answer {
	t.Helper()
	select {
	case a := <-ch:
		return a
	case <-time.After(within):
		t.Fatalf("no answer within %v", within)
		return answer{}
	}
}

// requireWaiting waits until the pool has n requests held.
func requireWaiting(t *testing.T, b *Balancer, pool string, n int64) {
	t.Helper()
	require.Eventually(t, func() bool { return poolStats(t, b, pool).Waiting == n }, 10*time.Second, 2*time.Millisecond,
		"waiting for %d held requests in %s: %+v", n, pool, b.PoolStats())
}

func requireUnanswered(t *testing.T, ch <-chan answer) {
	t.Helper()
	select {
	case a := <-ch:
		t.Fatalf("answered while held: %+v", a)
	default:
	}
}

func TestHold_requestWaitsForABackendAndIsServedByIt(t *testing.T) {
	b, addr := startBalancer(t, testConfig(t), holdTable(1, time.Minute))
	c := testClient(t, 2)
	select {
	case <-b.Held():
		t.Fatal("Held signalled before any request")
	default:
	}

	ch := sendGet(t, c, "http://"+addr+"/x")
	requireWaiting(t, b, "web", 1)
	select {
	case <-b.Held():
	case <-time.After(10 * time.Second):
		t.Fatal("Held not signalled for a held request")
	}
	requireUnanswered(t, ch)
	require.Equal(t, uint64(1), poolStats(t, b, "web").Unserved)

	be := startBackend(t, nameHandler("b1"))
	require.NoError(t, b.Apply(holdTable(2, time.Minute, be.addr)))
	a := await(t, ch, 10*time.Second)
	require.NoError(t, a.err)
	require.Equal(t, 200, a.code)
	require.Equal(t, "b1", a.body)
	require.Equal(t, PoolStats{Pool: "web", Unserved: 1, Held: HeldCounts{Served: 1}}, poolStats(t, b, "web"))

	// With a backend, requests go straight to it and are not counted.
	a = await(t, sendGet(t, c, "http://"+addr+"/y"), 10*time.Second)
	require.Equal(t, 200, a.code)
	require.Equal(t, PoolStats{Pool: "web", Unserved: 1, Held: HeldCounts{Served: 1}}, poolStats(t, b, "web"))
	require.Equal(t, int64(2), be.hits.Load())
}

func TestHold_beyondMaxHeldPerPoolAnswers503AtOnce(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxHeldPerPool = 2
	b, addr := startBalancer(t, cfg, holdTable(1, time.Minute))
	c := testClient(t, 4)
	held := []<-chan answer{sendGet(t, c, "http://"+addr+"/1"), sendGet(t, c, "http://"+addr+"/2")}
	requireWaiting(t, b, "web", 2)

	a := await(t, sendGet(t, c, "http://"+addr+"/3"), 10*time.Second)
	require.NoError(t, a.err)
	require.Equal(t, 503, a.code, "a third request while two are held")
	require.Equal(t, PoolStats{Pool: "web", Waiting: 2, Unserved: 3}, poolStats(t, b, "web"))

	be := startBackend(t, nameHandler("b1"))
	require.NoError(t, b.Apply(holdTable(2, time.Minute, be.addr)))
	for _, ch := range held {
		a := await(t, ch, 10*time.Second)
		require.NoError(t, a.err)
		require.Equal(t, 200, a.code)
	}
	require.Equal(t, PoolStats{Pool: "web", Unserved: 3, Held: HeldCounts{Served: 2}}, poolStats(t, b, "web"))
}

func TestHold_answers503OnceTheHoldHasPassed(t *testing.T) {
	const hold = 300 * time.Millisecond
	b, addr := startBalancer(t, testConfig(t), holdTable(1, hold))
	a := await(t, sendGet(t, testClient(t, 1), "http://"+addr+"/"), 10*time.Second)
	require.NoError(t, a.err)
	require.Equal(t, 503, a.code)
	require.GreaterOrEqual(t, a.elapsed, hold)
	require.Less(t, a.elapsed, hold+2*time.Second)
	require.Equal(t, PoolStats{Pool: "web", Unserved: 1, Held: HeldCounts{TimedOut: 1}}, poolStats(t, b, "web"))
	require.Equal(t, uint64(1), b.Counters().LocalReplies[503])
}

func TestHold_withoutHoldAnswers503AtOnceAndCountsUnserved(t *testing.T) {
	be := startBackend(t, nameHandler("b1"))
	tbl := holdTable(1, 0)
	// A pool whose backends all drain has none to take a request either.
	tbl.Pools = append(tbl.Pools, Pool{Name: "drained", Hosts: []string{"drained.example"},
		Backends: []Backend{{Address: be.addr, Draining: true}}})
	b, addr := startBalancer(t, testConfig(t), tbl)
	c := testClient(t, 1)

	a := await(t, sendGet(t, c, "http://"+addr+"/"), 10*time.Second)
	require.Equal(t, 503, a.code)
	require.Less(t, a.elapsed, 2*time.Second)
	req, err := http.NewRequest("GET", "http://"+addr+"/", nil)
	require.NoError(t, err)
	req.Host = "drained.example"
	a = await(t, send(c, req), 10*time.Second)
	require.Equal(t, 503, a.code)

	require.Equal(t, []PoolStats{{Pool: "drained", Unserved: 1}, {Pool: "web", Unserved: 1}}, b.PoolStats())
	select {
	case <-b.Held():
		t.Fatal("Held signalled without a hold")
	default:
	}
	require.Zero(t, be.hits.Load())
}

func TestHold_noHoldWhenARetryFindsNoOtherBackend(t *testing.T) {
	// The pool has a backend, which fails: the retry finds no other one,
	// and that is a 502 at once, not a wait for a backend.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	deadAddr := dead.Addr().String()
	dead.Close()
	b, addr := startBalancer(t, testConfig(t), holdTable(1, time.Minute, deadAddr))
	a := await(t, sendGet(t, testClient(t, 1), "http://"+addr+"/"), 10*time.Second)
	require.Equal(t, 502, a.code)
	require.Less(t, a.elapsed, 5*time.Second)
	require.Equal(t, PoolStats{Pool: "web"}, poolStats(t, b, "web"))
}

func TestHold_routeGoneWhileHeldAnswers404AtOnce(t *testing.T) {
	// Each table is judged as if the request arrived with it: a table that
	// no longer routes it answers what a new request gets, 404, rather than
	// keeping the client waiting for a pool that is gone.
	b, addr := startBalancer(t, testConfig(t), holdTable(1, time.Minute))
	c := testClient(t, 2)

	// The pool stays but no longer serves the request's host.
	ch := sendGet(t, c, "http://"+addr+"/")
	requireWaiting(t, b, "web", 1)
	moved := holdTable(2, time.Minute)
	moved.Pools[0].Hosts = []string{"elsewhere.example"}
	require.NoError(t, b.Apply(moved))
	a := await(t, ch, 10*time.Second)
	require.Equal(t, 404, a.code)
	require.Equal(t, PoolStats{Pool: "web", Unserved: 1, Held: HeldCounts{Removed: 1}}, poolStats(t, b, "web"))

	// The pool leaves the table.
	require.NoError(t, b.Apply(holdTable(3, time.Minute)))
	ch = sendGet(t, c, "http://"+addr+"/")
	requireWaiting(t, b, "web", 1)
	require.NoError(t, b.Apply(&Table{Version: Version{Term: 1, Index: 4},
		Pools: []Pool{{Name: "other", Hosts: []string{"other.example"}, HoldWhenEmpty: time.Minute}}}))
	a = await(t, ch, 10*time.Second)
	require.Equal(t, 404, a.code)
	require.Less(t, a.elapsed, 10*time.Second, "well before the hold of a minute")
	require.Equal(t, []PoolStats{{Pool: "other"}}, b.PoolStats())
	require.Equal(t, uint64(2), b.Counters().LocalReplies[404])
}

func TestHold_requestFollowsItsRouteToAnotherPool(t *testing.T) {
	b, addr := startBalancer(t, testConfig(t), holdTable(1, time.Minute))
	ch := sendGet(t, testClient(t, 1), "http://"+addr+"/")
	requireWaiting(t, b, "web", 1)
	select {
	case <-b.Held():
	case <-time.After(10 * time.Second):
		t.Fatal("Held not signalled for a held request")
	}

	// Pool "web" gives way to "next", which has no backend either: the
	// request waits on its account now.
	next := func(idx uint64, addrs ...string) *Table {
		t := holdTable(idx, time.Minute, addrs...)
		t.Pools[0].Name = "next"
		return t
	}
	require.NoError(t, b.Apply(next(2)))
	requireWaiting(t, b, "next", 1)
	require.Equal(t, uint64(1), poolStats(t, b, "next").Unserved)
	select {
	case <-b.Held():
	case <-time.After(10 * time.Second):
		t.Fatal("Held not signalled for the pool that took the request")
	}
	requireUnanswered(t, ch)

	be := startBackend(t, nameHandler("next"))
	require.NoError(t, b.Apply(next(3, be.addr)))
	a := await(t, ch, 10*time.Second)
	require.Equal(t, 200, a.code)
	require.Equal(t, "next", a.body)
	require.Equal(t, PoolStats{Pool: "next", Unserved: 1, Held: HeldCounts{Served: 1}}, poolStats(t, b, "next"))
}

func TestHold_aShorterHoldInANewTableCountsFromTheStartOfTheWait(t *testing.T) {
	b, addr := startBalancer(t, testConfig(t), holdTable(1, time.Minute))
	ch := sendGet(t, testClient(t, 1), "http://"+addr+"/")
	requireWaiting(t, b, "web", 1)
	// Once the pool holds for no time at all, the wait is over.
	require.NoError(t, b.Apply(holdTable(2, 0)))
	a := await(t, ch, 10*time.Second)
	require.Equal(t, 503, a.code)
	require.Equal(t, PoolStats{Pool: "web", Unserved: 1, Held: HeldCounts{TimedOut: 1}}, poolStats(t, b, "web"))
}

func TestHold_poolWithOnlyDrainingBackendsHolds(t *testing.T) {
	be := startBackend(t, nameHandler("b1"))
	tbl := holdTable(1, time.Minute, be.addr)
	tbl.Pools[0].Backends[0].Draining = true
	b, addr := startBalancer(t, testConfig(t), tbl)
	ch := sendGet(t, testClient(t, 1), "http://"+addr+"/")
	requireWaiting(t, b, "web", 1)
	require.NoError(t, b.Apply(holdTable(2, time.Minute, be.addr)))
	a := await(t, ch, 10*time.Second)
	require.Equal(t, 200, a.code)
	require.Equal(t, "b1", a.body)
}

func TestHold_heldRequestIsRetriedLikeAnyOther(t *testing.T) {
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	deadAddr := dead.Addr().String()
	dead.Close()
	live := startBackend(t, nameHandler("live"))
	cfg := testConfig(t)
	cfg.Health.ConsecutiveConnectFailures = 0
	b, addr := startBalancer(t, cfg, holdTable(1, time.Minute))
	ch := sendGet(t, testClient(t, 1), "http://"+addr+"/")
	requireWaiting(t, b, "web", 1)
	// Round robin picks the first backend first: the dead one.
	require.NoError(t, b.Apply(holdTable(2, time.Minute, deadAddr, live.addr)))
	a := await(t, ch, 10*time.Second)
	require.Equal(t, 200, a.code)
	require.Equal(t, "live", a.body)
	require.Equal(t, uint64(1), b.Counters().Retries)
}

func TestHold_heldPostsReachTheBackendWithTheirWholeBody(t *testing.T) {
	be := startBackend(t, http.HandlerFunc(writeBodyDigest))
	b, addr := startBalancer(t, testConfig(t), holdTable(1, time.Minute))
	c := testClient(t, 3)
	small := []byte("hello, held world")
	// Larger than the read buffer and than socket buffers: it streams once
	// the request is sent, and the client is blocked writing it meanwhile.
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<17)
	want := func(body []byte) string {
		s := sha256.Sum256(body)
		return fmt.Sprintf("%d %s", len(body), hex.EncodeToString(s[:]))
	}
	post := func(body []byte, chunked bool) <-chan answer {
		var r io.Reader = bytes.NewReader(body)
		if chunked {
			r = io.MultiReader(r) // unknown length: sent chunked
		}
		req, err := http.NewRequest("POST", "http://"+addr+"/upload", r)
		require.NoError(t, err)
		return send(c, req)
	}
	chSmall, chBig, chChunked := post(small, false), post(big, false), post(big, true)
	requireWaiting(t, b, "web", 3)
	require.Zero(t, be.hits.Load())

	require.NoError(t, b.Apply(holdTable(2, time.Minute, be.addr)))
	for ch, body := range map[<-chan answer][]byte{chSmall: small, chBig: big, chChunked: big} {
		a := await(t, ch, 20*time.Second)
		require.NoError(t, a.err)
		require.Equal(t, 200, a.code)
		require.Equal(t, want(body), a.body)
	}
	require.Equal(t, PoolStats{Pool: "web", Unserved: 3, Held: HeldCounts{Served: 3}}, poolStats(t, b, "web"))
}

func TestHold_shutdownAnswersHeldRequestsAtOnce(t *testing.T) {
	cfg := testConfig(t)
	// Far longer than the test waits: held requests must not be what
	// shutdown waits for.
	cfg.ShutdownTimeout = time.Minute
	b, err := New(cfg)
	require.NoError(t, err)
	require.NoError(t, b.Apply(holdTable(1, time.Minute)))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- b.Serve(ctx, ln) }()

	c := testClient(t, 2)
	ch1 := sendGet(t, c, "http://"+ln.Addr().String()+"/")
	ch2 := sendGet(t, c, "http://"+ln.Addr().String()+"/")
	requireWaiting(t, b, "web", 2)
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Serve waited for held requests")
	}
	for _, ch := range []<-chan answer{ch1, ch2} {
		a := await(t, ch, 10*time.Second)
		if a.err == nil {
			require.Equal(t, 503, a.code)
		}
	}
	require.Equal(t, PoolStats{Pool: "web", Unserved: 2, Held: HeldCounts{Closed: 2}}, poolStats(t, b, "web"))
}

// A client that gives up on a held request frees its place: the request is
// dropped, no longer waits, and never reaches a backend.
func TestHold_clientGoneWhileHeldIsDroppedAndFreesItsPlace(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxHeldPerPool = 1
	b, addr := startBalancer(t, cfg, holdTable(1, time.Minute))
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	_, err = conn.Write([]byte("GET /gone HTTP/1.1\r\nHost: example.com\r\n\r\n"))
	require.NoError(t, err)
	requireWaiting(t, b, "web", 1)
	require.NoError(t, conn.Close())
	requireWaiting(t, b, "web", 0)
	require.Equal(t, PoolStats{Pool: "web", Unserved: 1, Held: HeldCounts{Gone: 1}}, poolStats(t, b, "web"))

	// Its place under -max-held is free again: the next request waits.
	c := testClient(t, 1)
	ch := sendGet(t, c, "http://"+addr+"/next")
	requireWaiting(t, b, "web", 1)
	be := startBackend(t, nameHandler("b1"))
	require.NoError(t, b.Apply(holdTable(2, time.Minute, be.addr)))
	a := await(t, ch, 10*time.Second)
	require.NoError(t, a.err)
	require.Equal(t, 200, a.code)
	require.Equal(t, int64(1), be.hits.Load(), "the dropped request never reached the backend")
	require.Equal(t, PoolStats{Pool: "web", Unserved: 2, Held: HeldCounts{Served: 1, Gone: 1}}, poolStats(t, b, "web"))
}
