package balancer

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hostscale/hostscale/balancer/internal/wstest"
)

// rawExchange writes raw bytes and returns what the balancer answers until it
// closes the connection or the deadline passes.
func rawExchange(t *testing.T, addr, raw string, deadline time.Duration) (string, bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(deadline))
	io.WriteString(c, raw)
	out, err := io.ReadAll(c)
	closed := err == nil
	return string(out), closed
}

func statusOf(s string) int {
	if len(s) < 12 {
		return 0
	}
	n, _ := strconv.Atoi(s[9:12])
	return n
}

func TestProxy_malformedRequestsGet4xxAndOthersUnaffected(t *testing.T) {
	be := startBackend(t, nameHandler("ok"))
	cfg := testConfig(t)
	cfg.HeaderTimeout = 1500 * time.Millisecond
	_, addr := startBalancer(t, cfg, oneTable(1, "", be.addr))

	// A well-behaved client keeps one connection busy the whole time.
	stop := make(chan struct{})
	var good, bad atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c := testClient(t, 1)
		for {
			select {
			case <-stop:
				return
			default:
			}
			resp, err := c.Get("http://" + addr + "/")
			if err != nil || resp.StatusCode != 200 {
				bad.Add(1)
			} else {
				good.Add(1)
			}
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
	}()

	huge := "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 1<<20) + "\r\n\r\n"
	tests := []struct {
		name string
		raw  string
		want int
	}{
		{"bad request line", "GARBAGE\r\n\r\n", 400},
		{"space in target", "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"bad version", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505},
		{"no host", "GET / HTTP/1.1\r\n\r\n", 400},
		{"two hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
		{"space before colon", "GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  2\r\n\r\n", 400},
		{"bare LF", "GET / HTTP/1.1\r\nHost: x\nX-A: 1\r\n\r\n", 400},
		{"NUL in value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400},
		{"CL and TE", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"TE and CL", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400},
		{"differing CL", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400},
		{"CL list differing", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\nabcd", 400},
		{"negative CL", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400},
		{"TE gzip", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501},
		{"TE on HTTP/1.0", "POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"bad chunk size", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400},
		{"1 MiB header", huge, 431},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, closed := rawExchange(t, addr, tc.raw, 5*time.Second)
			require.Equal(t, tc.want, statusOf(out), "answer: %.200q", out)
			require.True(t, closed, "the connection is closed after a malformed request")
		})
	}

	t.Run("one header byte a second", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		defer c.Close()
		start := time.Now()
		closed := make(chan string, 1)
		go func() {
			out, _ := io.ReadAll(c)
			closed <- string(out)
		}()
		req := "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
		var out string
	loop:
		for i := 0; i < len(req); i++ {
			if _, err := c.Write([]byte{req[i]}); err != nil {
				break
			}
			select {
			case out = <-closed:
				break loop
			case <-time.After(time.Second):
			}
		}
		if out == "" {
			out = <-closed
		}
		elapsed := time.Since(start)
		require.Equal(t, 408, statusOf(out))
		require.Less(t, elapsed, cfg.HeaderTimeout+time.Second, "cut within the header timeout")
	})

	t.Run("idle connection that never speaks", func(t *testing.T) {
		start := time.Now()
		out, closed := rawExchange(t, addr, "", 5*time.Second)
		require.True(t, closed)
		require.Empty(t, out)
		require.Less(t, time.Since(start), cfg.HeaderTimeout+time.Second)
	})

	close(stop)
	wg.Wait()
	require.Zero(t, bad.Load(), "the well-behaved client saw no failure")
	require.Positive(t, good.Load())
}

func TestProxy_noRouteAndNoTable(t *testing.T) {
	_, addr := startBalancer(t, testConfig(t), nil)
	out, _ := rawExchange(t, addr, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 5*time.Second)
	require.Equal(t, 503, statusOf(out))

	tbl := oneTable(1, "", "127.0.0.1:1")
	tbl.Pools[0].Hosts = []string{"only.example"}
	_, addr = startBalancer(t, testConfig(t), tbl)
	// 404 keeps the connection: two answers on one connection.
	out, _ = rawExchange(t, addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: y\r\nConnection: close\r\n\r\n", 5*time.Second)
	require.Equal(t, 2, strings.Count(out, "HTTP/1.1 404 Not Found"))
}

func TestProxy_messageFraming(t *testing.T) {
	be := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/chunked":
			for i := 0; i < 3; i++ {
				fmt.Fprintf(w, "part%d;", i)
				w.(http.Flusher).Flush()
			}
		case "/nocontent":
			w.WriteHeader(204)
		case "/notmodified":
			w.WriteHeader(304)
		case "/close":
			c, rw, _ := http.NewResponseController(w).Hijack()
			rw.WriteString("HTTP/1.1 200 OK\r\nX-Framing: eof\r\n\r\nuntil close")
			rw.Flush()
			c.Close()
		case "/echo":
			body, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "%s:%s", r.Method, body)
		default:
			w.Header().Set("Content-Length", "5")
			io.WriteString(w, "hello")
		}
	}))
	_, addr := startBalancer(t, testConfig(t), oneTable(1, "", be.addr))

	t.Run("pipelined requests on one connection", func(t *testing.T) {
		out, _ := rawExchange(t, addr,
			"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"+
				"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n"+
				"GET /nocontent HTTP/1.1\r\nHost: x\r\n\r\n"+
				"GET /notmodified HTTP/1.1\r\nHost: x\r\n\r\n"+
				"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"+
				"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2;ext=1\r\nde\r\n1\r\nf\r\n0\r\nX-Trailer: 1\r\n\r\n"+
				"GET /chunked HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 5*time.Second)
		br := bufio.NewReader(strings.NewReader(out))
		for i, want := range []struct {
			method string
			status int
			body   string
		}{{"GET", 200, "hello"}, {"HEAD", 200, ""}, {"GET", 204, ""}, {"GET", 304, ""},
			{"POST", 200, "POST:abc"}, {"POST", 200, "POST:def"}, {"GET", 200, "part0;part1;part2;"}} {
			resp, err := http.ReadResponse(br, &http.Request{Method: want.method})
			require.NoError(t, err, "response %d in %q", i, out)
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, err, "response %d in %q", i, out)
			require.Equal(t, want.status, resp.StatusCode, "response %d", i)
			require.Equal(t, want.body, string(body), "response %d", i)
		}
	})

	t.Run("close-delimited response closes the client connection", func(t *testing.T) {
		out, closed := rawExchange(t, addr, "GET /close HTTP/1.1\r\nHost: x\r\n\r\n", 5*time.Second)
		require.True(t, closed)
		require.Contains(t, out, "Connection: close\r\n")
		require.True(t, strings.HasSuffix(out, "\r\n\r\nuntil close"), out)
	})

	t.Run("HTTP/1.0 client gets a close-delimited body for a chunked response", func(t *testing.T) {
		out, closed := rawExchange(t, addr, "GET /chunked HTTP/1.0\r\nHost: x\r\n\r\n", 5*time.Second)
		require.True(t, closed)
		require.NotContains(t, out, "Transfer-Encoding")
		require.True(t, strings.HasSuffix(out, "\r\n\r\npart0;part1;part2;"), out)
	})

	t.Run("HTTP/1.0 keep-alive", func(t *testing.T) {
		out, _ := rawExchange(t, addr, "GET /a HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\nGET /a HTTP/1.0\r\nHost: x\r\n\r\n", 5*time.Second)
		require.Equal(t, 2, strings.Count(out, "hello"))
		require.Contains(t, out, "Connection: keep-alive\r\n")
	})

	t.Run("expect 100-continue", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
		br := bufio.NewReader(c)
		line, err := br.ReadString('\n')
		require.NoError(t, err)
		require.Equal(t, "HTTP/1.1 100 Continue\r\n", line)
		_, err = br.ReadString('\n')
		require.NoError(t, err)
		io.WriteString(c, "body")
		resp, err := http.ReadResponse(br, nil)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		require.Equal(t, "PUT:body", string(body))
	})
}

func TestProxy_provoked500sCannotEmptyPool(t *testing.T) {
	var bs []*testBackend
	var addrs []string
	for i := 0; i < 4; i++ {
		be := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/boom" {
				http.Error(w, "boom", 500)
				return
			}
			io.WriteString(w, "ok")
		}))
		bs = append(bs, be)
		addrs = append(addrs, be.addr)
	}
	b, addr := startBalancer(t, testConfig(t), oneTable(1, "", addrs...))
	c := testClient(t, 4)
	for i := 0; i < 400; i++ {
		resp, err := c.Get("http://" + addr + "/boom")
		require.NoError(t, err)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		require.Equal(t, 500, resp.StatusCode, "a backend's 5xx is relayed, not retried")
	}
	ejected := 0
	for _, s := range b.Stats() {
		if s.Ejected {
			ejected++
		}
	}
	require.Equal(t, 2, ejected, "at most 50%% of the pool is ejected")
	for i := 0; i < 50; i++ {
		resp, err := c.Get("http://" + addr + "/")
		require.NoError(t, err)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		require.Equal(t, 200, resp.StatusCode)
	}
}

func TestBusyClock_integratesRequestsInFlight(t *testing.T) {
	var c busyClock
	const s = int64(time.Second)
	c.add(0, 1)
	c.add(1*s, 1)
	require.InDelta(t, 3.0, c.seconds(2*s), 1e-12, "1 s of one, then 1 s of two")
	c.add(3*s, -1)
	require.InDelta(t, 7.0, c.seconds(5*s), 1e-12)
	c.add(5*s, -1)
	require.InDelta(t, 7.0, c.seconds(10*s), 1e-12, "nothing in flight adds nothing")
	require.InDelta(t, 7.0, c.seconds(9*s), 1e-12, "a time before the last one adds nothing")

	// Many changes a nanosecond apart lose nothing to rounding.
	var d busyClock
	d.add(0, 3)
	for i := int64(1); i <= 1_000_000; i++ {
		d.add(i, 0)
	}
	require.InDelta(t, 0.003, d.seconds(1_000_000), 1e-15)
}

func TestProxy_statsIntegrateRequestsInFlight(t *testing.T) {
	release := make(chan struct{})
	be := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
	}))
	b, addr := startBalancer(t, testConfig(t), oneTable(1, "", be.addr))
	c := testClient(t, 4)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Get("http://" + addr + "/")
			if err == nil {
				resp.Body.Close()
			}
		}()
	}
	released := false
	defer func() {
		if !released {
			close(release)
		}
		wg.Wait()
	}()
	require.Eventually(t, func() bool { return b.Stats()[0].InFlight == 4 }, 5*time.Second, time.Millisecond)

	// Four requests held at the backend: the integral grows four times as
	// fast as the clock.
	t1 := time.Now()
	s1 := b.Stats()[0].InFlightSeconds
	var s2 float64
	require.Eventually(t, func() bool {
		s2 = b.Stats()[0].InFlightSeconds
		return s2-s1 >= 1.2
	}, 5*time.Second, 5*time.Millisecond)
	elapsed := time.Since(t1).Seconds()
	require.InDelta(t, 4.0, (s2-s1)/elapsed, 0.2, "mean concurrency over %.3fs", elapsed)

	close(release)
	released = true
	wg.Wait()
	require.Eventually(t, func() bool { return b.Stats()[0].InFlight == 0 }, 5*time.Second, time.Millisecond)
	end := b.Stats()[0].InFlightSeconds
	require.GreaterOrEqual(t, end, s2)
	// Once they are done nothing more accrues, however long the wait.
	require.Never(t, func() bool { return b.Stats()[0].InFlightSeconds != end }, 100*time.Millisecond, 10*time.Millisecond)
}

func TestProxy_statsCountRequestsErrorsAndLatency(t *testing.T) {
	be := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/err" {
			w.WriteHeader(503)
		}
	}))
	b, addr := startBalancer(t, testConfig(t), oneTable(1, "", be.addr))
	c := testClient(t, 1)
	for _, p := range []string{"/", "/", "/err"} {
		resp, err := c.Get("http://" + addr + p)
		require.NoError(t, err)
		resp.Body.Close()
	}
	// Statistics are recorded right after the response reaches the client.
	require.Eventually(t, func() bool { return b.Stats()[0].Requests == 3 && b.Stats()[0].InFlight == 0 },
		5*time.Second, time.Millisecond)
	st := b.Stats()
	require.Len(t, st, 1)
	require.Equal(t, "web", st[0].Pool)
	require.Equal(t, be.addr, st[0].Address)
	require.EqualValues(t, 3, st[0].Requests)
	require.EqualValues(t, 1, st[0].Errors)
	require.Zero(t, st[0].InFlight)
	require.Positive(t, st[0].LatencyEWMA)
	var n uint64
	for _, k := range st[0].LatencyCounts {
		n += k
	}
	require.EqualValues(t, 3, n)
}

func TestProxy_websocketSurvives100TableUpdates(t *testing.T) {
	ws := startBackend(t, wstest.EchoHandler("ws-a:"))
	other := startBackend(t, nameHandler("b"))
	b, addr := startBalancer(t, testConfig(t), oneTable(1, "", ws.addr))
	conn, err := wstest.Dial(addr, "app.example", "/ws", 5*time.Second)
	require.NoError(t, err)
	defer conn.Close()
	for i := 0; i < 100; i++ {
		tbl := oneTable(uint64(i+2), "", ws.addr, other.addr)
		tbl.Pools[0].Backends[0].Weight = i%7 + 1
		if i%2 == 1 {
			tbl.Pools[0].Policy = PolicyRoundRobin
			tbl.Pools[0].Backends = tbl.Pools[0].Backends[:1]
		}
		require.NoError(t, b.Apply(tbl))
		msg := []byte(fmt.Sprintf("message %d", i))
		got, err := conn.Echo(msg, 5*time.Second)
		require.NoError(t, err, "echo after update %d", i)
		require.Equal(t, "ws-a:"+string(msg), string(got))
	}
	big := bytes.Repeat([]byte("w"), 200<<10)
	got, err := conn.Echo(big, 5*time.Second)
	require.NoError(t, err)
	require.Equal(t, len(big)+5, len(got))
	require.EqualValues(t, 1, ws.accepted.Load())
}

// patternReader yields n deterministic pseudo-random bytes.
type patternReader struct {
	n, off int64
	x      uint64
}

func (p *patternReader) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	if rem := p.n - p.off; int64(len(b)) > rem {
		b = b[:rem]
	}
	for i := range b {
		if (p.off+int64(i))%8 == 0 {
			p.x = p.x*6364136223846793005 + 1442695040888963407
		}
		b[i] = byte(p.x >> (8 * ((p.off + int64(i)) % 8)))
	}
	p.off += int64(len(b))
	return len(b), nil
}

func sumPattern(n int64) string {
	h := sha256.New()
	io.Copy(h, &patternReader{n: n})
	return hex.EncodeToString(h.Sum(nil))
}

// streamHandler serves GET /download?n=N and POST /upload (answering the
// length and SHA-256 of what it read).
func streamHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/download":
			n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
			if r.URL.Query().Get("chunked") == "" {
				w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
			}
			io.Copy(w, &patternReader{n: n})
		case "/upload":
			writeBodyDigest(w, r)
		}
	})
}

func TestProxy_streamsLargeBodiesByteExact(t *testing.T) {
	const n = 64 << 20
	be := startBackend(t, streamHandler())
	_, addr := startBalancer(t, testConfig(t), oneTable(1, "", be.addr))
	c := testClient(t, 1)
	want := sumPattern(n)

	for _, q := range []string{"", "&chunked=1"} {
		resp, err := c.Get(fmt.Sprintf("http://%s/download?n=%d%s", addr, n, q))
		require.NoError(t, err)
		h := sha256.New()
		got, err := io.Copy(h, resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		require.EqualValues(t, n, got)
		require.Equal(t, want, hex.EncodeToString(h.Sum(nil)))
	}

	for _, chunked := range []bool{false, true} {
		var body io.Reader = &patternReader{n: n}
		req, err := http.NewRequest("POST", "http://"+addr+"/upload", body)
		require.NoError(t, err)
		if !chunked {
			req.ContentLength = n
		}
		resp, err := c.Do(req)
		require.NoError(t, err)
		out, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, fmt.Sprintf("%d %s", n, want), string(out))
	}
}

func TestProxy_earlyResponseWhileBodyStreams(t *testing.T) {
	// The backend refuses a large upload without reading it.
	be := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		http.Error(w, "too large", http.StatusRequestEntityTooLarge)
	}))
	_, addr := startBalancer(t, testConfig(t), oneTable(1, "", be.addr))
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n")
	go func() {
		chunk := make([]byte, 64<<10)
		for i := 0; i < 1600; i++ {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	}()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	require.Equal(t, 413, resp.StatusCode)
}

// writeBodyDigest answers with the request body's length and sha256.
func writeBodyDigest(w http.ResponseWriter, r *http.Request) {
	h := sha256.New()
	n, err := io.Copy(h, r.Body)
	if err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	fmt.Fprintf(w, "%d %s", n, hex.EncodeToString(h.Sum(nil)))
}
