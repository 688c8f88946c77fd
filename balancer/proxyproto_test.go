package balancer

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
	"github.com/stretchr/testify/require"

	"github.com/hostscale/hostscale/internal/tlsx/tlstest"
)

// TestProxyProtocol_theHeaderNamesTheClient: behind a load balancer that
// sends a PROXY protocol header, v1 or v2, the source it gives is the
// client (X-Forwarded-For, -trusted-proxies), over plain HTTP and TLS; a
// LOCAL header keeps the socket's peer; a connection without a header, or
// with garbage in its place, is closed unanswered and counted.
func TestProxyProtocol_theHeaderNamesTheClient(t *testing.T) {
	be := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "xff=%q proto=%q", strings.Join(r.Header.Values("X-Forwarded-For"), "|"), r.Header.Get("X-Forwarded-Proto"))
	}))
	cfg := testConfig(t)
	cfg.HeaderTimeout = 2 * time.Second
	cfg.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
	wrap := func(ln net.Listener) net.Listener { return ProxyProtocolListener(ln, cfg.HeaderTimeout) }
	b, addr := startBalancerOn(t, cfg, oneTable(1, "", be.addr), wrap)
	const request = "GET / HTTP/1.1\r\nHost: app.example\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n"
	// send writes head, then the request (over TLS with cfg), and returns
	// the backend's answer, or the error reading one.
	send := func(addr string, head []byte, tlsCfg *tls.Config) (string, error) {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = c.Write(head)
		require.NoError(t, err)
		var conn net.Conn = c
		if tlsCfg != nil {
			tc := tls.Client(c, tlsCfg)
			if err := tc.Handshake(); err != nil {
				return "", err
			}
			conn = tc
		}
		if _, err := io.WriteString(conn, request); err != nil {
			return "", err
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return string(body), err
	}
	v2 := func(src string, cmd proxyproto.ProtocolVersionAndCommand) []byte {
		h := &proxyproto.Header{Version: 2, Command: cmd, TransportProtocol: proxyproto.TCPv6,
			SourceAddr: net.TCPAddrFromAddrPort(netip.MustParseAddrPort(src)), DestinationAddr: &net.TCPAddr{IP: net.IPv6loopback, Port: 80}}
		if !strings.HasPrefix(src, "[") {
			h.TransportProtocol = proxyproto.TCPv4
			h.DestinationAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 80}
		}
		out, err := h.Format()
		require.NoError(t, err)
		return out
	}

	got, err := send(addr, []byte("PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n"), nil)
	require.NoError(t, err)
	require.Equal(t, `xff="203.0.113.7" proto="http"`, got, "v1: the header's source, an untrusted client's X-Forwarded-For replaced")
	got, err = send(addr, v2("[2001:db8::9]:4000", proxyproto.PROXY), nil)
	require.NoError(t, err)
	require.Equal(t, `xff="2001:db8::9" proto="http"`, got, "v2, IPv6")
	got, err = send(addr, v2("198.51.100.4:4000", proxyproto.PROXY), nil)
	require.NoError(t, err)
	require.Equal(t, `xff="6.6.6.6, 198.51.100.4" proto="http"`, got, "a trusted proxy named by the header")
	got, err = send(addr, v2("203.0.113.7:4000", proxyproto.LOCAL), nil)
	require.NoError(t, err)
	require.Equal(t, `xff="127.0.0.1" proto="http"`, got, "LOCAL: the socket's peer")

	version3 := v2("203.0.113.7:4000", proxyproto.PROXY)
	version3[12] = 0x31
	for name, head := range map[string][]byte{
		"no header":  nil,
		"garbage":    []byte("PROXY NONSENSE\r\n"),
		"bad source": []byte("PROXY TCP4 999.1.1.1 127.0.0.1 5555 80\r\n"),
		"version 3":  version3,
	} {
		before := b.Counters().NoProxyHeader
		_, err := send(addr, head, nil)
		require.Error(t, err, "%s: answered", name)
		require.Eventually(t, func() bool { return b.Counters().NoProxyHeader == before+1 }, 5*time.Second, 5*time.Millisecond, name)
	}

	// Over TLS the header comes first, before the handshake.
	set := tlstest.Write(t)
	serverTLS, err := set.Server.Server()
	require.NoError(t, err)
	serverTLS.ClientAuth, serverTLS.VerifyConnection = tls.NoClientCert, nil
	_, tlsAddr := startBalancerOn(t, cfg, oneTable(1, "", be.addr), func(ln net.Listener) net.Listener {
		return tls.NewListener(wrap(ln), serverTLS)
	})
	clientTLS, err := set.Client.Client()
	require.NoError(t, err)
	clientTLS.ServerName = "127.0.0.1"
	got, err = send(tlsAddr, []byte("PROXY TCP4 203.0.113.8 127.0.0.1 5555 443\r\n"), clientTLS)
	require.NoError(t, err)
	require.Equal(t, `xff="203.0.113.8" proto="https"`, got)
}
