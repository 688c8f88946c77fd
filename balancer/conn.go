package balancer

import (
	"bufio"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/hostscale/hostscale/balancer/internal/h1"
	"github.com/hostscale/hostscale/internal/sockpeek"
)

var syscallEMFILE = syscall.EMFILE

// deadline tracks the last deadline set on one direction of a connection so
// the hot path can skip resetting it: a deadline is moved only when the wanted
// one is earlier, or later by more than a slack of min(1s, timeout/8). The
// effective timeout is therefore between timeout−slack and timeout.
type deadline struct {
	last int64 // monoNow of the deadline in force; 0: none
}

func (d *deadline) extend(set func(time.Time) error, now int64, timeout time.Duration) {
	want := now + int64(timeout)
	slack := int64(timeout) / 8
	if slack > int64(time.Second) {
		slack = int64(time.Second)
	}
	if d.last != 0 && want >= d.last && want-d.last < slack {
		return
	}
	d.last = want
	_ = set(time.Now().Add(timeout))
}

// exact sets the deadline to now+timeout; a zero timeout clears it.
func (d *deadline) exact(set func(time.Time) error, now int64, timeout time.Duration) {
	if timeout == 0 {
		d.last = 0
		_ = set(time.Time{})
		return
	}
	d.last = now + int64(timeout)
	_ = set(time.Now().Add(timeout))
}

// side is one connection of a proxied exchange with its buffers.
type side struct {
	c   net.Conn
	rd  *h1.Reader
	bw  *bufio.Writer
	rdl deadline
	wdl deadline
}

var writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4096) }}

func (s *side) init(c net.Conn) {
	s.c = c
	s.rd = h1.NewReader(c)
	s.bw = writerPool.Get().(*bufio.Writer)
	s.bw.Reset(c)
}

func (s *side) release() {
	if s.rd != nil {
		s.rd.Release()
		s.rd = nil
	}
	if s.bw != nil {
		s.bw.Reset(nil)
		writerPool.Put(s.bw)
		s.bw = nil
	}
}

func (s *side) extendRead(now int64, d time.Duration)  { s.rdl.extend(s.c.SetReadDeadline, now, d) }
func (s *side) extendWrite(now int64, d time.Duration) { s.wdl.extend(s.c.SetWriteDeadline, now, d) }

// upConn is a connection to a backend.
type upConn struct {
	side
	be        *backend
	idleSince int64
	rc        syscall.RawConn // nil when the connection is not a socket
}

// alive peeks at a pooled connection without blocking: a backend that closed
// it while idle has left an EOF (or unexpected bytes) behind. Used before
// sending a request that could not be sent again, to narrow the race with a
// backend's idle timeout.
func (uc *upConn) alive() bool {
	return uc.rc == nil || sockpeek.Raw(uc.rc) == sockpeek.Empty
}

// connPool keeps idle keep-alive connections to one backend, most recently
// used first out, so surplus connections age out.
type connPool struct {
	mu   sync.Mutex
	idle []*upConn
}

// get returns a pooled connection idle less than maxIdle, or nil.
func (p *connPool) get(now, maxIdle int64) *upConn {
	p.mu.Lock()
	for n := len(p.idle); n > 0; n = len(p.idle) {
		uc := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		if now-uc.idleSince < maxIdle {
			p.mu.Unlock()
			return uc
		}
		p.mu.Unlock()
		uc.close()
		p.mu.Lock()
	}
	p.mu.Unlock()
	return nil
}

// put pools uc, or closes it when the backend was removed or the pool is full.
func (p *connPool) put(uc *upConn, now int64, max int) {
	if uc.be.removed.Load() {
		uc.close()
		return
	}
	uc.idleSince = now
	p.mu.Lock()
	if len(p.idle) >= max {
		p.mu.Unlock()
		uc.close()
		return
	}
	p.idle = append(p.idle, uc)
	p.mu.Unlock()
}

// closeIdle closes connections idle at least maxIdle (all with all set).
func (p *connPool) closeIdle(now, maxIdle int64, all bool) {
	var stale []*upConn
	p.mu.Lock()
	kept := p.idle[:0]
	for _, uc := range p.idle {
		if all || now-uc.idleSince >= maxIdle {
			stale = append(stale, uc)
		} else {
			kept = append(kept, uc)
		}
	}
	clear(p.idle[len(kept):])
	p.idle = kept
	p.mu.Unlock()
	for _, uc := range stale {
		uc.close()
	}
}

func (uc *upConn) close() {
	uc.c.Close()
	uc.release()
}

// dial connects to be with the connect timeout.
func (b *Balancer) dial(be *backend) (*upConn, error) {
	c, err := b.dialer.Dial("tcp", be.addr)
	if err != nil {
		return nil, err
	}
	uc := &upConn{be: be}
	uc.init(c)
	if sc, ok := c.(syscall.Conn); ok {
		uc.rc, _ = sc.SyscallConn()
	}
	return uc, nil
}
