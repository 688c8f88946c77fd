package balancer

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/hostscale/hostscale/internal/tlsx/tlstest"
)

func TestMain(m *testing.M) {
	// net/http's server (the test backends) lingers half a second after
	// closing a connection whose request it did not read; that goroutine is
	// the backend's, not the balancer's.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("net/http.(*conn).closeWriteAndWait"))
}

// slow reports whether the long suites run (make soak sets HOSTSCALE_SLOW=1).
func slow() bool { return os.Getenv("HOSTSCALE_SLOW") == "1" }

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("HOSTSCALE_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testConfig is DefaultConfig with timeouts suited to tests.
func testConfig(t testing.TB) Config {
	cfg := DefaultConfig()
	cfg.ListenAddr = "127.0.0.1:0"
	cfg.Logger = testLogger(t)
	cfg.ShutdownTimeout = 2 * time.Second
	cfg.SlowStart = 0
	return cfg
}

// startBalancer serves b on a kernel-chosen loopback port until the test ends.
func startBalancer(t testing.TB, cfg Config, tbl *Table) (*Balancer, string) {
	t.Helper()
	return startBalancerOn(t, cfg, tbl, nil)
}

// startBalancerOn is startBalancer on the listener wrap makes of the
// port's (nil: the port's own).
func startBalancerOn(t testing.TB, cfg Config, tbl *Table, wrap func(net.Listener) net.Listener) (*Balancer, string) {
	t.Helper()
	b, err := New(cfg)
	require.NoError(t, err)
	if tbl != nil {
		require.NoError(t, b.Apply(tbl))
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	if wrap != nil {
		ln = wrap(ln)
	}
	serve(t, b, ln)
	return b, addr
}

// serve runs b.Serve on ln until the test ends or stop, which begins the
// shutdown; the test fails unless Serve then returns nil within 10 s.
func serve(t testing.TB, b *Balancer, ln net.Listener) (stop context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Error("balancer did not stop")
		}
	})
	return cancel
}

// shopCerts is a certificate store holding one certificate, for
// shop.example, and the roots a client trusts it with.
func shopCerts(t testing.TB) (*CertStore, *x509.CertPool) {
	t.Helper()
	set := tlstest.Write(t)
	dir := t.TempDir()
	c, k := set.Issue(t, "shop", "shop.example")
	tlstest.Concat(t, filepath.Join(dir, "shop.pem"), c, k)
	store, err := LoadCerts(dir)
	require.NoError(t, err)
	caPEM, err := os.ReadFile(set.Server.CA)
	require.NoError(t, err)
	roots := x509.NewCertPool()
	require.True(t, roots.AppendCertsFromPEM(caPEM))
	return store, roots
}

// testBackend is a real HTTP server on loopback that can be killed.
type testBackend struct {
	addr     string
	srv      *http.Server
	ln       net.Listener
	hits     atomic.Int64
	accepted atomic.Int64
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	closed   atomic.Bool
	stopOnce sync.Once
}

func startBackend(t testing.TB, h http.Handler) *testBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	tb := &testBackend{addr: ln.Addr().String(), ln: ln, conns: map[net.Conn]struct{}{}}
	tb.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			tb.hits.Add(1)
			h.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          nil,
		ConnState: func(c net.Conn, s http.ConnState) {
			tb.mu.Lock()
			defer tb.mu.Unlock()
			switch s {
			case http.StateNew:
				tb.accepted.Add(1)
				tb.conns[c] = struct{}{}
			case http.StateClosed, http.StateHijacked:
				delete(tb.conns, c)
			}
		},
	}
	go func() {
		if err := tb.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("backend serve: %v", err)
		}
	}()
	t.Cleanup(tb.kill)
	return tb
}

// kill closes the listener and every connection at once, like a crash.
func (tb *testBackend) kill() {
	tb.stopOnce.Do(func() {
		tb.closed.Store(true)
		tb.srv.Close()
	})
}

func (tb *testBackend) openConns() int {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return len(tb.conns)
}

// nameHandler answers with the backend's name.
func nameHandler(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("X-Backend", name)
		io.WriteString(w, name)
	})
}

func oneTable(idx uint64, policy Policy, addrs ...string) *Table {
	p := Pool{Name: "web", Hosts: []string{"*"}, Policy: policy}
	for _, a := range addrs {
		p.Backends = append(p.Backends, Backend{Address: a, Weight: 1})
	}
	return &Table{Version: Version{Term: 1, Index: idx}, Pools: []Pool{p}}
}

// testClient returns an HTTP client with keep-alive and no proxy.
func testClient(t testing.TB, conns int) *http.Client {
	tr := &http.Transport{
		Proxy:               nil,
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     conns,
		DisableCompression:  true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}
