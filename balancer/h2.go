package balancer

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	"github.com/hostscale/hostscale/balancer/internal/h1"
)

// HTTP/2 from clients (Config.HTTP2). A TLS client that offers "h2" by
// ALPN gets HTTP/2 from golang.org/x/net/http2's server. Each of its
// streams becomes one HTTP/1.1 request on a connection of its own
// (streamConn) that a clientConn serves as it serves any other: routing,
// holds, retries, health, statistics and the access log are the same code
// for both protocols, and backends keep speaking HTTP/1.1 over the pooled
// connections, as HAProxy and nginx speak to theirs by default.

// h2Hop are the fields RFC 9113 §8.2.2 forbids in HTTP/2 and RFC 9110
// §7.6.1 calls hop-by-hop: never copied from one protocol to the other.
var h2Hop = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Transfer-Encoding": true,
	"Upgrade": true, "Te": true, "Trailer": true, "Host": true, "Content-Length": true,
	// The bridge reads the whole request itself: the clientConn must not
	// answer 100 Continue into it.
	"Expect": true,
}

// h2Server is the HTTP/2 side of a Balancer with HTTP2.
type h2Server struct {
	srv  *http2.Server
	base *http.Server
	// conns counts the connections that chose HTTP/2; streams the streams
	// being served now; errors the protocol errors of clients (a
	// connection or a stream ended for breaking HTTP/2's rules).
	conns   atomic.Uint64
	streams atomic.Int64
	errors  atomic.Uint64
}

func newH2Server(cfg *Config, log *slog.Logger) *h2Server {
	h := &h2Server{}
	h.base = &http.Server{
		MaxHeaderBytes: cfg.MaxHeaderBytes, IdleTimeout: cfg.IdleTimeout,
		// What a client did wrong is the client's: debug, not the
		// process's standard error.
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	h.srv = &http2.Server{
		MaxConcurrentStreams: uint32(cfg.HTTP2MaxStreams),
		IdleTimeout:          cfg.IdleTimeout,
		CountError:           func(string) { h.errors.Add(1) },
	}
	// ConfigureServer ties the server to base, whose Shutdown then sends
	// every connection a GOAWAY.
	_ = http2.ConfigureServer(h.base, h.srv)
	return h
}

// goAway asks every HTTP/2 client to open no more streams: a connection
// closes once its streams are answered.
func (h *h2Server) goAway() {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = h.base.Shutdown(ctx) // serves nothing itself: it returns at once
}

// negotiateH2 runs the TLS handshake of cc's connection within
// HeaderTimeout and reports whether the client chose HTTP/2; false with
// the connection broken when the handshake failed.
func (cc *clientConn) negotiateH2() (h2, ok bool) {
	tc, isTLS := cc.c.(*tls.Conn)
	if !isTLS {
		return false, true
	}
	_ = tc.SetDeadline(time.Now().Add(cc.b.cfg.HeaderTimeout))
	if err := tc.Handshake(); err != nil {
		return false, false
	}
	_ = tc.SetDeadline(time.Time{})
	return tc.ConnectionState().NegotiatedProtocol == http2.NextProtoTLS, true
}

// serveH2 serves cc's connection as HTTP/2 until it ends, and its streams'
// handlers too, as Serve promises of every goroutine it started. It counts
// as busy throughout: at shutdown the GOAWAY (goAway) ends it once its
// streams are answered, and closeClients only after ShutdownTimeout.
func (cc *clientConn) serveH2() {
	b := cc.b
	b.h2.conns.Add(1)
	cc.state.Store(stateActive)
	var handlers handlerGroup
	defer handlers.closeAndWait()
	b.h2.srv.ServeConn(cc.c, &http2.ServeConnOpts{
		BaseConfig: b.h2.base,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !handlers.enter() {
				return // the connection is gone: so is the stream
			}
			defer handlers.wg.Done()
			b.h2.streams.Add(1)
			defer b.h2.streams.Add(-1)
			cc.bridge(w, r)
		}),
	})
}

// handlerGroup counts a connection's stream handlers, which x/net/http2
// starts on goroutines of their own and does not wait for.
type handlerGroup struct {
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// enter counts a handler in, unless the group was closed.
func (g *handlerGroup) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.wg.Add(1)
	return true
}

// closeAndWait lets no handler in any more and waits for those in.
func (g *handlerGroup) closeAndWait() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.wg.Wait()
}

// bridge proxies one HTTP/2 stream of cc's connection: a clientConn of its
// own serves it, on this goroutine, over a streamConn.
func (cc *clientConn) bridge(w http.ResponseWriter, r *http.Request) {
	b := cc.b
	sc := newStreamConn(w, r, cc.c.LocalAddr(), cc.c.RemoteAddr(), b.cfg.MaxHeaderBytes, b.cfg.MaxHeaders)
	defer sc.release()
	inner := newClientConn(b, sc)
	inner.secure, inner.stream = true, true
	inner.peer, inner.trusted = cc.peer, cc.trusted
	inner.gone = r.Context().Done()
	inner.serve()
	switch sc.resp.state {
	case respDone:
	case respHead:
		// No answer relayed: the clientConn answers every request it
		// can, so its client went away, or the answer did not parse.
		if r.Context().Err() == nil {
			w.WriteHeader(http.StatusBadGateway)
		}
	default:
		// The answer ended short, or broke: reset the stream, so the
		// client does not take a cut body for a whole one.
		panic(http.ErrAbortHandler)
	}
}

// streamConn is the net.Conn a clientConn serves one HTTP/2 stream on. Its
// reads give the stream's request as HTTP/1.1: the head, then the body,
// chunked when the client gave no length, then the end of the connection.
// Its writes take the clientConn's HTTP/1.1 answer, parsed as it comes,
// into the stream's ResponseWriter. No goroutine and no copy between
// goroutines stand between the stream and the clientConn.
type streamConn struct {
	w             http.ResponseWriter
	rc            *http.ResponseController
	r             *http.Request
	local, remote net.Addr

	// The request: head (what is left of it), then the body.
	head     []byte
	headBuf  *[]byte
	chunked  bool
	bodyDone bool
	pend     []byte // chunk framing and data not yet read
	scratch  *[]byte
	closed   bool

	resp h1Answer
}

var h2BufPool = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

func newStreamConn(w http.ResponseWriter, r *http.Request, local, remote net.Addr, maxHead, maxHeaders int) *streamConn {
	s := &streamConn{w: w, rc: http.NewResponseController(w), r: r, local: local, remote: remote}
	s.resp = h1Answer{w: w, head: r.Method == http.MethodHead, maxHead: maxHead, maxHeaders: maxHeaders}
	s.headBuf = h2BufPool.Get().(*[]byte)
	s.head = appendH1Head((*s.headBuf)[:0], r)
	*s.headBuf = s.head
	switch {
	case r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0:
		s.bodyDone = true
	case r.ContentLength < 0:
		s.chunked = true
	}
	return s
}

func (s *streamConn) release() {
	h2BufPool.Put(s.headBuf)
	if s.scratch != nil {
		h2BufPool.Put(s.scratch)
	}
}

// appendH1Head appends r's head as HTTP/1.1: the request line, Host, the
// end-to-end fields, and the body's framing.
func appendH1Head(b []byte, r *http.Request) []byte {
	target := r.URL.RequestURI()
	if r.Method == http.MethodOptions && r.URL.Path == "*" {
		target = "*"
	}
	b = append(b, r.Method...)
	b = append(b, ' ')
	b = append(b, target...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, r.Host...)
	b = append(b, "\r\n"...)
	for k, vs := range r.Header {
		if h2Hop[k] {
			continue
		}
		for _, v := range vs {
			b = append(b, k...)
			b = append(b, ": "...)
			b = append(b, v...)
			b = append(b, "\r\n"...)
		}
	}
	switch {
	case r.ContentLength > 0:
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, r.ContentLength, 10)
		b = append(b, "\r\n"...)
	case r.ContentLength < 0 && r.Body != nil && r.Body != http.NoBody:
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
	}
	return append(b, "\r\n"...)
}

func (s *streamConn) Read(p []byte) (int, error) {
	if s.closed {
		return 0, net.ErrClosed
	}
	if len(s.head) > 0 {
		n := copy(p, s.head)
		s.head = s.head[n:]
		if len(s.head) == 0 && !s.bodyDone && !s.chunked && s.r.ContentLength <= int64(len(p)-n) {
			// A body that fits comes with the head, as a small one does
			// over HTTP/1.1, so that the request can be sent again to
			// another backend.
			m, err := io.ReadFull(s.r.Body, p[n:n+int(s.r.ContentLength)])
			n += m
			if err != nil {
				return n, s.bodyErr(err)
			}
			s.bodyDone = true
		}
		return n, nil
	}
	if len(s.pend) > 0 {
		n := copy(p, s.pend)
		s.pend = s.pend[n:]
		return n, nil
	}
	if s.bodyDone {
		// The request is whole: the clientConn's next read finds the
		// connection's end, after the answer.
		return 0, io.EOF
	}
	if !s.chunked {
		n, err := s.r.Body.Read(p)
		if errors.Is(err, io.EOF) {
			s.bodyDone = true
			return n, nil
		}
		return n, s.bodyErr(err)
	}
	if s.scratch == nil {
		s.scratch = h2BufPool.Get().(*[]byte)
	}
	buf := (*s.scratch)[:cap(*s.scratch)]
	const frame = 16 // room for the size line and the data's CRLF
	n, err := s.r.Body.Read(buf[frame : len(buf)-2])
	if n > 0 {
		line := strconv.AppendInt(buf[:0], int64(n), 16)
		line = append(line, "\r\n"...)
		start := frame - len(line)
		copy(buf[start:], line)
		end := frame + n
		buf[end], buf[end+1] = '\r', '\n'
		s.pend = buf[start : end+2]
	}
	if errors.Is(err, io.EOF) {
		s.bodyDone = true
		s.pend = append(s.pend, "0\r\n\r\n"...)
		err = nil
	}
	if err != nil {
		return 0, s.bodyErr(err)
	}
	return s.Read(p)
}

// bodyErr is what a read of the request body that failed gives the
// clientConn: a timeout when its deadline passed, or the error.
func (s *streamConn) bodyErr(err error) error {
	if err != nil && s.r.Context().Err() != nil {
		return net.ErrClosed
	}
	return err
}

func (s *streamConn) Write(p []byte) (int, error) {
	if s.closed {
		return 0, net.ErrClosed
	}
	if err := s.resp.write(p); err != nil {
		return 0, err
	}
	if s.resp.state != respHead && s.resp.state != respDone {
		// Send what the backend sent so far, as a stream (server-sent
		// events, say) needs; a whole answer goes with the stream's end.
		_ = s.rc.Flush()
	}
	return len(p), nil
}

func (s *streamConn) Close() error {
	if !s.closed {
		s.closed = true
		s.resp.closed()
	}
	return nil
}

func (s *streamConn) LocalAddr() net.Addr  { return s.local }
func (s *streamConn) RemoteAddr() net.Addr { return s.remote }
func (s *streamConn) SetDeadline(t time.Time) error {
	_ = s.rc.SetReadDeadline(t)
	_ = s.rc.SetWriteDeadline(t)
	return nil
}
func (s *streamConn) SetReadDeadline(t time.Time) error {
	_ = s.rc.SetReadDeadline(t)
	return nil
}
func (s *streamConn) SetWriteDeadline(t time.Time) error {
	_ = s.rc.SetWriteDeadline(t)
	return nil
}

// Answer states: the head is awaited; the body is relayed with a length,
// in chunks, or up to the connection's end; the answer is whole.
const (
	respHead = iota
	respLength
	respChunkSize
	respChunkData
	respChunkEnd
	respTrailer
	respToClose
	respDone
)

// h1Answer parses an HTTP/1.1 answer written to it in parts, and relays it
// to w.
type h1Answer struct {
	w                   http.ResponseWriter
	head                bool // answering a HEAD request
	maxHead, maxHeaders int

	state  int
	buf    []byte // an incomplete head or line
	left   int64  // body bytes left: of the length, or of the chunk
	parsed h1.Response
	// failed: the answer did not parse.
	failed bool
}

var errBadAnswer = errors.New("http2 bridge: the answer does not parse")

func (a *h1Answer) write(p []byte) error {
	for len(p) > 0 {
		switch a.state {
		case respHead, respChunkSize, respTrailer:
			joined := append(a.buf, p...)
			end := -1
			if a.state == respHead {
				if e := h1.HeadEnd(joined, len(a.buf)); e >= 0 {
					end = e - len(a.buf)
				}
			} else if i := bytes.Index(joined, crlf); i >= 0 {
				end = i + 2 - len(a.buf)
			}
			if end < 0 {
				a.buf = joined
				if len(a.buf) > a.maxHead {
					return a.fail()
				}
				return nil
			}
			whole := joined[:len(a.buf)+end]
			p = p[end:]
			a.buf = a.buf[:0]
			var err error
			switch a.state {
			case respHead:
				err = a.startBody(whole)
			case respChunkSize:
				err = a.chunk(whole)
			case respTrailer:
				if len(whole) == 2 { // the empty line: the answer is whole
					a.state = respDone
				}
			}
			if err != nil {
				return err
			}
		case respLength, respChunkData:
			n := int64(len(p))
			if n > a.left {
				n = a.left
			}
			if _, err := a.w.Write(p[:n]); err != nil {
				return err
			}
			p, a.left = p[n:], a.left-n
			if a.left == 0 {
				if a.state == respLength {
					a.state = respDone
				} else {
					a.state = respChunkEnd
				}
			}
		case respChunkEnd:
			need := 2 - len(a.buf)
			if need > len(p) {
				need = len(p)
			}
			a.buf = append(a.buf, p[:need]...)
			p = p[need:]
			if len(a.buf) == 2 {
				if !bytes.Equal(a.buf, crlf) {
					return a.fail()
				}
				a.buf = a.buf[:0]
				a.state = respChunkSize
			}
		case respToClose:
			if _, err := a.w.Write(p); err != nil {
				return err
			}
			return nil
		case respDone:
			return nil // nothing follows a whole answer on this connection
		}
	}
	return nil
}

var crlf = []byte("\r\n")

func (a *h1Answer) fail() error {
	a.failed = true
	return errBadAnswer
}

// startBody relays the answer's head and readies for its body.
func (a *h1Answer) startBody(head []byte) error {
	if err := h1.ParseResponse(head, &a.parsed, a.maxHeaders); err != nil {
		return a.fail()
	}
	resp := &a.parsed
	if resp.Status < 200 {
		return nil // 1xx: informational, not relayed; the next head follows
	}
	h := a.w.Header()
	for i := range resp.Headers {
		f := &resp.Headers[i]
		if f.Kind != h1.KindOther && f.Kind != h1.KindXForwardedFor && f.Kind != h1.KindXForwardedProto && f.Kind != h1.KindXForwardedHost {
			continue
		}
		if resp.ConnTokens && h1.ConnectionNames(resp.Headers, f.Name) {
			continue
		}
		name := http.CanonicalHeaderKey(string(f.Name))
		if h2Hop[name] {
			continue
		}
		h[name] = append(h[name], string(f.Value))
	}
	bodyless := a.head || resp.Status == 204 || resp.Status == 304
	if resp.ContentLength >= 0 && !bodyless {
		h.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	a.w.WriteHeader(resp.Status)
	switch {
	case bodyless || resp.ContentLength == 0:
		a.state = respDone
	case resp.Chunked:
		a.state = respChunkSize
	case resp.ContentLength > 0:
		a.state, a.left = respLength, resp.ContentLength
	default:
		a.state = respToClose
	}
	return nil
}

// chunk reads a chunk's size line.
func (a *h1Answer) chunk(line []byte) error {
	n, err := h1.ParseChunkSize(line[:len(line)-2])
	if err != nil {
		return a.fail()
	}
	if n == 0 {
		a.state = respTrailer
		return nil
	}
	a.state, a.left = respChunkData, n
	return nil
}

// closed is the connection's end: it ends an answer delimited by it.
func (a *h1Answer) closed() {
	if a.state == respToClose {
		a.state = respDone
	}
}
