package raftnode

import (
	"context"
	"crypto/tls"
	"encoding/binary"
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

// A server given a token (Config.PeerToken) presents it on every
// connection it opens to a peer's Raft port, before anything else:
// tokenPreamble, the token's length (two bytes, big-endian) and the token.
// The port answers tokenAccept, or tokenRefuse and closes the connection.
// A port that checks tokens (Config.Authenticate) closes every connection
// that opens otherwise, so that, with ACLs, neither Raft's RPCs nor
// forwarded calls come from anything without a controller's token.
var tokenPreamble = [...]byte{0xF6, 'h', 's', 't', 1}

const (
	tokenAccept byte = 1
	tokenRefuse byte = 0
	// maxTokenLen bounds a presented token.
	maxTokenLen = 4096
)

// ErrTokenRefused is returned when a peer's Raft port refuses the token
// this server presents (or closes the connection on it).
var ErrTokenRefused = errors.New("the raft port refused this server's token")

// ErrNoToken is what a port that checks tokens reports of a connection
// that presents none.
var ErrNoToken = errors.New("no token presented")

// presentToken sends token on conn, dialled to addr, and reads the answer
// under conn's deadline.
func presentToken(conn net.Conn, addr, token string) error {
	if len(token) > maxTokenLen {
		return fmt.Errorf("raft port token of %d bytes: at most %d", len(token), maxTokenLen)
	}
	buf := make([]byte, 0, len(tokenPreamble)+2+len(token))
	buf = append(buf, tokenPreamble[:]...)
	buf = binary.BigEndian.AppendUint16(buf, uint16(len(token)))
	buf = append(buf, token...)
	if _, err := conn.Write(buf); err != nil {
		return err
	}
	ack, err := readAnswer(conn, ErrTokenRefused)
	if err != nil {
		return fmt.Errorf("%s: %w", addr, err)
	}
	if ack != tokenAccept {
		return fmt.Errorf("%s: %w", addr, ErrTokenRefused)
	}
	return nil
}

// readAnswer reads a handshake's one-byte answer from conn. A timeout is
// returned as it is; a connection that ends first is refused.
func readAnswer(conn net.Conn, refused error) (byte, error) {
	var ack [1]byte
	if _, err := io.ReadFull(conn, ack[:]); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return 0, err
		}
		return 0, fmt.Errorf("%w (it closed the connection: %v)", refused, err)
	}
	return ack[0], nil
}

// readPresentedToken reads the rest of a token's handshake from c, whose
// first byte was tokenPreamble's.
func readPresentedToken(c io.Reader) (string, error) {
	var head [len(tokenPreamble) - 1 + 2]byte
	if _, err := io.ReadFull(c, head[:]); err != nil {
		return "", err
	}
	if string(head[:len(tokenPreamble)-1]) != string(tokenPreamble[1:]) {
		return "", errors.New("not a token handshake")
	}
	n := int(binary.BigEndian.Uint16(head[len(tokenPreamble)-1:]))
	if n == 0 || n > maxTokenLen {
		return "", fmt.Errorf("token of %d bytes", n)
	}
	tok := make([]byte, n)
	if _, err := io.ReadFull(c, tok); err != nil {
		return "", err
	}
	return string(tok), nil
}

// firstByteTimeout bounds how long an accepted connection may stay silent
// before it says what it carries.
const firstByteTimeout = 10 * time.Second

// ErrForwardUnsupported is returned by DialForward when the server at the
// address does not take forwarded calls on its Raft port.
var ErrForwardUnsupported = errors.New("server does not take forwarded calls on its raft port")

// DialForward opens a forwarding connection to the Raft port at addr, in
// plaintext and without a token. The handshake is bounded by ctx and by
// timeout.
func DialForward(ctx context.Context, addr string, timeout time.Duration) (net.Conn, error) {
	return DialForwardAs(ctx, addr, timeout, PeerAuth{})
}

// PeerAuth is what a server presents on the Raft ports it dials.
type PeerAuth struct {
	// TLS, when set, is spoken on the connection (Config.PeerTLS); nil:
	// plaintext.
	TLS *tls.Config
	// Token, when set, is presented before anything else (Config.PeerToken).
	Token string
}

// DialForwardAs is DialForward with auth's TLS and token.
func DialForwardAs(ctx context.Context, addr string, timeout time.Duration, auth PeerAuth) (net.Conn, error) {
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
	if conn, err = clientTLS(ctx, conn, addr, auth.TLS); err != nil {
		return nil, err
	}
	if auth.Token != "" {
		if err := presentToken(conn, addr, auth.Token); err != nil {
			conn.Close()
			return nil, err
		}
	}
	if _, err := conn.Write(forwardPreamble[:]); err != nil {
		conn.Close()
		return nil, err
	}
	ack, err := readAnswer(conn, ErrForwardUnsupported)
	if err != nil {
		conn.Close()
		return nil, err
	}
	if ack != forwardAccept {
		conn.Close()
		return nil, fmt.Errorf("%w: answered %#x", ErrForwardUnsupported, ack)
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

// layerOptions configure a streamLayer.
type layerOptions struct {
	// silence is how long an accepted connection may stay silent before
	// it says what it carries (firstByteTimeout).
	silence time.Duration
	// serverTLS, when set, is spoken on every accepted connection, and
	// what clientTLS returns on every one Dial makes.
	serverTLS *tls.Config
	clientTLS func() *tls.Config
	// acceptPlain, with serverTLS, also takes connections that do not
	// open with a TLS handshake, in plaintext, calling onPlain for each.
	acceptPlain bool
	onPlain     func()
	// token, when set and not empty, is presented on every connection
	// Dial makes (Config.PeerToken).
	token func() string
	// authenticate, when set, admits only connections that present a
	// token it accepts; refused is then called with each refused one's
	// address and why (Config.Authenticate, Config.Refused).
	authenticate func(token string) error
	refused      func(from net.Addr, err error)
}

// streamLayer is raft's TCP stream layer over a listener bound by the
// caller, so that tests and binaries can choose ports before raft starts.
// It sorts accepted connections by their first byte: Raft's go to Raft,
// forwarding ones to the handler set with Node.ServeForwards.
type streamLayer struct {
	layerOptions
	lis       net.Listener
	advertise net.Addr

	raftConns chan net.Conn
	forward   atomic.Pointer[func(net.Conn)]

	mu sync.Mutex
	// conns are the accepted connections not handed to Raft; true marks
	// those a forward handler serves.
	conns    map[net.Conn]bool
	closed   bool
	closedCh chan struct{}
	wg       sync.WaitGroup
	// fwdStopped: once set, no forward handler starts; fwdWG counts the
	// ones running.
	fwdStopped bool
	fwdWG      sync.WaitGroup

	// dialed are the open connections Dial made for Raft's own RPCs.
	// stopDials cancels dialCtx and closes them.
	dialMu   sync.Mutex
	dialed   map[*dialedConn]struct{}
	dialCtx  context.Context
	dialStop context.CancelFunc
}

func newStreamLayer(lis net.Listener, advertise net.Addr, o layerOptions) *streamLayer {
	s := &streamLayer{
		layerOptions: o,
		lis:          lis, advertise: advertise,
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
	if s.token != nil {
		if tok := s.token(); tok != "" {
			_ = conn.SetDeadline(time.Now().Add(timeout))
			if err := presentToken(conn, string(addr), tok); err != nil {
				conn.Close()
				return nil, err
			}
			_ = conn.SetDeadline(time.Time{})
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
// otherwise is closed, or with acceptPlain taken in plaintext. A token's
// handshake, when one comes first, is answered before the next byte sorts
// c; with authenticate, a connection without one is closed.
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
	if first[0] == tokenPreamble[0] {
		tok, err := readPresentedToken(c)
		if err != nil {
			fail()
			return
		}
		if s.authenticate != nil {
			if err := s.authenticate(tok); err != nil {
				s.refuse(c, err)
				_, _ = c.Write([]byte{tokenRefuse})
				fail()
				return
			}
		}
		if _, err := c.Write([]byte{tokenAccept}); err != nil {
			fail()
			return
		}
		if _, err := io.ReadFull(c, first[:]); err != nil {
			fail()
			return
		}
	} else if s.authenticate != nil {
		s.refuse(c, ErrNoToken)
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

// refuse reports a connection refused for want of a token.
func (s *streamLayer) refuse(c net.Conn, err error) {
	if s.refused != nil {
		s.refused(c.RemoteAddr(), err)
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
