package endpoint

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hostscale/hostscale/internal/grpcx"
	"github.com/hostscale/hostscale/internal/logging"
	peerv1 "github.com/hostscale/hostscale/proto/hostscale/peer/v1"
)

// Peer runs on the leader the calls followers forward, on connections to
// its Raft port (ServeConn) or on Forward streams to its API
// (hostscale.peer.v1.PeerService), through the same handlers a direct call
// reaches.
type Peer struct {
	peerv1.UnimplementedPeerServiceServer
	// MaxMessageSize bounds a forwarded request, as the gRPC server bounds
	// a direct one (0: the gRPC default).
	MaxMessageSize int
	// Metrics, when set, times the calls run here.
	Metrics *Metrics

	methods map[string]peerMethod
	logger  *slog.Logger
	// peerCheck replaces forwardPeerCheck when set.
	peerCheck time.Duration

	// The forwarded calls running on connections, checked by one
	// goroutine while served counts connections being served.
	watchMu   sync.Mutex
	watching  map[*watchedCall]struct{}
	served    int
	stopWatch chan struct{}
}

type peerMethod struct {
	impl    any
	handler grpc.MethodHandler
}

var _ peerv1.PeerServiceServer = (*Peer)(nil)

// NewPeer returns a Peer with no methods; Register adds them.
func NewPeer(logger *slog.Logger) *Peer {
	return &Peer{methods: map[string]peerMethod{}, logger: logging.OrDiscard(logger), watching: map[*watchedCall]struct{}{}}
}

// Register makes the unary methods of a service callable through Forward.
func (p *Peer) Register(desc *grpc.ServiceDesc, impl any) {
	for _, m := range desc.Methods {
		p.methods["/"+desc.ServiceName+"/"+m.MethodName] = peerMethod{impl: impl, handler: m.Handler}
	}
}

func (p *Peer) Forward(stream peerv1.PeerService_ForwardServer) error {
	ctx := stream.Context()
	var (
		sendMu sync.Mutex
		wg     sync.WaitGroup
		mu     sync.Mutex
		calls  = map[uint64]context.CancelFunc{} // the calls running, by id
	)
	defer wg.Wait()
	for {
		req, err := stream.Recv()
		if err != nil {
			return recvError(err)
		}
		if req.Cancel {
			mu.Lock()
			if cancel := calls[req.Id]; cancel != nil {
				cancel()
			}
			mu.Unlock()
			continue
		}
		cctx, cancel := context.WithCancel(ctx)
		mu.Lock()
		calls[req.Id] = cancel
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := p.call(cctx, req)
			mu.Lock()
			delete(calls, req.Id)
			mu.Unlock()
			cancel()
			sendMu.Lock()
			defer sendMu.Unlock()
			_ = stream.Send(resp) // a dead stream fails every send; Recv ends the loop
		}()
	}
}

func (p *Peer) call(ctx context.Context, req *peerv1.ForwardRequest) (resp *peerv1.ForwardResponse) {
	defer p.Metrics.served(time.Now())
	resp = &peerv1.ForwardResponse{Id: req.Id}
	fail := func(err error) *peerv1.ForwardResponse {
		resp.Response = nil
		// As gRPC's server does: a handler's context error keeps its
		// code (CANCELED, DEADLINE_EXCEEDED), anything else without a
		// status is UNKNOWN.
		st, ok := status.FromError(err)
		if !ok {
			st = status.FromContextError(err)
		}
		resp.Status, _ = proto.Marshal(st.Proto())
		return resp
	}
	m, ok := p.methods[req.Method]
	if !ok {
		return fail(status.Errorf(codes.Unimplemented, "method %s cannot be forwarded", req.Method))
	}
	ctx = metadata.NewIncomingContext(ctx, metadata.Pairs(ForwardedHeader, req.ForwardedBy))
	if req.Timeout != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, req.Timeout.AsDuration())
		defer cancel()
	}
	defer func() {
		if r := recover(); r != nil {
			p.logger.Error("forwarded call panic", "method", req.Method, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			resp = fail(status.Errorf(codes.Internal, "internal error in %s", req.Method))
		}
	}()
	out, err := m.handler(m.impl, ctx, func(v any) error {
		if err := proto.Unmarshal(req.Request, v.(proto.Message)); err != nil {
			return status.Errorf(codes.InvalidArgument, "request: cannot decode: %v", err)
		}
		return nil
	}, nil)
	if err != nil {
		return fail(err)
	}
	data, err := proto.Marshal(out.(proto.Message))
	if err != nil {
		return fail(status.Errorf(codes.Internal, "encode response: %v", err))
	}
	resp.Response = data
	return resp
}

// streamForwarder sends a follower's forwarded calls to the leader's API
// over one long-lived Forward stream per leader address, so that a
// forwarded call costs a message each way rather than a call of its own.
// It serves leaders that do not take forwarded calls on their Raft port.
type streamForwarder struct {
	conns *grpcx.ConnPool

	mu      sync.Mutex
	streams map[string]*fwdStream
	closed  bool
}

type fwdStream struct {
	stream peerv1.PeerService_ForwardClient
	cancel context.CancelFunc
	sendMu sync.Mutex

	mu      sync.Mutex
	pending map[uint64]chan *peerv1.ForwardResponse
	next    uint64
	err     error
	done    chan struct{}
}

var errForwarderClosed = errors.New("forwarder closed")

func (f *streamForwarder) get(addr string) (*fwdStream, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, errForwarderClosed
	}
	if s := f.streams[addr]; s != nil {
		return s, nil
	}
	conn, err := f.conns.Get(addr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := peerv1.NewPeerServiceClient(conn).Forward(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	s := &fwdStream{stream: stream, cancel: cancel, pending: map[uint64]chan *peerv1.ForwardResponse{}, done: make(chan struct{})}
	f.streams[addr] = s
	go f.receive(addr, s)
	return s, nil
}

func (f *streamForwarder) receive(addr string, s *fwdStream) {
	defer close(s.done)
	for {
		r, err := s.stream.Recv()
		if err != nil {
			f.drop(addr, s, err)
			return
		}
		s.mu.Lock()
		ch := s.pending[r.Id]
		delete(s.pending, r.Id)
		s.mu.Unlock()
		if ch != nil {
			ch <- r
		}
	}
}

// drop retires a broken stream and fails its pending calls.
func (f *streamForwarder) drop(addr string, s *fwdStream, err error) {
	f.mu.Lock()
	if f.streams[addr] == s {
		delete(f.streams, addr)
	}
	f.mu.Unlock()
	s.cancel()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = err
	}
	st, _ := proto.Marshal(status.Newf(codes.Unavailable, "forward to leader: %v; retry", err).Proto())
	for id, ch := range s.pending {
		ch <- &peerv1.ForwardResponse{Id: id, Status: st}
		delete(s.pending, id)
	}
}

// call sends fr to the leader whose API is at addr and decodes its answer
// into resp, as Forwarder.Call.
func (f *streamForwarder) call(ctx context.Context, addr string, fr *peerv1.ForwardRequest, resp proto.Message) error {
	s, err := f.get(addr)
	if err != nil {
		return status.Errorf(codes.Unavailable, "connect to leader %s: %v", addr, err)
	}
	ch := make(chan *peerv1.ForwardResponse, 1)
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return status.Errorf(codes.Unavailable, "forward to leader: %v; retry", s.err)
	}
	s.next++
	id := s.next
	s.pending[id] = ch
	s.mu.Unlock()
	fr.Id = id
	s.sendMu.Lock()
	err = s.stream.Send(fr)
	s.sendMu.Unlock()
	if err != nil {
		if errors.Is(err, io.EOF) {
			_, err = s.stream.Recv() // the stream's real error
		}
		f.drop(addr, s, err)
	}
	select {
	case r := <-ch:
		return decodeForwarded(r, resp)
	case <-ctx.Done():
		s.mu.Lock()
		delete(s.pending, id)
		s.mu.Unlock()
		// The leader cancels the call (a stream that broke meanwhile has
		// no call left to cancel). The caller does not wait for the send,
		// which a stalled stream could hold up.
		go func() {
			s.sendMu.Lock()
			defer s.sendMu.Unlock()
			_ = s.stream.Send(&peerv1.ForwardRequest{Id: id, Cancel: true})
		}()
		return status.FromContextError(ctx.Err()).Err()
	}
}

// close ends every stream and waits for their receivers.
func (f *streamForwarder) close() {
	f.mu.Lock()
	f.closed = true
	streams := f.streams
	f.streams = map[string]*fwdStream{}
	f.mu.Unlock()
	for _, s := range streams {
		s.cancel()
		<-s.done
	}
}
