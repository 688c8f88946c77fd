package admin

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hostscale/hostscale/balancer"
)

func TestCollector_heldRequestOfARunningBalancer(t *testing.T) {
	cfg := balancer.DefaultConfig()
	cfg.ShutdownTimeout = 2 * time.Second
	b, err := balancer.New(cfg)
	require.NoError(t, err)
	pool := balancer.Pool{Name: "web", Hosts: []string{"*"}, HoldWhenEmpty: time.Minute}
	require.NoError(t, b.Apply(&balancer.Table{Version: balancer.Version{Term: 1, Index: 1}, Pools: []balancer.Pool{pool}}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- b.Serve(ctx, ln) }()
	defer func() {
		cancel()
		require.NoError(t, <-served)
	}()
	s, err := New(DefaultConfig(), b)
	require.NoError(t, err)
	h := s.Handler()

	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	type answer struct {
		code int
		body string
		err  error
	}
	ch := make(chan answer, 1)
	go func() {
		resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Get("http://" + ln.Addr().String() + "/")
		if err != nil {
			ch <- answer{err: err}
			return
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		ch <- answer{resp.StatusCode, string(body), err}
	}()
	require.Eventually(t, func() bool {
		_, body := do(t, h, "/metrics")
		return strings.Contains(body, `hostscale_balancer_waiting_requests{pool="web"} 1`)
	}, 10*time.Second, 5*time.Millisecond)

	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "up") }))
	defer be.Close()
	pool.Backends = []balancer.Backend{{Address: be.Listener.Addr().String()}}
	require.NoError(t, b.Apply(&balancer.Table{Version: balancer.Version{Term: 1, Index: 2}, Pools: []balancer.Pool{pool}}))
	select {
	case a := <-ch:
		require.NoError(t, a.err)
		require.Equal(t, 200, a.code)
		require.Equal(t, "up", a.body)
	case <-time.After(10 * time.Second):
		t.Fatal("the held request was not served")
	}
	_, body := do(t, h, "/metrics")
	for _, want := range []string{
		`hostscale_balancer_waiting_requests{pool="web"} 0`,
		`hostscale_balancer_unserved_requests_total{pool="web"} 1`,
		`hostscale_balancer_held_requests_total{outcome="served",pool="web"} 1`,
		`hostscale_balancer_held_requests_total{outcome="timeout",pool="web"} 0`,
		`hostscale_balancer_held_requests_total{outcome="closed",pool="web"} 0`,
	} {
		require.Contains(t, body, want)
	}
}
