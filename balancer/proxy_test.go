package balancer

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestProxy_getAndPostRoundTrip(t *testing.T) {
	be := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s len=%d te=%v", r.Method, r.URL.RequestURI(), r.Host, len(body), r.TransferEncoding)
	}))
	_, addr := startBalancer(t, testConfig(t), oneTable(1, "", be.addr))
	c := testClient(t, 2)

	resp, err := c.Get("http://" + addr + "/a/b?x=1")
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, "GET /a/b?x=1 "+addr+" len=0 te=[]", string(b))

	resp, err = c.Post("http://"+addr+"/p", "text/plain", strings.NewReader("hello"))
	require.NoError(t, err)
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, "POST /p "+addr+" len=5 te=[]", string(b))

	// Unknown length: the client sends chunked, the balancer re-chunks.
	big := bytes.Repeat([]byte("x"), 300<<10)
	resp, err = c.Post("http://"+addr+"/c", "text/plain", io.MultiReader(bytes.NewReader(big)))
	require.NoError(t, err)
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, fmt.Sprintf("POST /c %s len=%d te=[chunked]", addr, len(big)), string(b))
}

// load sends GETs from workers goroutines until stop is closed or limit
// requests were sent, and counts outcomes.
type loadResult struct {
	ok, failed atomic.Int64
	firstErr   atomic.Value
}

func runLoad(t *testing.T, addr string, workers, limit int, stop <-chan struct{}) *loadResult {
	t.Helper()
	c := testClient(t, workers)
	res := &loadResult{}
	var wg sync.WaitGroup
	var sent atomic.Int64
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for sent.Add(1) <= int64(limit) {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := c.Get("http://" + addr + "/load")
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != 200 {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				if err != nil {
					res.failed.Add(1)
					res.firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				res.ok.Add(1)
			}
		}()
	}
	wg.Wait()
	return res
}

func TestProxy_retriesIdempotentRequestOnConnectFailure(t *testing.T) {
	be := startBackend(t, nameHandler("live"))
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	deadAddr := dead.Addr().String()
	dead.Close()
	cfg := testConfig(t)
	cfg.Health.ConsecutiveConnectFailures = 0 // keep the dead backend in rotation
	b, addr := startBalancer(t, cfg, oneTable(1, PolicyRoundRobin, deadAddr, be.addr))
	c := testClient(t, 1)
	for i := 0; i < 20; i++ {
		resp, err := c.Get("http://" + addr + "/")
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, 200, resp.StatusCode)
		require.Equal(t, "live", string(body))
	}
	require.GreaterOrEqual(t, b.Counters().Retries, uint64(10))
	// Even a POST is retried when its connect failed: nothing was sent.
	resp, err := c.Post("http://"+addr+"/", "text/plain", strings.NewReader("x"))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
}

func TestProxy_postNotRetriedAfterBodySent(t *testing.T) {
	// Both backends read the whole request, then drop the connection without
	// answering.
	var hits atomic.Int64
	drop := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		io.Copy(io.Discard, r.Body)
		c, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			c.Close()
		}
	})
	b1, b2 := startBackend(t, drop), startBackend(t, drop)
	cfg := testConfig(t)
	cfg.Health.ConsecutiveConnectFailures = 0
	_, addr := startBalancer(t, cfg, oneTable(1, "", b1.addr, b2.addr))
	c := testClient(t, 1)

	for _, body := range []io.Reader{strings.NewReader("small body"), io.MultiReader(strings.NewReader("streamed body"))} {
		hits.Store(0)
		resp, err := c.Post("http://"+addr+"/", "text/plain", body)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, 502, resp.StatusCode)
		require.EqualValues(t, 1, hits.Load(), "a POST is sent once")
	}

	// A GET reset before any response byte is tried once more elsewhere.
	hits.Store(0)
	resp, err := c.Get("http://" + addr + "/")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 502, resp.StatusCode)
	require.EqualValues(t, 2, hits.Load())
}

func TestProxy_backendKilledUnderLoadFailsUnderOnePermille(t *testing.T) {
	var bs []*testBackend
	var addrs []string
	for i := 0; i < 3; i++ {
		be := startBackend(t, nameHandler(fmt.Sprint(i)))
		bs = append(bs, be)
		addrs = append(addrs, be.addr)
	}
	b, addr := startBalancer(t, testConfig(t), oneTable(1, "", addrs...))
	stop := make(chan struct{})
	go func() {
		defer close(stop)
		// Kill one backend once load is flowing through all of them.
		if !assert.Eventually(t, func() bool { return bs[0].hits.Load() > 300 }, 10*time.Second, time.Millisecond) {
			return
		}
		bs[0].kill()
		hits := bs[1].hits.Load() + bs[2].hits.Load()
		assert.Eventually(t, func() bool { return bs[1].hits.Load()+bs[2].hits.Load() > hits+3000 }, 10*time.Second, time.Millisecond)
	}()
	res := runLoad(t, addr, 16, 200000, stop)
	total := res.ok.Load() + res.failed.Load()
	t.Logf("requests %d, failed %d (%v), retries %d, ejections %d", total, res.failed.Load(), res.firstErr.Load(), b.Counters().Retries, b.Counters().Ejections)
	require.Greater(t, total, int64(3000))
	require.Less(t, res.failed.Load()*1000, total, "under 0.1%% of requests fail")
	require.GreaterOrEqual(t, b.Counters().Ejections, uint64(1))
}

func TestProxy_backendRemovedUnderLoadFailsNone(t *testing.T) {
	slowStarted := make(chan struct{}, 1)
	release := make(chan struct{})
	var bs []*testBackend
	var addrs []string
	for i := 0; i < 3; i++ {
		name := fmt.Sprint(i)
		be := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				slowStarted <- struct{}{}
				<-release
			}
			io.WriteString(w, name)
		}))
		bs = append(bs, be)
		addrs = append(addrs, be.addr)
	}
	b, addr := startBalancer(t, testConfig(t), oneTable(1, PolicyRoundRobin, addrs...))

	// A long request in flight on the backend about to be removed.
	slowDone := make(chan string, 1)
	go func() {
		c := testClient(t, 1)
		for {
			resp, err := c.Get("http://" + addr + "/slow")
			if err != nil {
				slowDone <- err.Error()
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) == "0" {
				slowDone <- "0"
				return
			}
		}
	}()
	// Requests landing elsewhere are released at once.
	go func() {
		for range slowStarted {
			if bs[0].hits.Load() > 0 {
				return
			}
			release <- struct{}{}
		}
	}()
	require.Eventually(t, func() bool { return bs[0].hits.Load() > 0 }, 5*time.Second, time.Millisecond)

	stop := make(chan struct{})
	var removedHits, laterHits atomic.Int64
	go func() {
		defer close(stop)
		progress := func(n int64) bool {
			hits := bs[1].hits.Load() + bs[2].hits.Load()
			return assert.Eventually(t, func() bool { return bs[1].hits.Load()+bs[2].hits.Load() > hits+n }, 10*time.Second, time.Millisecond)
		}
		if !assert.Eventually(t, func() bool { return bs[0].hits.Load() > 300 }, 10*time.Second, time.Millisecond) {
			return
		}
		assert.NoError(t, b.Apply(oneTable(2, PolicyRoundRobin, addrs[1:]...)))
		// Requests that picked the backend before the update still reach it.
		if !progress(200) {
			return
		}
		removedHits.Store(bs[0].hits.Load())
		progress(2000)
		laterHits.Store(bs[0].hits.Load())
	}()
	res := runLoad(t, addr, 16, 200000, stop)
	require.Zero(t, res.failed.Load(), "first error: %v", res.firstErr.Load())
	require.Greater(t, res.ok.Load(), int64(2000))
	require.Equal(t, removedHits.Load(), laterHits.Load(), "no new request reaches a removed backend")

	// The request in flight on the removed backend completes.
	close(release)
	select {
	case got := <-slowDone:
		require.Equal(t, "0", got)
	case <-time.After(10 * time.Second):
		t.Fatal("in-flight request on the removed backend did not complete")
	}
	// Its connections close once idle.
	require.Eventually(t, func() bool { return bs[0].openConns() == 0 }, 5*time.Second, 10*time.Millisecond)
}

func TestProxy_tableUpdatesKeepConnectionsToStayingBackends(t *testing.T) {
	be := startBackend(t, nameHandler("a"))
	other := startBackend(t, nameHandler("b"))
	b, addr := startBalancer(t, testConfig(t), oneTable(1, "", be.addr))
	c := testClient(t, 1)
	get := func() {
		resp, err := c.Get("http://" + addr + "/")
		require.NoError(t, err)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		require.Equal(t, 200, resp.StatusCode)
	}
	get()
	require.EqualValues(t, 1, be.accepted.Load())
	for i := uint64(2); i < 60; i++ {
		tbl := oneTable(i, "", be.addr)
		tbl.Pools[0].Backends[0].Weight = int(i)
		switch i % 3 {
		case 0:
			tbl.Pools[0].Backends = append(tbl.Pools[0].Backends, Backend{Address: other.addr, Draining: true})
		case 1:
			tbl.Pools[0].Policy = PolicyRoundRobin
			tbl.Pools = append(tbl.Pools, Pool{Name: "other", Hosts: []string{"other.example"},
				Backends: []Backend{{Address: other.addr}}})
		}
		require.NoError(t, b.Apply(tbl))
		get()
	}
	require.EqualValues(t, 1, be.accepted.Load(), "sequential requests reused one backend connection across every update")
	require.Equal(t, 1, be.openConns())
}

func TestProxy_xForwardedHeaders(t *testing.T) {
	be := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "xff=%q proto=%q host=%q", strings.Join(r.Header.Values("X-Forwarded-For"), "|"),
			r.Header.Get("X-Forwarded-Proto"), r.Header.Get("X-Forwarded-Host"))
	}))
	send := func(addr string) string {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		defer c.Close()
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: app.example\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		return string(body)
	}

	_, untrusted := startBalancer(t, testConfig(t), oneTable(1, "", be.addr))
	require.Equal(t, `xff="127.0.0.1" proto="http" host="app.example"`, send(untrusted),
		"a spoofed X-Forwarded-* from an untrusted peer never reaches the backend")

	cfg := testConfig(t)
	cfg.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	_, trusted := startBalancer(t, cfg, oneTable(1, "", be.addr))
	require.Equal(t, `xff="6.6.6.6, 7.7.7.7, 127.0.0.1" proto="https" host="evil.example"`, send(trusted),
		"a trusted proxy's X-Forwarded-For is extended")
}

func TestProxy_stripsHopByHopHeaders(t *testing.T) {
	be := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var got []string
		for _, h := range []string{"Connection", "Keep-Alive", "Te", "X-Private", "Proxy-Authorization", "Upgrade", "X-Kept"} {
			if v := r.Header.Get(h); v != "" {
				got = append(got, h+"="+v)
			}
		}
		w.Header().Set("Connection", "X-Resp-Private")
		w.Header().Set("X-Resp-Private", "1")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("X-Resp-Kept", "1")
		io.WriteString(w, strings.Join(got, ","))
	}))
	_, addr := startBalancer(t, testConfig(t), oneTable(1, "", be.addr))
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Private\r\nKeep-Alive: 300\r\nTE: trailers\r\nX-Private: secret\r\nProxy-Authorization: Basic eA==\r\nUpgrade: h2c\r\nX-Kept: yes\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	require.Equal(t, "X-Kept=yes", string(body))
	require.Empty(t, resp.Header.Get("X-Resp-Private"))
	require.Empty(t, resp.Header.Get("Keep-Alive"))
	require.Empty(t, resp.Header.Get("Connection"))
	require.Equal(t, "1", resp.Header.Get("X-Resp-Kept"))
}

func TestProxy_postAvoidsPooledConnectionTheBackendClosed(t *testing.T) {
	// The backend closes each connection right after its response, without
	// saying so: the pooled connection is dead by the next request.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var served atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			req, err := http.ReadRequest(bufio.NewReader(c))
			if err == nil {
				io.Copy(io.Discard, req.Body)
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}
			c.Close()
			served.Add(1)
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	_, addr := startBalancer(t, testConfig(t), oneTable(1, "", ln.Addr().String()))
	c := testClient(t, 1)
	for i := 0; i < 20; i++ {
		resp, err := c.Post("http://"+addr+"/", "text/plain", strings.NewReader("payload"))
		require.NoError(t, err)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		require.Equal(t, 200, resp.StatusCode, "request %d", i)
		// A GET on a dead pooled connection is sent again on a fresh one,
		// to the same (only) backend.
		if i%2 == 1 {
			require.Eventually(t, func() bool { return served.Load() == int64(i+1) }, 5*time.Second, time.Millisecond)
			resp, err := c.Get("http://" + addr + "/")
			require.NoError(t, err)
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			require.Equal(t, 200, resp.StatusCode, "GET after request %d", i)
			served.Add(-1)
		}
		// Let the backend's close reach the pooled connection.
		require.Eventually(t, func() bool { return served.Load() == int64(i+1) }, 5*time.Second, time.Millisecond)
	}
}

func TestProxy_drainingBackendTakesNoNewRequestsAndFinishesInFlight(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	a := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			started <- struct{}{}
			<-release
		}
		io.WriteString(w, "a")
	}))
	bb := startBackend(t, nameHandler("b"))
	b, addr := startBalancer(t, testConfig(t), oneTable(1, "", a.addr))
	slow := make(chan string, 1)
	go func() {
		resp, err := testClient(t, 1).Get("http://" + addr + "/slow")
		if err != nil {
			slow <- err.Error()
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		slow <- string(body)
	}()
	<-started
	tbl := oneTable(2, "", a.addr, bb.addr)
	tbl.Pools[0].Backends[0].Draining = true
	require.NoError(t, b.Apply(tbl))
	c := testClient(t, 2)
	for i := 0; i < 50; i++ {
		resp, err := c.Get("http://" + addr + "/")
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, "b", string(body))
	}
	close(release)
	require.Equal(t, "a", <-slow)
	st := b.Stats()
	require.True(t, st[0].Draining || st[1].Draining)
}

func TestProxy_retriesStopWhenTheBudgetIsSpent(t *testing.T) {
	live := startBackend(t, nameHandler("live"))
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	deadAddr := dead.Addr().String()
	dead.Close()
	cfg := testConfig(t)
	cfg.Health.ConsecutiveConnectFailures = 0
	cfg.Retry.MinConcurrent = 0
	// get sends one GET with no other request of the pool in flight. The
	// balancer releases a request's budget after its response is written,
	// so the client can see the response first; and the client drops the
	// connection (the body is not read), so the next request may run on
	// another connection before that release. Waiting for it keeps the
	// previous request out of the next one's budget.
	get := func(st *poolState, addr string, c *http.Client) int {
		t.Helper()
		resp, err := c.Get("http://" + addr + "/")
		require.NoError(t, err)
		resp.Body.Close()
		require.Eventually(t, func() bool { return st.active.Load() == 0 && st.retries.Load() == 0 },
			5*time.Second, time.Millisecond, "request and retries in flight are released")
		return resp.StatusCode
	}
	b, addr := startBalancer(t, cfg, oneTable(1, PolicyRoundRobin, deadAddr, live.addr))
	st := b.snap.Load().pools[0].state
	c := testClient(t, 1)
	codes := map[int]int{}
	for i := 0; i < 10; i++ {
		codes[get(st, addr, c)]++
	}
	// With no other request in flight, 20% of one request allows no retry
	// once the minimum is 0: the requests that hit the dead backend fail.
	require.Equal(t, 5, codes[502], "%v", codes)
	require.Equal(t, 5, codes[200], "%v", codes)
	require.Zero(t, b.counters.retries.Load())

	// Raising the floor lets them through again.
	cfg.Retry.MinConcurrent = 1
	b, addr = startBalancer(t, cfg, oneTable(1, PolicyRoundRobin, deadAddr, live.addr))
	st = b.snap.Load().pools[0].state
	for i := 0; i < 10; i++ {
		require.Equal(t, 200, get(st, addr, c), "request %d", i)
	}
	require.Equal(t, uint64(5), b.counters.retries.Load(), "the dead backend's requests were retried")
}

// TestServe_maxConnsMakesNewConnectionsWait: at MaxConns open client
// connections the balancer accepts no more; a new one waits, unanswered,
// until an open one closes, and is then served.
func TestServe_maxConnsMakesNewConnectionsWait(t *testing.T) {
	be := startBackend(t, nameHandler("a"))
	cfg := testConfig(t)
	cfg.MaxConns = 2
	b, addr := startBalancer(t, cfg, oneTable(1, "", be.addr))
	const request = "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
	open := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		_, err = io.WriteString(c, request)
		require.NoError(t, err)
		return c, bufio.NewReader(c)
	}
	answered := func(c net.Conn, r *bufio.Reader, within time.Duration) error {
		_ = c.SetReadDeadline(time.Now().Add(within))
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.Body.Close()
	}
	c1, r1 := open()
	require.NoError(t, answered(c1, r1, 5*time.Second))
	c2, r2 := open()
	require.NoError(t, answered(c2, r2, 5*time.Second))
	c3, r3 := open() // the kernel completes the handshake; the balancer waits
	err := answered(c3, r3, 300*time.Millisecond)
	require.True(t, isTimeout(err), "a third connection answered at MaxConns 2: %v", err)
	require.EqualValues(t, 1, b.Counters().LimitWaits)
	require.EqualValues(t, 2, b.Counters().OpenConnections)

	c1.Close()
	require.NoError(t, answered(c3, r3, 5*time.Second), "served once a connection closed")
	require.EqualValues(t, 2, b.Counters().OpenConnections)
}
