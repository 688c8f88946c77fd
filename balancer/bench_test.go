package balancer

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func FuzzDecodeTable(f *testing.F) {
	f.Add([]byte(`{"version": {"term": 1, "index": 2}, "pools": [{"name": "web", "hosts": ["*"], "backends": [{"address": "127.0.0.1:80", "weight": 2}]}]}`))
	f.Add([]byte(`{"pools": [{"name": "a", "hosts": ["*.x.org"], "path_prefix": "/api", "policy": "round_robin", "backends": [{"address": "[::1]:1", "draining": true}]}]}`))
	f.Add([]byte(`{"pools": [{"name": "a", "hosts": ["x"]}, {"name": "a", "hosts": ["x"]}]}`))
	f.Add([]byte(`{"pools": [{"name": "a", "hosts": ["x"], "hold_when_empty": "1m30s"}, {"name": "b", "hosts": ["*"], "hold_when_empty": "5x"}]}`))
	f.Add([]byte(`{"pools": [{"name": "a", "hosts": ["x"], "hold_when_empty": 30}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		tbl, err := DecodeTable(data, "fuzz.json")
		if err != nil {
			return
		}
		// A decoded table is valid and can be compiled and applied.
		require.NoError(t, tbl.Validate())
		b, err := New(testConfig(t))
		require.NoError(t, err)
		require.NoError(t, b.Apply(tbl))
		b.snap.Load().router.lookup([]byte("x.org"), []byte("/api"))
	})
}

func BenchmarkPick(b *testing.B) {
	for _, policy := range []Policy{PolicyLeastRequest, PolicyRoundRobin} {
		b.Run(string(policy), func(b *testing.B) {
			ps := fakePool(policy, 1, 2, 3, 4, 5, 6, 7, 8)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if ps.picker.pick(1, nil) == nil {
						b.Fatal("nil")
					}
				}
			})
		})
	}
}

// Apply of a new table, in memory alone and saved to a data directory
// (where the write and its syncs set the pace).
func BenchmarkApply(b *testing.B) {
	for _, dataDir := range []bool{false, true} {
		name := "memory"
		if dataDir {
			name = "data-dir"
		}
		b.Run(name, func(b *testing.B) {
			cfg := testConfig(b)
			if dataDir {
				cfg.DataDir = b.TempDir()
			}
			bal, err := New(cfg)
			require.NoError(b, err)
			tbl := validTable()
			b.ReportAllocs()
			for b.Loop() {
				tbl.Version.Index++
				if err := bal.Apply(tbl); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkRouterLookup(b *testing.B) {
	bal, err := New(testConfig(b))
	require.NoError(b, err)
	tbl := validTable()
	require.NoError(b, bal.Apply(tbl))
	r := bal.snap.Load().router
	host, path := []byte("Example.com:8080"), []byte("/api/v1/items?x=1")
	b.ReportAllocs()
	for b.Loop() {
		if r.lookup(host, path) == nil {
			b.Fatal("no route")
		}
	}
}

// rawBackend answers every request head with a fixed small response. It
// allocates nothing per request, so allocations measured belong to the proxy.
func rawBackend(b *testing.B) string {
	return serveRaw(b, []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nhello, world\n"), true)
}

// serveRaw answers each request head with answer, as written, on a
// loopback port it returns: every head of a connection with keepAlive,
// else its first, then closes the connection. It allocates nothing per
// request.
func serveRaw(t testing.TB, answer []byte, keepAlive bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64<<10)
				have := 0
				for {
					n, err := c.Read(buf[have:])
					if err != nil {
						return
					}
					have += n
					for {
						i := bytes.Index(buf[:have], []byte("\r\n\r\n"))
						if i < 0 {
							break
						}
						if _, err := c.Write(answer); err != nil || !keepAlive {
							return
						}
						copy(buf, buf[i+4:have])
						have -= i + 4
					}
				}
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

// BenchmarkProxyRoundTrip measures one keep-alive GET through the balancer on
// loopback, client and backend included.
func BenchmarkProxyRoundTrip(b *testing.B) { benchRoundTrip(b, testConfig(b)) }

// BenchmarkProxyRoundTrip_accessLog is BenchmarkProxyRoundTrip with a JSON
// access log written to a file: what a line costs a request.
func BenchmarkProxyRoundTrip_accessLog(b *testing.B) {
	l, err := OpenAccessLog(filepath.Join(b.TempDir(), "access.log"), AccessLogJSON)
	require.NoError(b, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	b.Cleanup(func() { cancel(); require.NoError(b, <-done) })
	cfg := testConfig(b)
	cfg.AccessLog = l
	benchRoundTrip(b, cfg)
}

func benchRoundTrip(b *testing.B, cfg Config) {
	addr := rawBackend(b)
	_, proxy := startBalancer(b, cfg, oneTable(1, "", addr))
	c, err := net.Dial("tcp", proxy)
	require.NoError(b, err)
	defer c.Close()
	req := []byte("GET /bench HTTP/1.1\r\nHost: bench.example\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
	br := bufio.NewReader(c)
	readResp := func() {
		n := 0
		for {
			line, err := br.ReadSlice('\n')
			if err != nil {
				b.Fatal(err)
			}
			if len(line) == 2 {
				break
			}
			if bytes.HasPrefix(line, []byte("Content-Length: ")) {
				n = 0
				for _, d := range line[16 : len(line)-2] {
					n = n*10 + int(d-'0')
				}
			}
		}
		if _, err := br.Discard(n); err != nil {
			b.Fatal(err)
		}
	}
	c.Write(req)
	readResp()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		readResp()
	}
}

var _ io.Reader = (*patternReader)(nil)

// FuzzProxyClientBytes sends arbitrary bytes as a client. The balancer must
// answer or close, never crash, and keep serving.
func FuzzProxyClientBytes(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	be := startBackend(f, nameHandler("ok"))
	cfg := testConfig(f)
	cfg.HeaderTimeout = time.Second
	cfg.IdleTimeout = time.Second
	_, addr := startBalancer(f, cfg, oneTable(1, "", be.addr))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write(data)
		c.(*net.TCPConn).CloseWrite()
		_, err = io.Copy(io.Discard, c)
		if err != nil && !isReset(err) {
			t.Fatalf("no answer or close: %v", err)
		}
	})
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET)
}

// BenchmarkBackendStats is one request's bookkeeping on a backend shared
// by every core: in flight, its busy clock, and the finished counters.
func BenchmarkBackendStats(b *testing.B) {
	var s backendStats
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			start := monoNow()
			s.enter(start)
			s.leave()
			s.observe(time.Duration(monoNow()-start), false)
		}
	})
}

// BenchmarkHTTPSRoundTrip measures one GET through the balancer's TLS
// port, from net/http's client on kept connections, as HTTP/2 streams
// (-tls-http2) and as HTTP/1.1: what the bridge from streams to HTTP/1.1
// costs beside the HTTP/1.1 path. parallel is the requests in flight.
func BenchmarkHTTPSRoundTrip(b *testing.B) {
	for _, proto := range []string{"h2", "h1"} {
		for _, parallel := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/parallel=%d", proto, parallel), func(b *testing.B) {
				r := startH2(b, testConfig(b), oneTable(1, "", rawBackend(b)))
				c := r.client(b, proto == "h1")
				if proto == "h1" {
					c.Transport.(*http.Transport).MaxIdleConnsPerHost = parallel
				}
				get := func() error {
					resp, err := c.Get("https://shop.example/")
					if err != nil {
						return err
					}
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						return fmt.Errorf("status %d", resp.StatusCode)
					}
					return err
				}
				require.NoError(b, get())
				b.ReportAllocs()
				b.ResetTimer()
				var wg sync.WaitGroup
				var failed atomic.Value
				per := b.N / parallel
				for i := range parallel {
					n := per
					if i == 0 {
						n += b.N % parallel
					}
					wg.Add(1)
					go func() {
						defer wg.Done()
						for range n {
							if err := get(); err != nil {
								failed.Store(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				b.StopTimer()
				if err, _ := failed.Load().(error); err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}
