package endpoint

import (
	"bufio"
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

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/hostscale/hostscale/controller/internal/raftnode"
	"github.com/hostscale/hostscale/internal/grpcx"
	peerv1 "github.com/hostscale/hostscale/proto/hostscale/peer/v1"
	spb "google.golang.org/genproto/googleapis/rpc/status"
)

// A forwarding connection on the Raft port carries one call at a time: the
// follower writes a frame holding a ForwardRequest and reads back a frame
// holding the ForwardResponse. A frame is a 4-byte big-endian length and
// that many bytes. One call per connection at a time spares the goroutine
// hand-offs of a multiplexed stream, which cost more than the call itself
// when the leader is otherwise idle; a follower keeps a pool of them.
const (
	// frameOverhead is room for a forwarded message's envelope beyond the
	// message size limit.
	frameOverhead = 64 << 10
	// maxIdleForwardConns bounds the connections a follower keeps open to
	// the leader between calls.
	maxIdleForwardConns = 128
	// forwardDialTimeout bounds connecting to the leader and the handshake.
	forwardDialTimeout = 5 * time.Second
	// unsupportedFor is how long a leader that refused a forwarding
	// connection is served over its API's Forward stream instead.
	unsupportedFor = 30 * time.Second
)

func writeFrame(w io.Writer, m proto.Message) error {
	b, err := proto.MarshalOptions{}.MarshalAppend(make([]byte, 4, 4+proto.Size(m)), m)
	if err != nil {
		return err
	}
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	_, err = w.Write(b)
	return err
}

func readFrame(r *bufio.Reader, max int, buf *[]byte, m proto.Message) error {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if uint64(n) > uint64(max) {
		return fmt.Errorf("frame of %d bytes is over the limit of %d", n, max)
	}
	if cap(*buf) < int(n) {
		*buf = make([]byte, n)
	}
	b := (*buf)[:n]
	if _, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	if err := proto.Unmarshal(b, m); err != nil {
		return fmt.Errorf("decode frame: %w", err)
	}
	return nil
}

// ServeConn runs the calls a follower forwards on conn, one at a time,
// until conn fails or is closed. ctx bounds every call. A frame over the
// size limit or one that does not decode ends the connection.
func (p *Peer) ServeConn(ctx context.Context, conn net.Conn) {
	defer p.serving()()
	r := bufio.NewReader(conn)
	var buf []byte
	for {
		req := &peerv1.ForwardRequest{}
		if err := readFrame(r, p.maxFrame(), &buf, req); err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				p.logger.Warn("forwarding connection ended", "remote", conn.RemoteAddr().String(), "err", err)
			}
			return
		}
		if err := writeFrame(conn, p.callWatched(ctx, conn, req)); err != nil {
			return
		}
	}
}

// forwardPeerCheck is how often the connections of forwarded calls still
// running are checked for their follower having hung up.
const forwardPeerCheck = time.Second

// watchedCall is a forwarded call running on a connection.
type watchedCall struct {
	conn   net.Conn
	start  time.Time
	cancel context.CancelFunc
}

// callWatched runs a forwarded call, and cancels it once its follower has
// hung up: the follower's caller gave up (its context ended the call's
// I/O), so nobody waits for the answer. One goroutine per Peer checks the
// calls that have run for longer than a check period, every period, while
// connections are served; a call costs no timer, whose start could wake a
// sleeping thread.
func (p *Peer) callWatched(ctx context.Context, conn net.Conn, req *peerv1.ForwardRequest) *peerv1.ForwardResponse {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c := &watchedCall{conn: conn, start: time.Now(), cancel: cancel}
	p.watchMu.Lock()
	p.watching[c] = struct{}{}
	p.watchMu.Unlock()
	defer func() {
		p.watchMu.Lock()
		delete(p.watching, c)
		p.watchMu.Unlock()
	}()
	return p.call(ctx, req)
}

// serving counts a connection served, and starts the checks with the
// first; the returned func ends the count, and the checks with the last.
func (p *Peer) serving() func() {
	p.watchMu.Lock()
	defer p.watchMu.Unlock()
	if p.served == 0 {
		stop := make(chan struct{})
		p.stopWatch = stop
		go p.watchCalls(stop)
	}
	p.served++
	return func() {
		p.watchMu.Lock()
		defer p.watchMu.Unlock()
		if p.served--; p.served == 0 {
			close(p.stopWatch)
		}
	}
}

// watchCalls cancels, every check period until stop, the calls older than
// a period whose follower has hung up.
func (p *Peer) watchCalls(stop <-chan struct{}) {
	every := forwardPeerCheck
	if p.peerCheck > 0 {
		every = p.peerCheck
	}
	t := time.NewTicker(every)
	defer t.Stop()
	var old []*watchedCall
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			old = old[:0]
			p.watchMu.Lock()
			for c := range p.watching {
				if now.Sub(c.start) >= every {
					old = append(old, c)
				}
			}
			p.watchMu.Unlock()
			for _, c := range old {
				if peerGone(c.conn) {
					c.cancel()
				}
			}
		}
	}
}

func (p *Peer) maxFrame() int {
	if p.MaxMessageSize > 0 {
		return p.MaxMessageSize + frameOverhead
	}
	return grpcx.DefaultMaxMessageSize + frameOverhead
}

// Forwarder sends a follower's forwarded calls to the leader. While few
// are in flight, each goes over a pooled connection to the leader's Raft
// port, where the leader takes them: one wake-up at each end, the shortest
// hop. Beyond streamAbove in flight, calls share one Forward stream to the
// leader's API, whose writes carry many calls per system call; so do all
// calls to a leader that does not take them on its Raft port. It is safe
// for concurrent use.
type Forwarder struct {
	id             string
	maxMessageSize int
	metrics        *Metrics
	raftTLS        func() *tls.Config
	raftToken      func() string
	stream         *streamForwarder
	// inflight counts the calls under way.
	inflight atomic.Int64

	mu          sync.Mutex
	idle        map[string][]*forwardConn
	unsupported map[string]time.Time
	closed      bool
}

type forwardConn struct {
	net.Conn
	r   *bufio.Reader
	buf []byte
}

// ForwarderOptions configure a Forwarder.
type ForwarderOptions struct {
	// ID names this node to the leader.
	ID string
	// Conns reaches the leader's API, for leaders that do not take
	// forwarded calls on their Raft port.
	Conns *grpcx.ConnPool
	// MaxMessageSize bounds an answer (0: the gRPC default).
	MaxMessageSize int
	// Metrics counts the calls forwarded (nil: not counted).
	Metrics *Metrics
	// RaftTLS gives, for each connection, how the leader's Raft port is
	// dialled when it serves TLS (raftnode.Config.PeerTLS); nil:
	// plaintext.
	RaftTLS func() *tls.Config
	// RaftToken gives the token presented on the leader's Raft port
	// (raftnode.Config.PeerToken); nil: none.
	RaftToken func() string
}

// streamAbove is how many forwarded calls may be in flight, this one
// included, before more take the stream. With 64 clients the stream made
// 10-16 % more writes a second than a connection per call; with 4 and 16
// the two measured level (docs/benchmarks.md).
const streamAbove = 4

// NewForwarder returns a Forwarder.
func NewForwarder(o ForwarderOptions) *Forwarder {
	if o.MaxMessageSize <= 0 {
		o.MaxMessageSize = grpcx.DefaultMaxMessageSize
	}
	return &Forwarder{
		id: o.ID, maxMessageSize: o.MaxMessageSize, metrics: o.Metrics, raftTLS: o.RaftTLS, raftToken: o.RaftToken,
		stream:      &streamForwarder{conns: o.Conns, streams: map[string]*fwdStream{}},
		idle:        map[string][]*forwardConn{},
		unsupported: map[string]time.Time{},
	}
}

// Leader names where a forwarded call goes: the leader's Raft address, and
// a function giving its API address for a leader that does not take
// forwarded calls on its Raft port.
type Leader struct {
	RaftAddr string
	APIAddr  func() (string, error)
}

// Call runs method on the leader with req and decodes its answer into resp;
// the error is the leader's status, or UNAVAILABLE when the connection
// broke (the call may or may not have run: requests carry ids).
func (f *Forwarder) Call(ctx context.Context, leader Leader, method string, req, resp proto.Message) error {
	data, err := proto.Marshal(req)
	if err != nil {
		return status.Errorf(codes.Internal, "encode request: %v", err)
	}
	fr := &peerv1.ForwardRequest{Method: method, Request: data, ForwardedBy: f.id}
	if dl, ok := ctx.Deadline(); ok {
		fr.Timeout = durationpb.New(time.Until(dl))
	}
	few := f.inflight.Add(1) <= streamAbove
	defer f.inflight.Add(-1)
	if !f.isUnsupported(leader.RaftAddr) {
		if !few {
			if addr, err := leader.APIAddr(); err == nil {
				return f.callStream(ctx, addr, method, fr, resp)
			}
		}
		start := time.Now()
		err := f.callConn(ctx, leader.RaftAddr, fr, resp)
		if !errors.Is(err, raftnode.ErrForwardUnsupported) {
			f.metrics.forwarded(method, "raft", start)
			return err
		}
		f.markUnsupported(leader.RaftAddr)
	}
	addr, err := leader.APIAddr()
	if err != nil {
		return err
	}
	return f.callStream(ctx, addr, method, fr, resp)
}

// callStream forwards over the Forward stream to the leader's API at addr.
func (f *Forwarder) callStream(ctx context.Context, addr, method string, fr *peerv1.ForwardRequest, resp proto.Message) error {
	start := time.Now()
	err := f.stream.call(ctx, addr, fr, resp)
	f.metrics.forwarded(method, "api", start)
	return err
}

func (f *Forwarder) callConn(ctx context.Context, addr string, fr *peerv1.ForwardRequest, resp proto.Message) error {
	c, err := f.conn(ctx, addr)
	if err != nil {
		if errors.Is(err, raftnode.ErrForwardUnsupported) {
			return err
		}
		if ctx.Err() != nil {
			return status.FromContextError(ctx.Err()).Err()
		}
		return status.Errorf(codes.Unavailable, "connect to leader at %s: %v; retry", addr, err)
	}
	// The context ends the call by failing the connection's I/O.
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	out := &peerv1.ForwardResponse{}
	err = writeFrame(c, fr)
	if err == nil {
		err = readFrame(c.r, f.maxMessageSize+frameOverhead, &c.buf, out)
	}
	if !stop() {
		c.Close()
		return status.FromContextError(ctx.Err()).Err()
	}
	if err != nil {
		c.Close()
		return status.Errorf(codes.Unavailable, "forward to leader at %s: %v; retry", addr, err)
	}
	f.put(addr, c)
	return decodeForwarded(out, resp)
}

func decodeForwarded(r *peerv1.ForwardResponse, resp proto.Message) error {
	if len(r.Status) > 0 {
		var sp spb.Status
		if err := proto.Unmarshal(r.Status, &sp); err != nil {
			return status.Errorf(codes.Internal, "decode forwarded status: %v", err)
		}
		return status.ErrorProto(&sp)
	}
	if err := proto.Unmarshal(r.Response, resp); err != nil {
		return status.Errorf(codes.Internal, "decode forwarded response: %v", err)
	}
	return nil
}

// conn returns an idle connection to addr that is still open, or dials one.
func (f *Forwarder) conn(ctx context.Context, addr string) (*forwardConn, error) {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil, errForwarderClosed
	}
	for other, cs := range f.idle {
		if other != addr { // the leader moved
			for _, c := range cs {
				c.Close()
			}
			delete(f.idle, other)
		}
	}
	for cs := f.idle[addr]; len(cs) > 0; cs = f.idle[addr] {
		c := cs[len(cs)-1]
		f.idle[addr] = cs[:len(cs)-1]
		if c.r.Buffered() == 0 && connAlive(c.Conn) {
			f.mu.Unlock()
			return c, nil
		}
		c.Close()
	}
	f.mu.Unlock()
	var auth raftnode.PeerAuth
	if f.raftTLS != nil {
		auth.TLS = f.raftTLS()
	}
	if f.raftToken != nil {
		auth.Token = f.raftToken()
	}
	conn, err := raftnode.DialForwardAs(ctx, addr, forwardDialTimeout, auth)
	if err != nil {
		return nil, err
	}
	return &forwardConn{Conn: conn, r: bufio.NewReader(conn)}, nil
}

func (f *Forwarder) put(addr string, c *forwardConn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || len(f.idle[addr]) >= maxIdleForwardConns {
		c.Close()
		return
	}
	f.idle[addr] = append(f.idle[addr], c)
}

func (f *Forwarder) isUnsupported(addr string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	until, ok := f.unsupported[addr]
	if ok && time.Now().After(until) {
		delete(f.unsupported, addr)
		return false
	}
	return ok
}

func (f *Forwarder) markUnsupported(addr string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.unsupported[addr] = time.Now().Add(unsupportedFor)
}

// Close closes the idle connections and ends every stream.
func (f *Forwarder) Close() {
	f.mu.Lock()
	f.closed = true
	for addr, cs := range f.idle {
		for _, c := range cs {
			c.Close()
		}
		delete(f.idle, addr)
	}
	f.mu.Unlock()
	f.stream.close()
}
