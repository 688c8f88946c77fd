package admin

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hostscale/hostscale/internal/tlsx"
	"github.com/hostscale/hostscale/internal/tlsx/tlstest"
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

// Close ends a running Serve at once, with a request still open on a
// kept-alive connection: the connection is closed, Serve returns nil, and
// the port refuses new connections.
func TestServer_closeDropsConnectionsAtOnce(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := New(lis, NewRegistry(), Options{})
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background()) }()
	addr := s.Addr().String()
	code, _ := get(t, "http://"+addr+"/healthz")
	require.Equal(t, 200, code)

	// A client that has sent half a request.
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n"))
	require.NoError(t, err)

	s.Close()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after Close")
	}
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	// Closed: EOF, or a reset when the server left bytes unread.
	_, err = c.Read(make([]byte, 1))
	require.True(t, errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET), "the connection was closed: %v", err)
	_, err = net.DialTimeout("tcp", addr, time.Second)
	require.Error(t, err, "the port refuses connections")
}

// TestServer_TLS: with -http-tls on, the endpoints are HTTPS only and ask
// no client certificate; a plaintext request gets 400. With verify, a
// client without a certificate of the CA is refused in the handshake.
func TestServer_TLS(t *testing.T) {
	set := tlstest.Write(t)
	id, err := set.Server.Load()
	require.NoError(t, err)
	clientID, err := set.Client.Load()
	require.NoError(t, err)
	serve := func(mode string) string {
		cfg, err := tlsx.HTTPServer(id, mode)
		require.NoError(t, err)
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		s := New(lis, NewRegistry(), Options{TLS: cfg})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		t.Cleanup(func() {
			cancel()
			require.NoError(t, <-done)
		})
		return s.Addr().String()
	}
	client := func(cert bool) *http.Client {
		cfg := clientID.Client()
		if !cert {
			cfg.GetClientCertificate = nil
		}
		return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 10 * time.Second}
	}
	fetch := func(c *http.Client, url string) (int, string, error) {
		resp, err := c.Get(url)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}

	on := serve(tlsx.HTTPOn)
	code, body, err := fetch(client(false), "https://"+on+"/metrics")
	require.NoError(t, err)
	require.Equal(t, 200, code)
	require.Contains(t, body, "go_goroutines")
	code, body = get(t, "http://"+on+"/healthz")
	require.Equal(t, 400, code)
	require.Contains(t, body, "HTTPS server")

	verify := serve(tlsx.HTTPVerify)
	code, _, err = fetch(client(true), "https://"+verify+"/readyz")
	require.NoError(t, err)
	require.Equal(t, 200, code)
	_, _, err = fetch(client(false), "https://"+verify+"/readyz")
	require.Error(t, err, "no client certificate")
}
