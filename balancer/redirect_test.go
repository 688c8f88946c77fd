package balancer

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// redirectRig serves a pool with HTTPSRedirect on a plain and a TLS
// listener; the TLS port is 8443 for the redirects.
func redirectRig(t *testing.T, trusted bool) (plain, secure string, _ *x509.CertPool) {
	t.Helper()
	store, roots := shopCerts(t)
	be := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "proxied "+r.Header.Get("X-Forwarded-Proto"))
	}))
	cfg := testConfig(t)
	cfg.TLSListenAddr, cfg.TLS = "127.0.0.1:8443", store.TLSConfig()
	if trusted {
		cfg.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	}
	b, err := New(cfg)
	require.NoError(t, err)
	tbl := oneTable(1, "", be.addr)
	tbl.Pools[0].HTTPSRedirect = true
	require.NoError(t, b.Apply(tbl))
	pln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	tln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	serve(t, b, MergeListeners(pln, tls.NewListener(tln, cfg.TLS)))
	return pln.Addr().String(), tln.Addr().String(), roots
}

// exchange writes raw requests on one connection and reads as many
// responses.
func exchange(t *testing.T, c net.Conn, reqs ...string) []*http.Response {
	t.Helper()
	br := bufio.NewReader(c)
	var out []*http.Response
	for _, r := range reqs {
		_, err := io.WriteString(c, r)
		require.NoError(t, err)
		resp, err := http.ReadResponse(br, nil)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		resp.Header.Set("X-Test-Body", string(body))
		out = append(out, resp)
	}
	return out
}

func TestProxy_httpsRedirect(t *testing.T) {
	plain, secure, roots := redirectRig(t, false)
	c, err := net.Dial("tcp", plain)
	require.NoError(t, err)
	defer c.Close()
	rs := exchange(t, c,
		"GET /a/b?x=1 HTTP/1.1\r\nHost: Shop.example:8080\r\n\r\n",
		"POST /form HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 5\r\n\r\nhello",
		// A client's claim of https counts only from a trusted proxy.
		"GET /c HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-Proto: https\r\n\r\n",
		"GET http://shop.example/abs?q HTTP/1.1\r\nHost: shop.example\r\n\r\n",
	)
	for i, want := range []string{"https://Shop.example:8443/a/b?x=1", "https://shop.example:8443/form", "https://shop.example:8443/c", "https://shop.example:8443/abs?q"} {
		require.Equal(t, http.StatusPermanentRedirect, rs[i].StatusCode, "request %d", i)
		require.Equal(t, want, rs[i].Header.Get("Location"), "request %d", i)
		require.Empty(t, rs[i].Header.Get("X-Test-Body"))
		require.False(t, rs[i].Close, "request %d: the connection stays open", i)
	}

	// Without a Host there is nowhere to send it.
	c2, err := net.Dial("tcp", plain)
	require.NoError(t, err)
	defer c2.Close()
	rs = exchange(t, c2, "GET / HTTP/1.0\r\n\r\n")
	require.Equal(t, http.StatusBadRequest, rs[0].StatusCode)
	c3, err := net.Dial("tcp", plain)
	require.NoError(t, err)
	defer c3.Close()
	rs = exchange(t, c3, "GET / HTTP/1.1\r\nHost: evil.example/x@shop.example\r\n\r\n")
	require.Equal(t, http.StatusBadRequest, rs[0].StatusCode, "a host that would make another URL")

	// Over TLS the pool is proxied.
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "shop.example"}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://" + secure + "/a")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, "proxied https", string(body))
}

func TestProxy_httpsRedirectTrustsAProxyThatTerminatedTLS(t *testing.T) {
	plain, _, _ := redirectRig(t, true)
	c, err := net.Dial("tcp", plain)
	require.NoError(t, err)
	defer c.Close()
	rs := exchange(t, c,
		"GET /c HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-Proto: https\r\n\r\n",
		"GET /c HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-Proto: http\r\n\r\n",
	)
	require.Equal(t, 200, rs[0].StatusCode)
	require.Equal(t, "proxied https", rs[0].Header.Get("X-Test-Body"))
	require.Equal(t, http.StatusPermanentRedirect, rs[1].StatusCode)
}
