package raftnode

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/hostscale/hostscale/internal/tlsx"
)

// The Raft port also carries calls that followers forward to the leader,
// as Consul's server port does. A connection's first byte says which:
// Raft's own RPC types are small numbers, and a forwarding connection opens
// with forwardPreamble, to which the server answers forwardAccept before
// the first call. A server that does not take forwarded calls (an older
// version, or one still starting) closes the connection instead, and the
// dialer gets ErrForwardUnsupported.
var forwardPreamble = [...]byte{0xF5, 'h', 's', 'f', 1}

const forwardAccept byte = 1

// firstByteTimeout bounds how long an accepted connection may stay silent
// before it says what it carries.
const firstByteTimeout = 10 * time.Second

// ErrForwardUnsupported is returned by DialForward when the server at the
// address does not take forwarded calls on its Raft port.
var ErrForwardUnsupported = errors.New("server does not take forwarded calls on its raft port")

// DialForward opens a forwarding connection to the Raft port at addr. The
// handshake is bounded by ctx and by timeout.
func DialForward(ctx context.Context, addr string, timeout time.Duration) (net.Conn, error) {
	return DialForwardTLS(ctx, addr, timeout, nil)
}

// DialForwardTLS is DialForward to a Raft port that serves TLS (Config.TLS),
// with cfg (Config.PeerTLS); nil: plaintext.
func DialForwardTLS(ctx context.Context, addr string, timeout time.Duration, cfg *tls.Config) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = conn.SetDeadline(deadline)
	if conn, err = clientTLS(ctx, conn, addr, cfg); err != nil {
		return nil, err
	}
	if _, err := conn.Write(forwardPreamble[:]); err != nil {
		conn.Close()
		return nil, err
	}
	var ack [1]byte
	if _, err := io.ReadFull(conn, ack[:]); err != nil {
		conn.Close()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %v", ErrForwardUnsupported, err)
	}
	if ack[0] != forwardAccept {
		conn.Close()
		return nil, fmt.Errorf("%w: answered %#x", ErrForwardUnsupported, ack[0])
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, nil
}

// clientTLS runs the TLS handshake of conn, dialled at addr, with cfg
// (nil: none), verifying the server's certificate against addr's host; it
// closes conn when the handshake fails.
func clientTLS(ctx context.Context, conn net.Conn, addr string, cfg *tls.Config) (net.Conn, error) {
	if cfg == nil {
		return conn, nil
	}
	cfg = cfg.Clone()
	if cfg.ServerName == "" {
		if host, _, err := net.SplitHostPort(addr); err == nil {
			cfg.ServerName = host
		}
	}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("tls handshake with %s: %w", addr, err)
	}
	return tc, nil
}

// streamLayer is raft's TCP stream layer over a listener bound by the
// caller, so that tests and binaries can choose ports before raft starts.
// It sorts accepted connections by their first byte: Raft's go to Raft,
// forwarding ones to the handler set with Node.ServeForwards.
type streamLayer struct {
	lis       net.Listener
	advertise net.Addr
	// silence is how long an accepted connection may stay silent before
	// it says what it carries (firstByteTimeout).
	silence time.Duration

	raftConns chan net.Conn
	forward   atomic.Pointer[func(net.Conn)]
	// serverTLS, when set, is spoken on every accepted connection, and
	// what clientTLS returns on every one Dial makes.
	serverTLS *tls.Config
	clientTLS func() *tls.Config
	// acceptPlain, with serverTLS, also takes connections that do not
	// open with a TLS handshake, in plaintext, calling onPlain for each.
	acceptPlain bool
	onPlain     func()

	mu sync.Mutex
	// conns are the accepted connections not handed to Raft; true marks
	// those a forward handler serves.
	conns    map[net.Conn]bool
	closed   bool
	closedCh chan struct{}
	wg       sync.WaitGroup
	// fwdWG counts the forward handlers running; once fwdStopped, none
	// starts.
	fwdStopped bool
	fwdWG      sync.WaitGroup

	// dialed are the open connections Dial made for Raft's own RPCs.
	// stopDials cancels dialCtx and closes them.
	dialMu   sync.Mutex
	dialed   map[*dialedConn]struct{}
	dialCtx  context.Context
	dialStop context.CancelFunc
}

func newStreamLayer(lis net.Listener, advertise net.Addr, silence time.Duration, serverTLS *tls.Config, clientTLS func() *tls.Config, acceptPlain bool, onPlain func()) *streamLayer {
	s := &streamLayer{
		lis: lis, advertise: advertise, silence: silence, serverTLS: serverTLS, clientTLS: clientTLS,
		acceptPlain: acceptPlain, onPlain: onPlain,
		raftConns: make(chan net.Conn),
		conns:     map[net.Conn]bool{},
		closedCh:  make(chan struct{}),
		dialed:    map[*dialedConn]struct{}{},
	}
	s.dialCtx, s.dialStop = context.WithCancel(context.Background())
	s.wg.Add(1)
	go s.acceptLoop()
	return s
}

func (s *streamLayer) Addr() net.Addr { return s.advertise }

// Dial connects to a peer's Raft port for one of Raft's RPCs, until
// stopDials.
func (s *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(s.dialCtx, "tcp", string(addr))
	if err != nil {
		return nil, err
	}
	if s.clientTLS != nil {
		ctx, cancel := context.WithTimeout(s.dialCtx, timeout)
		conn, err = clientTLS(ctx, conn, string(addr), s.clientTLS())
		cancel()
		if err != nil {
			return nil, err
		}
	}
	s.dialMu.Lock()
	defer s.dialMu.Unlock()
	if err := s.dialCtx.Err(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("dial %s: %w", addr, net.ErrClosed)
	}
	c := &dialedConn{Conn: conn, s: s}
	s.dialed[c] = struct{}{}
	return c, nil
}

// stopDials closes the connections Dial made and fails the dials in
// progress and to come. A peer that stopped answering without closing
// its connections (a host cut off or powered off) would otherwise hold
// Raft's replication to it in a dial or a read for the transport's
// timeout, and Raft.Shutdown waits for that replication to end.
func (s *streamLayer) stopDials() {
	s.dialMu.Lock()
	defer s.dialMu.Unlock()
	s.dialStop()
	for c := range s.dialed {
		c.Conn.Close()
	}
}

// disconnect closes the listener and every connection this layer accepted
// and has not handed to Raft, and those Dial made, without waiting for
// their users.
func (s *streamLayer) disconnect() {
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	_ = s.lis.Close()
	s.stopDials()
}

// dialedConn is a connection Dial made; closing it forgets it.
type dialedConn struct {
	net.Conn
	s    *streamLayer
	once sync.Once
}

func (c *dialedConn) Close() error {
	c.once.Do(func() {
		c.s.dialMu.Lock()
		delete(c.s.dialed, c)
		c.s.dialMu.Unlock()
	})
	return c.Conn.Close()
}

// Accept returns the next connection that carries Raft's RPCs.
func (s *streamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-s.raftConns:
		return c, nil
	case <-s.closedCh:
		return nil, net.ErrClosed
	}
}

// Close stops accepting, closes the connections not handed to Raft (the
// forwarding ones too) and waits for their handlers to return.
func (s *streamLayer) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.closedCh)
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	err := s.lis.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil // disconnect closed it
	}
	s.wg.Wait()
	return err
}

func (s *streamLayer) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = false
	return true
}

// retrack tracks c, which wraps old, in old's place; false when the layer
// closed meanwhile.
func (s *streamLayer) retrack(old, c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, old)
	if s.closed {
		return false
	}
	s.conns[c] = false
	return true
}

func (s *streamLayer) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

func (s *streamLayer) acceptLoop() {
	defer s.wg.Done()
	var delay time.Duration
	for {
		c, err := s.lis.Accept()
		if err != nil {
			select {
			case <-s.closedCh:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// A transient failure (out of descriptors): back off as
			// net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			select {
			case <-s.closedCh:
				return
			case <-time.After(delay):
			}
			continue
		}
		delay = 0
		if !s.track(c) {
			c.Close()
			return
		}
		s.wg.Add(1)
		go s.sort(c)
	}
}

// sort reads c's first byte and hands c to Raft or to the forward handler.
// With TLS, that byte opens the TLS handshake, which runs under the same
// deadline, and the first byte inside it sorts c; a connection that opens
// otherwise is closed, or with acceptPlain taken in plaintext.
func (s *streamLayer) sort(c net.Conn) {
	defer s.wg.Done()
	_ = c.SetReadDeadline(time.Now().Add(s.silence))
	var first [1]byte
	fail := func() {
		s.untrack(c)
		c.Close()
	}
	if s.serverTLS != nil {
		sniffed, isTLS, err := tlsx.Sniff(c)
		switch {
		case err != nil:
			fail()
			return
		case isTLS:
			tc := tls.Server(sniffed, s.serverTLS)
			if !s.retrack(c, tc) {
				c.Close()
				return
			}
			c = tc
		case s.acceptPlain:
			if s.onPlain != nil {
				s.onPlain()
			}
			if !s.retrack(c, sniffed) {
				c.Close()
				return
			}
			c = sniffed
		default:
			fail()
			return
		}
	}
	if _, err := io.ReadFull(c, first[:]); err != nil {
		fail()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	if first[0] == forwardPreamble[0] {
		defer s.untrack(c)
		defer c.Close()
		s.serveForward(c)
		return
	}
	s.untrack(c)
	select {
	case s.raftConns <- &tlsx.PrefixConn{Conn: c, First: first[0], Pending: true}:
	case <-s.closedCh:
		c.Close()
	}
}

func (s *streamLayer) serveForward(c net.Conn) {
	h := s.forward.Load()
	if h == nil {
		return // not taking forwarded calls yet: the dialer sees the close
	}
	_ = c.SetReadDeadline(time.Now().Add(s.silence))
	rest := make([]byte, len(forwardPreamble)-1)
	if _, err := io.ReadFull(c, rest); err != nil || string(rest) != string(forwardPreamble[1:]) {
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	s.mu.Lock()
	if s.fwdStopped {
		s.mu.Unlock()
		return
	}
	s.conns[c] = true
	s.fwdWG.Add(1)
	s.mu.Unlock()
	defer s.fwdWG.Done()
	if _, err := c.Write([]byte{forwardAccept}); err != nil {
		return
	}
	(*h)(c)
}

// stopForwards refuses forwarding connections from now on, closes those
// being served and waits for their handlers to return. Node.Close calls it
// before Raft shuts down: a handler may be waiting for a command it
// proposed, and only a running Raft answers it (hashicorp/raft#498).
func (s *streamLayer) stopForwards() {
	s.mu.Lock()
	s.fwdStopped = true
	for c, served := range s.conns {
		if served {
			c.Close()
		}
	}
	s.mu.Unlock()
	s.fwdWG.Wait()
}
