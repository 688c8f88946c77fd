package balancer

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hostscale/hostscale/balancer/internal/h1"
	"github.com/hostscale/hostscale/internal/sockpeek"
)

const (
	stateIdle int32 = iota
	stateActive
)

// clientConn serves one client connection: requests are read, routed and
// proxied one after another (HTTP/1.1 keep-alive, pipelining in order).
type clientConn struct {
	side
	b       *Balancer
	state   atomic.Int32
	peer    string
	trusted bool
	// secure: the client came over TLS.
	secure bool
	// stream: the connection is one HTTP/2 stream's (bridge), whose
	// client is peer; gone is closed when that client resets the stream
	// or its connection ends.
	stream  bool
	gone    <-chan struct{}
	req     h1.Request
	resp    h1.Response
	scratch [24]byte
	// linger: an error answer was sent while the client may still be
	// sending; drain before closing so the answer is not lost to a reset.
	linger bool
	// rec is the request's access log record, with Config.AccessLog.
	rec accessRecord
}

// Lingering close bounds (the answer to a rejected request must reach a
// client still writing, as RFC 9112 §9.6 advises).
const (
	lingerTime  = time.Second
	lingerBytes = 4 << 20
)

func (cc *clientConn) lingerClose() {
	closeWrite(cc.c)
	_ = cc.c.SetReadDeadline(time.Now().Add(lingerTime))
	_, _ = io.CopyN(io.Discard, cc.c, lingerBytes)
}

func newClientConn(b *Balancer, c net.Conn) *clientConn {
	cc := &clientConn{b: b}
	cc.init(c)
	_, cc.secure = c.(*tls.Conn)
	return cc
}

// identify names the client: the socket's peer or, on a connection of a
// ProxyProtocolListener, the source its PROXY header gives, which it reads
// (on serve's goroutine, not the accepting one). It reports false, having
// counted it, for a connection without a valid header.
func (cc *clientConn) identify() bool {
	raw := cc.c
	if tc, ok := raw.(*tls.Conn); ok {
		raw = tc.NetConn()
	}
	if pc, ok := raw.(*proxiedConn); ok && pc.ProxyHeader() == nil {
		cc.b.counters.noProxyHeader.Add(1)
		cc.b.log.Debug("connection without a valid PROXY protocol header closed", "peer", pc.Raw().RemoteAddr().String())
		return false
	}
	ip := peerAddr(cc.c)
	cc.peer = ip.String()
	cc.trusted = ip.IsValid() && cc.b.trusted.contains(ip)
	return true
}

// close may be called from any goroutine; it unblocks serve.
func (cc *clientConn) close() { cc.c.Close() }

func (cc *clientConn) serve() {
	defer func() {
		if r := recover(); r != nil {
			cc.b.log.Error("panic serving connection", "peer", cc.peer, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		}
		if cc.linger {
			cc.lingerClose()
		}
		cc.c.Close()
		cc.release()
	}()
	if !cc.stream && !cc.identify() {
		return
	}
	if cc.b.h2 != nil && !cc.stream {
		h2, ok := cc.negotiateH2()
		if !ok {
			return
		}
		if h2 {
			cc.serveH2()
			return
		}
	}
	cfg := &cc.b.cfg
	for first := true; ; first = false {
		cc.state.Store(stateIdle)
		if cc.b.shutting.Load() && !(cc.stream && first) {
			// An HTTP/2 stream the connection took before its GOAWAY is
			// answered, as a request in flight is.
			return
		}
		headLen, err := cc.readHead(first)
		if err != nil {
			switch {
			case errors.Is(err, h1.ErrHeadTooLarge):
				cc.logBegin()
				cc.replyLocal(431, false)
				cc.logEnd()
			case isTimeout(err) && cc.rd.Buffered() > 0:
				cc.logBegin()
				cc.replyLocal(408, false)
				cc.logEnd()
			}
			return
		}
		cc.state.Store(stateActive)
		cc.b.counters.requests.Add(1)
		cc.logBegin()
		if err := h1.ParseRequest(cc.rd.Peek(headLen), &cc.req, cfg.MaxHeaders); err != nil {
			cc.replyLocal(statusForParseError(err), false)
			cc.logEnd()
			return
		}
		if cc.b.cfg.AccessLog != nil {
			cc.rec.capture(&cc.req)
		}
		keep := cc.handle(headLen)
		cc.logEnd()
		if !keep {
			return
		}
	}
}

// logBegin starts the access log record of a request, with
// Config.AccessLog.
func (cc *clientConn) logBegin() {
	if cc.b.cfg.AccessLog != nil {
		cc.rec.begin(cc.secure, cc.stream)
	}
}

// logEnd logs the request, with Config.AccessLog.
func (cc *clientConn) logEnd() {
	if l := cc.b.cfg.AccessLog; l != nil {
		l.add(&cc.rec, cc.peer, monoNow())
	}
}

func statusForParseError(err error) int {
	switch {
	case errors.Is(err, h1.ErrTooManyHeaders):
		return 431
	case errors.Is(err, h1.ErrUnsupportedTransferEncoding):
		return 501
	case errors.Is(err, h1.ErrVersion):
		return 505
	}
	return 400
}

// readHead waits for a complete request head and returns its length. A new
// connection gets HeaderTimeout from accept; a kept-alive one may idle for
// IdleTimeout and then gets HeaderTimeout from the first byte of the head.
func (cc *clientConn) readHead(first bool) (int, error) {
	cfg := &cc.b.cfg
	if head, ok := cc.rd.Head(); ok {
		return len(head), nil
	}
	started := first || cc.rd.Buffered() > 0
	if started {
		cc.rdl.exact(cc.c.SetReadDeadline, monoNow(), cfg.HeaderTimeout)
	} else {
		cc.extendRead(monoNow(), cfg.IdleTimeout)
	}
	for {
		n, err := cc.rd.Fill(cfg.MaxHeaderBytes)
		if n > 0 {
			if head, ok := cc.rd.Head(); ok {
				return len(head), nil
			}
			if !started && cc.rd.Buffered() > 0 {
				started = true
				cc.rdl.exact(cc.c.SetReadDeadline, monoNow(), cfg.HeaderTimeout)
			}
		}
		if err != nil {
			return 0, err
		}
	}
}

type outcomeKind uint8

const (
	// outDone: the client got a response (or its connection is broken).
	outDone outcomeKind = iota
	// outRetry: nothing reached the client and the backend saw no complete
	// exchange; another backend may be tried.
	outRetry
	// outFailed: nothing reached the client, and the request cannot be sent again.
	outFailed
)

type outcome struct {
	kind outcomeKind
	keep bool // outDone: the client connection stays open
	// outRetry details.
	connect bool // the connect failed: nothing was sent
	stale   bool // a reused connection failed before any response byte
	timeout bool
	// outFailed: the status to answer, and whether the request body was
	// (partly) consumed.
	code         int
	bodyConsumed bool
}

// handle proxies the request whose head (headLen bytes) is at the front of the
// read buffer and reports whether the connection stays open.
func (cc *clientConn) handle(headLen int) bool {
	b := cc.b
	req := &cc.req
	snap := b.snap.Load()
	var ps *poolSnap
	if snap != nil {
		ps = snap.router.lookup(req.Host, req.Target)
	}
	if ps == nil {
		code := 404
		if snap == nil {
			code = 503
		}
		return cc.replySkippingBody(code, headLen, false)
	}
	cc.rec.pool = ps.state.name
	if ps.httpsRedirect && !cc.overTLS() {
		return cc.redirectHTTPS(headLen)
	}
	be := ps.picker.pick(monoNow(), nil)
	if be == nil {
		// No backend can take a request: the pool has none, or only draining
		// ones (ejected ones are picked when nothing else is).
		ps.state.unserved.Add(1)
		if ps.hold <= 0 || ps.state.waiting.Load() >= int64(b.cfg.MaxHeldPerPool) {
			return cc.replySkippingBody(503, headLen, false)
		}
		var code int
		if ps, be, code = cc.hold(snap, ps); be == nil {
			if code == clientGone {
				return false
			}
			return cc.replySkippingBody(code, headLen, false)
		}
	}
	buffered := int64(cc.rd.Buffered() - headLen)
	replayable := !req.Chunked && (req.ContentLength <= 0 || buffered >= req.ContentLength)
	idempotent := h1.IsIdempotent(req.Method)
	st := ps.state
	st.active.Add(1)
	defer st.active.Add(-1)
	var exclude *backend
	retried, staleRetried, counted := false, false, false
	defer func() {
		if counted {
			st.retries.Add(-1)
		}
	}()
	for {
		out := cc.attempt(ps, be, headLen, replayable, staleRetried)
		switch out.kind {
		case outDone:
			return out.keep
		case outFailed:
			return cc.replySkippingBody(out.code, headLen, out.bodyConsumed)
		}
		rc := &b.cfg.Retry
		if out.stale && !staleRetried && (idempotent && replayable) {
			// A kept-alive connection the backend had closed: not a failure
			// of the backend, so try again on a fresh connection, outside
			// the retry budget.
			staleRetried = true
		} else {
			may := rc.Enabled && !retried && (out.connect || idempotent && replayable)
			if may {
				may = st.reserveRetry(rc.BudgetPercent, rc.MinConcurrent)
			}
			if !may {
				code := 502
				if out.timeout {
					code = 504
				}
				return cc.replySkippingBody(code, headLen, false)
			}
			retried = true
			exclude = be
			b.counters.retries.Add(1)
			counted = true
		}
		if be = ps.picker.pick(monoNow(), exclude); be == nil {
			code := 503
			if exclude != nil {
				code = 502
			}
			return cc.replySkippingBody(code, headLen, false)
		}
	}
}

// clientGone is hold's status for a request whose client closed its
// connection: the request is dropped, unanswered.
const clientGone = -1

// holdPeekEvery is how often a held request's connection is checked for
// the client's end of stream.
const holdPeekEvery = 250 * time.Millisecond

// hold keeps a request whose pool ps (in snap) has no backend to take it
// until a newer table routes it to a pool with one, and returns that pool and
// a backend picked from it. Otherwise it returns a nil backend and the
// status to answer: 503 once the pool's hold has passed since the wait began
// or when the balancer shuts down, 404 when a table no longer routes the
// request (as for a request arriving then). Each table is judged as if the
// request arrived with it: its route may lead to another pool, whose hold
// then bounds the wait. Nothing of the request beyond its head is read
// meanwhile, and the caller then proxies it as any other. A client that
// closes its connection meanwhile (seen when nothing else of it waits to be
// read) ends the wait with clientGone, as HAProxy's abortonclose does: it
// no longer counts as waiting nor takes a place under -max-held.
func (cc *clientConn) hold(snap *snapshot, ps *poolSnap) (*poolSnap, *backend, int) {
	b := cc.b
	req := &cc.req
	st := ps.state
	st.waiting.Add(1)
	defer func() { st.waiting.Add(-1) }()
	b.signalHeld()
	start := time.Now()
	timer := time.NewTimer(ps.hold)
	defer timer.Stop()
	var peek <-chan time.Time
	if sockpeek.Conn(cc.c) != sockpeek.Unknown {
		t := time.NewTicker(holdPeekEvery)
		defer t.Stop()
		peek = t.C
	}
	for {
		select {
		case <-snap.replaced:
		case <-peek:
			if sockpeek.Conn(cc.c) == sockpeek.Closed {
				st.held[heldGone].Add(1)
				return nil, nil, clientGone
			}
			continue
		case <-cc.gone:
			st.held[heldGone].Add(1)
			return nil, nil, clientGone
		case <-timer.C:
			st.held[heldTimedOut].Add(1)
			return nil, nil, 503
		case <-b.closing:
			st.held[heldClosed].Add(1)
			return nil, nil, 503
		}
		snap = b.snap.Load()
		next := snap.router.lookup(req.Host, req.Target)
		if next == nil {
			st.held[heldRemoved].Add(1)
			return nil, nil, 404
		}
		if be := next.picker.pick(monoNow(), nil); be != nil {
			st.held[heldServed].Add(1)
			return next, be, 0
		}
		if next.state != st {
			// Another pool takes the route now (or the pool left the table
			// and came back): the request waits on its account.
			next.state.unserved.Add(1)
			next.state.waiting.Add(1)
			st.waiting.Add(-1)
			st = next.state
			b.signalHeld()
		}
		if next.hold != ps.hold {
			left := next.hold - time.Since(start)
			if left <= 0 {
				st.held[heldTimedOut].Add(1)
				return nil, nil, 503
			}
			timer.Reset(left)
		}
		ps = next
	}
}

// attempt sends the request to be and relays the response.
// With fresh it dials a new connection instead of reusing a pooled one.
func (cc *clientConn) attempt(ps *poolSnap, be *backend, headLen int, replayable, fresh bool) outcome {
	b := cc.b
	cfg := &b.cfg
	st := ps.state
	req := &cc.req
	start := monoNow()
	be.stats.enter(start)
	defer be.stats.leave()
	cc.rec.pool, cc.rec.backend = be.pool, be.addr

	var uc *upConn
	if !fresh {
		uc = be.conns.get(start, int64(cfg.UpstreamIdleTimeout))
	}
	if uc != nil && !(h1.IsIdempotent(req.Method) && replayable) && !uc.alive() {
		// This request could not be sent again after a failure: do not risk
		// it on a connection the backend already closed.
		uc.close()
		uc = be.conns.get(start, int64(cfg.UpstreamIdleTimeout))
		if uc != nil && !uc.alive() {
			uc.close()
			uc = nil
		}
	}
	reused := uc != nil
	if uc == nil {
		var err error
		uc, err = b.dial(be)
		if err != nil {
			be.stats.observe(time.Duration(monoNow()-start), true)
			b.reportFailure(st, be)
			b.log.Debug("connect failed", "pool", be.pool, "backend", be.addr, "err", err)
			return outcome{kind: outRetry, connect: true, timeout: isTimeout(err)}
		}
	}
	// Everything needed from the request head after it was forwarded.
	isHead := string(req.Method) == "HEAD"
	clientMinor := req.Minor
	clientKeep := req.KeepAlive
	upgrade := req.Upgrade
	hasBody := req.HasBody()
	chunkedReq := req.Chunked
	bodyLen := req.ContentLength

	writeRequestHead(uc.bw, req, cc.peer, cc.trusted, cc.secure, cc.scratch[:])
	consumed := headLen
	streaming := hasBody && !replayable
	if hasBody && replayable {
		body := cc.rd.Peek(headLen + int(bodyLen))[headLen:]
		uc.bw.Write(body)
		consumed += len(body)
	}
	if err := flush(&uc.side, cfg.IdleTimeout); err != nil {
		uc.close()
		if !reused {
			b.reportFailure(st, be)
		}
		be.stats.observe(time.Duration(monoNow()-start), !reused)
		return outcome{kind: outRetry, stale: reused}
	}
	var bodyDone chan error
	if streaming {
		cc.rd.Discard(headLen)
		consumed = 0
		bodyDone = make(chan error, 1)
		go cc.sendBody(uc, chunkedReq, bodyLen, bodyDone)
	}
	// abortBody stops a body still streaming and reports whether the body
	// was sent whole.
	abortBody := func() error {
		if bodyDone == nil {
			return nil
		}
		var err error
		select {
		case err = <-bodyDone:
		default:
			// Stop reading the client and writing the backend; neither
			// connection is reused after an unfinished body.
			_ = cc.c.SetReadDeadline(time.Unix(1, 0))
			_ = uc.c.SetWriteDeadline(time.Unix(1, 0))
			err = <-bodyDone
			// The body may have been sent whole just before; both
			// connections then stay usable, with fresh deadlines.
			cc.rdl.last = 0
			uc.wdl.last = 0
		}
		bodyDone = nil
		return err
	}

	resp := &cc.resp
	uc.extendRead(monoNow(), cfg.ResponseHeaderTimeout)
	var respLen int
	for {
		n, got, err := readResponseHead(uc, cfg.MaxHeaderBytes)
		if err == nil {
			err = h1.ParseResponse(uc.rd.Peek(n), resp, cfg.MaxHeaders)
			if err != nil {
				got = 1
			}
		}
		if err != nil {
			uc.c.Close() // unblocks a body still being sent
			bodyErr := abortBody()
			uc.release()
			elapsed := time.Duration(monoNow() - start)
			timeout := isTimeout(err)
			switch {
			case bodyErr != nil:
				// The client's body failed (malformed, or the client went away
				// or stalled): not the backend's fault, and the client
				// connection is unusable.
				be.stats.observe(elapsed, false)
				if isFramingError(bodyErr) {
					cc.writeLocal(400, false)
				}
				return outcome{kind: outDone}
			case got == 0 && !streaming && !timeout && reused:
				// A kept-alive connection closed under us: the backend never
				// saw this request.
				be.stats.observe(elapsed, false)
				return outcome{kind: outRetry, stale: true}
			}
			be.stats.observe(elapsed, true)
			b.reportFailure(st, be)
			b.log.Debug("backend response failed", "pool", be.pool, "backend", be.addr, "err", err)
			switch {
			case timeout:
				return outcome{kind: outFailed, code: 504, bodyConsumed: streaming}
			case got == 0 && !streaming:
				return outcome{kind: outRetry}
			}
			return outcome{kind: outFailed, code: 502, bodyConsumed: streaming}
		}
		if resp.Status >= 100 && resp.Status < 200 && resp.Status != 101 {
			if clientMinor == 1 {
				writeResponseHead(cc.bw, resp, clientMinor, false, -1, false, cc.scratch[:])
				_ = flush(&cc.side, cfg.IdleTimeout)
			}
			uc.rd.Discard(n)
			continue
		}
		respLen = n
		break
	}
	// Committed to this backend: the request is no longer needed.
	if consumed > 0 {
		cc.rd.Discard(consumed)
	}

	status := resp.Status
	cc.rec.status, cc.rec.pool, cc.rec.backend = status, be.pool, be.addr
	if status == 101 {
		if !upgrade {
			uc.c.Close()
			abortBody()
			uc.release()
			be.stats.observe(time.Duration(monoNow()-start), true)
			return outcome{kind: outFailed, code: 502, bodyConsumed: streaming}
		}
		return cc.tunnel(uc, respLen, start)
	}
	noBody := isHead || status == 204 || status == 304
	closing := !clientKeep || b.shutting.Load()
	upKeep := resp.KeepAlive
	chunkedOut := false
	length := int64(-1)
	switch {
	case noBody:
		length = resp.ContentLength
	case resp.Chunked:
		if clientMinor == 1 {
			chunkedOut = true
		} else {
			closing = true
		}
	case resp.ContentLength >= 0:
		length = resp.ContentLength
	default:
		closing, upKeep = true, false
	}
	writeResponseHead(cc.bw, resp, clientMinor, chunkedOut, length, closing, cc.scratch[:])
	uc.rd.Discard(respLen)

	var err error
	var sent int64
	switch {
	case noBody:
	case resp.Chunked:
		sent, err = copyChunked(&cc.side, &uc.side, chunkedOut, cfg.IdleTimeout)
	case length >= 0:
		sent, err = copyFixed(&cc.side, &uc.side, length, cfg.IdleTimeout)
	default:
		sent, err = copyUntilEOF(&cc.side, &uc.side, cfg.IdleTimeout)
	}
	cc.rec.bytes = sent
	if err == nil {
		err = flush(&cc.side, cfg.IdleTimeout)
	}
	if abortBody() != nil {
		closing, upKeep = true, false
	}
	failed := status >= 500 || err != nil
	be.stats.observe(time.Duration(monoNow()-start), failed)
	now := monoNow()
	if status >= 500 {
		if st.report5xx(be, now, &cfg.Health) {
			b.ejected(be)
		}
	} else if err == nil {
		st.reportSuccess(be, now, cfg.Health.BaseEjection)
	}
	if err != nil || !upKeep || uc.rd.Buffered() != 0 {
		uc.close()
	} else {
		be.conns.put(uc, now, cfg.MaxIdlePerBackend)
	}
	if err != nil {
		return outcome{kind: outDone}
	}
	return outcome{kind: outDone, keep: !closing}
}

// sendBody streams the request body to the backend; it runs beside the
// response read so a backend may answer (or ask for 100-continue) early.
func (cc *clientConn) sendBody(uc *upConn, chunked bool, n int64, done chan<- error) {
	defer func() {
		if r := recover(); r != nil {
			cc.b.log.Error("panic sending body", "panic", fmt.Sprint(r))
			done <- fmt.Errorf("panic: %v", r)
		}
	}()
	idle := cc.b.cfg.IdleTimeout
	var err error
	if chunked {
		_, err = copyChunked(&uc.side, &cc.side, true, idle)
	} else {
		_, err = copyFixed(&uc.side, &cc.side, n, idle)
	}
	if err == nil {
		err = flush(&uc.side, idle)
	}
	if err != nil {
		// Unblock the response read: the backend will never see the whole request.
		uc.c.Close()
	}
	done <- err
}

// tunnel relays an upgraded connection (WebSocket) both ways until both
// directions end. Table updates do not affect it.
func (cc *clientConn) tunnel(uc *upConn, respLen int, start int64) outcome {
	writeResponseHead(cc.bw, &cc.resp, 1, false, -1, false, cc.scratch[:])
	uc.rd.Discard(respLen)
	err := cc.bw.Flush()
	uc.be.stats.observe(time.Duration(monoNow()-start), false)
	if err != nil {
		uc.close()
		return outcome{kind: outDone}
	}
	cc.rdl.exact(cc.c.SetReadDeadline, 0, 0)
	cc.wdl.exact(cc.c.SetWriteDeadline, 0, 0)
	uc.rdl.exact(uc.c.SetReadDeadline, 0, 0)
	uc.wdl.exact(uc.c.SetWriteDeadline, 0, 0)
	done := make(chan error, 1)
	go func() {
		err := pipe(&uc.side, &cc.side)
		if err != nil {
			uc.c.Close()
			cc.c.Close()
		} else {
			closeWrite(uc.c)
		}
		done <- err
	}()
	if err := pipe(&cc.side, &uc.side); err != nil {
		uc.c.Close()
		cc.c.Close()
	} else {
		closeWrite(cc.c)
	}
	<-done
	uc.close()
	return outcome{kind: outDone}
}

func isFramingError(err error) bool {
	return errors.Is(err, h1.ErrMalformed) || errors.Is(err, h1.ErrLineTooLong) ||
		errors.Is(err, errTrailer) || errors.Is(err, io.ErrUnexpectedEOF)
}

func readResponseHead(uc *upConn, max int) (n, got int, err error) {
	got = uc.rd.Buffered()
	for {
		if head, ok := uc.rd.Head(); ok {
			return len(head), got + 1, nil
		}
		k, err := uc.rd.Fill(max)
		got += k
		if err != nil {
			if err == io.EOF && got > 0 {
				err = io.ErrUnexpectedEOF
			}
			return 0, got, err
		}
	}
}

func (b *Balancer) reportFailure(st *poolState, be *backend) {
	if st.reportFailure(be, monoNow(), &b.cfg.Health) {
		b.ejected(be)
	}
}

func (b *Balancer) ejected(be *backend) {
	b.counters.ejections.Add(1)
	b.log.Warn("backend ejected", "pool", be.pool, "backend", be.addr,
		"ejections", be.health.ejections.Load())
}

// replySkippingBody answers with a local status. The connection stays open
// when the request allows it and its body, if any, is already buffered (and is
// skipped); consumed reports a body partly read already.
func (cc *clientConn) replySkippingBody(code, headLen int, consumed bool) bool {
	keep := cc.skipRequest(headLen, consumed)
	cc.writeLocal(code, keep)
	return keep
}

// skipRequest drops the request (head and buffered body) from the read
// buffer when the connection can stay open after a local answer, and
// reports whether it can.
func (cc *clientConn) skipRequest(headLen int, consumed bool) bool {
	req := &cc.req
	keep := req.KeepAlive && req.Minor == 1 && !consumed && !cc.b.shutting.Load()
	if keep {
		switch {
		case !req.HasBody():
			cc.rd.Discard(headLen)
		case !req.Chunked && int64(cc.rd.Buffered()-headLen) >= req.ContentLength:
			cc.rd.Discard(headLen + int(req.ContentLength))
		default:
			keep = false
		}
	}
	return keep
}

// overTLS reports whether the request came over TLS: to this balancer, or
// to a trusted proxy in front that says so in X-Forwarded-Proto.
func (cc *clientConn) overTLS() bool {
	if cc.secure {
		return true
	}
	if !cc.trusted {
		return false
	}
	for i := range cc.req.Headers {
		if h := &cc.req.Headers[i]; h.Kind == h1.KindXForwardedProto && bytes.EqualFold(bytes.TrimSpace(h.Value), []byte("https")) {
			return true
		}
	}
	return false
}

// redirectHTTPS answers 308 Permanent Redirect to the request's URL over
// https, on this balancer's TLS port; a request without a Host gets 400.
func (cc *clientConn) redirectHTTPS(headLen int) bool {
	req := &cc.req
	host := string(req.Host)
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if host == "" || strings.ContainsAny(host, "/?#@\\ \t") {
		// Nowhere to send it, or a host that would make another URL.
		return cc.replySkippingBody(400, headLen, false)
	}
	if strings.IndexByte(host, ':') >= 0 {
		host = "[" + host + "]" // an IPv6 address
	}
	if cc.b.httpsPort != "" {
		host += ":" + cc.b.httpsPort
	}
	target := string(req.Target)
	if !strings.HasPrefix(target, "/") {
		// Absolute form (http://host/path) or "*": the path only.
		target = "/"
		if rest, ok := strings.CutPrefix(string(req.Target), "http://"); ok {
			if i := strings.IndexByte(rest, '/'); i >= 0 {
				target = rest[i:]
			}
		}
	}
	keep := cc.skipRequest(headLen, false)
	cc.b.counters.local[localIndex(308)].Add(1)
	cc.rec.status = 308
	w := cc.bw
	w.WriteString("HTTP/1.1 308 Permanent Redirect\r\nLocation: https://")
	w.WriteString(host)
	w.WriteString(target)
	w.WriteString("\r\nContent-Length: 0\r\n")
	if !keep {
		w.WriteString("Connection: close\r\n")
		cc.linger = true
	}
	w.WriteString("\r\n")
	_ = flush(&cc.side, cc.b.cfg.IdleTimeout)
	return keep
}

// replyLocal answers a request that could not be parsed; the connection closes.
func (cc *clientConn) replyLocal(code int, keep bool) { cc.writeLocal(code, keep) }

func (cc *clientConn) writeLocal(code int, keep bool) {
	i := localIndex(code)
	cc.b.counters.local[i].Add(1)
	r := &localReplies[i]
	cc.rec.status, cc.rec.bytes = code, int64(r.bodyLen)
	msg := r.close
	if keep {
		msg = r.keep
	} else {
		cc.linger = true
	}
	cc.bw.Write(msg)
	_ = flush(&cc.side, cc.b.cfg.IdleTimeout)
}

var localCodes = [...]int{400, 404, 408, 431, 501, 502, 503, 504, 505, 308, 500}

var localText = map[int]string{
	400: "Bad Request", 404: "Not Found", 408: "Request Timeout",
	431: "Request Header Fields Too Large", 501: "Not Implemented", 502: "Bad Gateway",
	503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported",
	500: "Internal Server Error", 308: "Permanent Redirect",
}

type localReply struct {
	keep, close []byte
	bodyLen     int
}

var localReplies = func() (out [len(localCodes)]localReply) {
	for i, code := range localCodes {
		text := localText[code]
		body := strconv.Itoa(code) + " " + text + "\n"
		head := "HTTP/1.1 " + strconv.Itoa(code) + " " + text + "\r\n" +
			"Content-Type: text/plain; charset=utf-8\r\n" +
			"Content-Length: " + strconv.Itoa(len(body)) + "\r\n"
		out[i].bodyLen = len(body)
		out[i].keep = []byte(head + "\r\n" + body)
		out[i].close = []byte(head + "Connection: close\r\n\r\n" + body)
	}
	return out
}()

func localIndex(code int) int {
	for i, c := range localCodes {
		if c == code {
			return i
		}
	}
	return len(localCodes) - 1
}
