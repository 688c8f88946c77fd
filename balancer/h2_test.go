package balancer

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Rig is a balancer with HTTP2 serving tbl on a TLS listener for
// shop.example, and clients that trust its certificate.
type h2Rig struct {
	b     *Balancer
	addr  string
	roots *x509.CertPool
	// stop begins the balancer's shutdown.
	stop context.CancelFunc
}

func startH2(t testing.TB, cfg Config, tbl *Table) *h2Rig {
	t.Helper()
	store, roots := shopCerts(t)
	cfg.TLSListenAddr, cfg.TLS, cfg.HTTP2 = "127.0.0.1:0", store.TLSConfig(), true
	b, err := New(cfg)
	require.NoError(t, err)
	if tbl != nil {
		require.NoError(t, b.Apply(tbl))
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	stop := serve(t, b, tls.NewListener(ln, b.cfg.TLS))
	return &h2Rig{b: b, addr: ln.Addr().String(), roots: roots, stop: stop}
}

// client returns a client of the rig that speaks HTTP/2 (or, with h1,
// offers HTTP/1.1 only), dialling the rig whatever the URL's host.
func (r *h2Rig) client(t testing.TB, h1 bool) *http.Client {
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: r.roots, ServerName: "shop.example"},
		ForceAttemptHTTP2: !h1,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", r.addr)
		},
	}
	if h1 {
		tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// dial opens a TLS connection to the rig that negotiated HTTP/2, closed
// when the test ends.
func (r *h2Rig) dial(t *testing.T) *tls.Conn {
	t.Helper()
	conn, err := tls.Dial("tcp", r.addr, &tls.Config{RootCAs: r.roots, ServerName: "shop.example", NextProtos: []string{"h2"}})
	require.NoError(t, err)
	require.Equal(t, "h2", conn.ConnectionState().NegotiatedProtocol)
	t.Cleanup(func() { conn.Close() })
	return conn
}

// speak opens an HTTP/2 connection to the rig: the client preface and
// SETTINGS sent, a framer on it.
func (r *h2Rig) speak(t *testing.T) (*tls.Conn, *http2.Framer) {
	t.Helper()
	conn := r.dial(t)
	_, err := conn.Write([]byte(http2.ClientPreface))
	require.NoError(t, err)
	fr := http2.NewFramer(conn, conn)
	require.NoError(t, fr.WriteSettings())
	return conn, fr
}

// echoHandler answers with what the backend got: protocol, method, target,
// Host, X-Forwarded-*, a test header, the body's framing and the body.
func echoHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Echo-Proto", r.Proto)
		w.Header().Add("Set-Cookie", "a=1")
		w.Header().Add("Set-Cookie", "b=2")
		fmt.Fprintf(w, "%s %s %s host=%s xfp=%s xff=%s test=%s te=%v len=%d body=%s",
			r.Proto, r.Method, r.RequestURI, r.Host, r.Header.Get("X-Forwarded-Proto"), r.Header.Get("X-Forwarded-For"),
			r.Header.Get("X-Test"), r.TransferEncoding, r.ContentLength, body)
	})
}

// TestHTTP2_streamsReachBackendsAsHTTP1: a client that takes HTTP/2 sends
// its requests as streams of one connection; each reaches the backend as
// an HTTP/1.1 request with its method, target, Host, fields and body
// (with its length, or chunked when the client did not give one), and
// X-Forwarded-Proto: https; the answer comes back with its status,
// fields and body. Fifty requests at once share the one connection.
// HTTP/1.1 clients of the same port are served as before.
func TestHTTP2_streamsReachBackendsAsHTTP1(t *testing.T) {
	be := startBackend(t, echoHandler())
	r := startH2(t, testConfig(t), oneTable(1, "", be.addr))
	c := r.client(t, false)

	req, err := http.NewRequest(http.MethodGet, "https://shop.example/a/b?q=1", nil)
	require.NoError(t, err)
	req.Header.Set("X-Test", "yes")
	resp, err := c.Do(req)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, "HTTP/2.0", resp.Proto)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "HTTP/1.1", resp.Header.Get("X-Echo-Proto"))
	require.Equal(t, []string{"a=1", "b=2"}, resp.Header.Values("Set-Cookie"))
	require.Equal(t, "HTTP/1.1 GET /a/b?q=1 host=shop.example xfp=https xff=127.0.0.1 test=yes te=[] len=0 body=", string(body))

	// A body of known length, and one the client streams without a length.
	resp, err = c.Post("https://shop.example/up", "text/plain", strings.NewReader("hello"))
	require.NoError(t, err)
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Contains(t, string(body), "POST /up host=shop.example xfp=https xff=127.0.0.1 test= te=[] len=5 body=hello")
	pr, pw := io.Pipe()
	go func() {
		for _, part := range []string{"stream", "ed ", "body"} {
			pw.Write([]byte(part))
		}
		pw.Close()
	}()
	resp, err = c.Post("https://shop.example/up", "text/plain", pr)
	require.NoError(t, err)
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Contains(t, string(body), "te=[chunked] len=-1 body=streamed body")

	// HEAD, and the balancer's own answers.
	resp, err = c.Head("https://shop.example/")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.NoError(t, r.b.Apply(&Table{Version: Version{Term: 1, Index: 2}, Pools: []Pool{{
		Name: "web", Hosts: []string{"shop.example"}, Backends: []Backend{{Address: be.addr, Weight: 1}}}}}))
	resp, err = c.Get("https://shop.example/")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	req, err = http.NewRequest(http.MethodGet, "https://shop.example/", nil)
	require.NoError(t, err)
	req.Host = "other.example"
	resp, err = c.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode, "no pool for the host")

	// Fifty at once, on the one connection.
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Post("https://shop.example/p", "text/plain", strings.NewReader(fmt.Sprint(i)))
			if err != nil {
				errs <- err
				return
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || !strings.HasSuffix(string(body), fmt.Sprintf("body=%d", i)) || resp.Proto != "HTTP/2.0" {
				errs <- fmt.Errorf("request %d: %v %s %q", i, err, resp.Proto, body)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	k := r.b.Counters()
	require.True(t, k.HTTP2)
	require.EqualValues(t, 1, k.HTTP2Connections)
	require.EqualValues(t, 1, k.Connections, "every request went over one connection")
	require.EqualValues(t, 56, k.Requests)

	// HTTP/1.1 on the same port.
	h1 := r.client(t, true)
	resp, err = h1.Get("https://shop.example/old")
	require.NoError(t, err)
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, "HTTP/1.1", resp.Proto)
	require.Contains(t, string(body), "GET /old host=shop.example xfp=https")
	require.EqualValues(t, 1, r.b.Counters().HTTP2Connections)
}

// TestHTTP2_streamsAnswerAsTheBackendWrites: a response the backend sends
// in parts (server-sent events) reaches the client part by part, and a
// 1 MiB body whole.
func TestHTTP2_streamsAnswerAsTheBackendWrites(t *testing.T) {
	release := make(chan struct{})
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	be := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/big" {
			w.Header().Set("Content-Length", fmt.Sprint(len(big)))
			w.Write(big)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
		io.WriteString(w, "data: second\n\n")
	}))
	r := startH2(t, testConfig(t), oneTable(1, "", be.addr))
	c := r.client(t, false)

	resp, err := c.Get("https://shop.example/events")
	require.NoError(t, err)
	defer resp.Body.Close()
	buf := make([]byte, len("data: first\n\n"))
	_, err = io.ReadFull(resp.Body, buf)
	require.NoError(t, err, "the first event before the backend ends its answer")
	require.Equal(t, "data: first\n\n", string(buf))
	close(release)
	rest, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, "data: second\n\n", string(rest))

	resp, err = c.Get("https://shop.example/big")
	require.NoError(t, err)
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, int64(len(big)), resp.ContentLength)
	require.True(t, bytes.Equal(big, got))
}

// TestHTTP2_aResetStreamEndsItsHold: a request held for a pool without a
// backend stops waiting when its client resets the stream, as a closed
// HTTP/1.1 connection does, and no longer counts as waiting.
func TestHTTP2_aResetStreamEndsItsHold(t *testing.T) {
	tbl := oneTable(1, "")
	tbl.Pools[0].HoldWhenEmpty = time.Minute
	r := startH2(t, testConfig(t), tbl)
	c := r.client(t, false)
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://shop.example/", nil)
	require.NoError(t, err)
	errc := make(chan error, 1)
	go func() {
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	require.Eventually(t, func() bool { return r.b.PoolStats()[0].Waiting == 1 }, 5*time.Second, 5*time.Millisecond)
	cancel()
	require.Error(t, <-errc)
	require.Eventually(t, func() bool {
		p := r.b.PoolStats()[0]
		return p.Waiting == 0 && p.Held.Gone == 1
	}, 5*time.Second, 5*time.Millisecond)
}

// TestHTTP2_garbageFramesCloseTheConnectionOnly: a client that negotiates
// HTTP/2 and then breaks its rules (no preface, a frame on stream 0 that
// needs a stream, a header block that does not decode) loses its
// connection, counted; the balancer serves the next client.
func TestHTTP2_garbageFramesCloseTheConnectionOnly(t *testing.T) {
	be := startBackend(t, nameHandler("a"))
	r := startH2(t, testConfig(t), oneTable(1, "", be.addr))
	closed := func(conn *tls.Conn) {
		t.Helper()
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(10*time.Second)))
		_, err := io.Copy(io.Discard, conn)
		var ne net.Error
		require.False(t, errors.As(err, &ne) && ne.Timeout(), "the balancer should close the connection")
	}
	// Not the client preface.
	conn := r.dial(t)
	conn.Write([]byte("GET / HTTP/1.1\r\nHost: shop.example\r\n\r\n"))
	closed(conn)
	// A DATA frame on stream 0.
	conn, fr := r.speak(t)
	require.NoError(t, fr.WriteRawFrame(http2.FrameData, http2.FlagDataEndStream, 0, []byte("x")))
	closed(conn)
	// A header block that does not decode.
	conn, fr = r.speak(t)
	require.NoError(t, fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0xff, 0xff, 0xff, 0xff}, EndHeaders: true, EndStream: true}))
	closed(conn)
	require.Positive(t, r.b.Counters().HTTP2Errors)

	resp, err := r.client(t, false).Get("https://shop.example/")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, "a", string(body))
}

// TestHTTP2_answersEndAsTheBackendsDo: an answer delimited by the
// backend's close arrives whole; one whose backend breaks off before its
// length is reached resets the stream, so the client sees an error, not a
// short body taken for a whole one.
func TestHTTP2_answersEndAsTheBackendsDo(t *testing.T) {
	closeDelimited := serveRaw(t, []byte("HTTP/1.0 200 OK\r\nX-Old: yes\r\n\r\nuntil the end"), false)
	r := startH2(t, testConfig(t), oneTable(1, "", closeDelimited))
	c := r.client(t, false)
	resp, err := c.Get("https://shop.example/")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, "until the end", string(body))
	require.Equal(t, "yes", resp.Header.Get("X-Old"))

	cut := serveRaw(t, []byte("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten.."), false)
	require.NoError(t, r.b.Apply(oneTable(2, "", cut)))
	resp, err = c.Get("https://shop.example/")
	require.NoError(t, err)
	body, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Error(t, err, "a cut body must not end like a whole one; got %q", body)
	cutChunked := serveRaw(t, []byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"), false)
	require.NoError(t, r.b.Apply(oneTable(3, "", cutChunked)))
	resp, err = c.Get("https://shop.example/")
	require.NoError(t, err)
	_, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Error(t, err)
}

// TestHTTP2_uploads: a 4 MiB body the client streams without a length
// reaches the backend whole; a backend that answers 413 before reading an
// upload ends it at once.
func TestHTTP2_uploads(t *testing.T) {
	be := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/refuse" {
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			return
		}
		n, err := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%d %v", n, err)
	}))
	r := startH2(t, testConfig(t), oneTable(1, "", be.addr))
	c := r.client(t, false)
	resp, err := c.Post("https://shop.example/up", "application/octet-stream", struct{ io.Reader }{&patternReader{n: 4 << 20}})
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, fmt.Sprintf("%d <nil>", 4<<20), string(body))

	pr, pw := io.Pipe()
	defer pw.Close()
	go func() {
		chunk := make([]byte, 32<<10)
		for {
			if _, err := pw.Write(chunk); err != nil {
				return
			}
		}
	}()
	resp, err = c.Post("https://shop.example/refuse", "application/octet-stream", pr)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
}

// TestHTTP2_shutdownSendsGoAway: at shutdown an HTTP/2 client is told, by
// a GOAWAY, to open no more streams on its connection.
func TestHTTP2_shutdownSendsGoAway(t *testing.T) {
	be := startBackend(t, nameHandler("a"))
	r := startH2(t, testConfig(t), oneTable(1, "", be.addr))
	conn, fr := r.speak(t)
	// The server's SETTINGS, then its acknowledgement of ours.
	for acked := false; !acked; {
		f, err := fr.ReadFrame()
		require.NoError(t, err)
		if sf, ok := f.(*http2.SettingsFrame); ok {
			if sf.IsAck() {
				acked = true
			} else {
				require.NoError(t, fr.WriteSettingsAck())
			}
		}
	}
	require.Eventually(t, func() bool { return r.b.Counters().HTTP2Connections == 1 }, 5*time.Second, 5*time.Millisecond)
	r.stop()
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(10*time.Second)))
	for {
		f, err := fr.ReadFrame()
		require.NoError(t, err, "the connection ended without a GOAWAY")
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			require.Equal(t, http2.ErrCodeNo, ga.ErrCode)
			return
		}
	}
}

// TestHTTP2_serveWaitsForItsStreams: Serve returns only once every
// stream's handler has, as it does for HTTP/1.1 requests in flight, even
// after ShutdownTimeout closed their connection.
func TestHTTP2_serveWaitsForItsStreams(t *testing.T) {
	release := make(chan struct{})
	be := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
		io.WriteString(w, "late")
	}))
	store, roots := shopCerts(t)
	cfg := testConfig(t)
	cfg.TLSListenAddr, cfg.TLS, cfg.HTTP2 = "127.0.0.1:0", store.TLSConfig(), true
	cfg.ShutdownTimeout = 200 * time.Millisecond
	b, err := New(cfg)
	require.NoError(t, err)
	require.NoError(t, b.Apply(oneTable(1, "", be.addr)))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Serve(ctx, tls.NewListener(ln, b.cfg.TLS)) }()

	r := &h2Rig{b: b, addr: ln.Addr().String(), roots: roots}
	go func() {
		resp, err := r.client(t, false).Get("https://shop.example/slow")
		if err == nil {
			resp.Body.Close()
		}
	}()
	require.Eventually(t, func() bool { return b.Counters().HTTP2Streams == 1 }, 5*time.Second, 5*time.Millisecond)
	cancel()
	select {
	case err := <-done:
		t.Fatalf("Serve returned (%v) with a stream's handler still running", err)
	case <-time.After(time.Second): // five times ShutdownTimeout
	}
	close(release)
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return once the handler did")
	}
	require.Zero(t, b.Counters().HTTP2Streams)
}

// TestHTTP2_noFieldSmugglesIntoTheHTTP1Request: pseudo-headers and fields
// that would break the HTTP/1.1 request line or head (CR, LF, spaces, a
// Transfer-Encoding, a Content-Length that disagrees with the body), as in
// the HTTP/2 downgrade attacks on proxies, never reach a backend as a
// field, a second request or a body the stream did not declare.
func TestHTTP2_noFieldSmugglesIntoTheHTTP1Request(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	be := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		seen = append(seen, fmt.Sprintf("%s %s host=%q evil=%q te=%v len=%d body=%q", r.Method, r.RequestURI, r.Host, r.Header.Get("Evil"), r.TransferEncoding, r.ContentLength, body))
		mu.Unlock()
	}))
	r := startH2(t, testConfig(t), oneTable(1, "", be.addr))
	send := func(fields [][2]string, body string) {
		t.Helper()
		conn, fr := r.speak(t)
		var block bytes.Buffer
		enc := hpack.NewEncoder(&block)
		for _, f := range fields {
			require.NoError(t, enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}))
		}
		require.NoError(t, fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndHeaders: true, EndStream: body == ""}))
		if body != "" {
			require.NoError(t, fr.WriteData(1, true, []byte(body)))
		}
		// Read until the stream ends, is reset, or the connection closes.
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(10*time.Second)))
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					_ = fr.WriteSettingsAck()
				}
			case *http2.DataFrame:
				if f.StreamEnded() {
					return
				}
			case *http2.HeadersFrame:
				if f.StreamEnded() {
					return
				}
			case *http2.RSTStreamFrame, *http2.GoAwayFrame:
				return
			}
		}
	}
	base := func(extra ...[2]string) [][2]string {
		return append([][2]string{{":method", "POST"}, {":scheme", "https"}, {":authority", "shop.example"}, {":path", "/p"}}, extra...)
	}
	send([][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "shop.example\r\nEvil: 1"}, {":path", "/a"}}, "")
	send([][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "shop.example"}, {":path", "/a HTTP/1.1\r\nEvil: 1\r\n\r\nGET /b"}}, "")
	send([][2]string{{":method", "GET /x HTTP/1.1\r\nEvil: 1\r\n\r\nGET"}, {":scheme", "https"}, {":authority", "shop.example"}, {":path", "/a"}}, "")
	send(base([2]string{"x-test", "a\r\nEvil: 1"}), "hello")
	send(base([2]string{"transfer-encoding", "chunked"}), "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: shop.example\r\n\r\n")
	send(base([2]string{"content-length", "0"}), "GET /smuggled HTTP/1.1\r\nHost: shop.example\r\n\r\n")
	send(base([2]string{"content-length", "5"}), "hello")

	// The stream that declared no body is reset when its bytes come, which
	// its request may outrun: wait for the backend to have it.
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) >= 2
	}, 10*time.Second, 5*time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	for _, s := range seen {
		require.NotContains(t, s, "smuggled")
		require.Contains(t, s, `evil=""`)
	}
	// What reached the backend: the well-formed request, and the one that
	// declared no body, without the bytes it sent beyond that (the stream
	// is reset for them).
	require.ElementsMatch(t, []string{
		`POST /p host="shop.example" evil="" te=[] len=5 body="hello"`,
		`POST /p host="shop.example" evil="" te=[] len=0 body=""`,
	}, seen)
}
