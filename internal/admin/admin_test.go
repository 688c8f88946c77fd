package admin

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

func TestServer_endpoints(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var notReady atomic.Bool
	notReady.Store(true)
	s := New(lis, NewRegistry(), Options{Ready: func() error {
		if notReady.Load() {
			return errors.New("no leader known")
		}
		return nil
	}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	base := "http://" + s.Addr().String()

	code, body := get(t, base+"/healthz")
	require.Equal(t, 200, code)
	code, body = get(t, base+"/readyz")
	require.Equal(t, 503, code)
	require.Contains(t, body, "no leader known")
	notReady.Store(false)
	code, _ = get(t, base+"/readyz")
	require.Equal(t, 200, code)
	code, body = get(t, base+"/metrics")
	require.Equal(t, 200, code)
	require.True(t, strings.Contains(body, "go_goroutines"), body[:200])
	code, _ = get(t, base+"/nope")
	require.Equal(t, 404, code)

	cancel()
	require.NoError(t, <-done)
}

// With options: the readiness detail follows "ready", and pprof is served
// only when asked, its profiles past the server's write timeout.
func TestServer_options(t *testing.T) {
	serve := func(opts Options) string {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		s := New(lis, NewRegistry(), opts)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		t.Cleanup(func() {
			http.DefaultClient.CloseIdleConnections()
			cancel()
			require.NoError(t, <-done)
		})
		return "http://" + s.Addr().String()
	}
	plain := serve(Options{})
	code, _ := get(t, plain+"/debug/pprof/")
	require.Equal(t, 404, code)
	code, body := get(t, plain+"/readyz")
	require.Equal(t, 200, code)
	require.Equal(t, "ready\n", body)

	full := serve(Options{Pprof: true, Detail: func() string { return "table 2/5" }})
	code, body = get(t, full+"/readyz")
	require.Equal(t, 200, code)
	require.Equal(t, "ready table 2/5\n", body)
	code, body = get(t, full+"/debug/pprof/")
	require.Equal(t, 200, code)
	require.Contains(t, body, "goroutine")
	code, _ = get(t, full+"/debug/pprof/profile?seconds=1")
	require.Equal(t, 200, code)
}
