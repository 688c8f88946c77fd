package endpoint

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hostscale/hostscale/internal/grpcx"
	"github.com/hostscale/hostscale/internal/promtest"
	peerv1 "github.com/hostscale/hostscale/proto/hostscale/peer/v1"
)

const checkMethod = "/grpc.health.v1.Health/Check"

// slowHealth answers Check, for the service "slow" only once its context
// ends (then it tells ended, when set).
type slowHealth struct {
	*health.Server
	ended chan<- error
}

func (s slowHealth) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	if req.Service == "expired" {
		return nil, context.DeadlineExceeded // as a handler whose own deadline passed
	}
	if req.Service == "lingering" {
		select {
		case <-time.After(300 * time.Millisecond):
			return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if req.Service == "slow" {
		<-ctx.Done()
		if s.ended != nil {
			s.ended <- ctx.Err()
		}
		return nil, ctx.Err()
	}
	return s.Server.Check(ctx, req)
}

func testPeer() *Peer {
	p := NewPeer(nil)
	p.MaxMessageSize = 1 << 20
	p.Register(&healthpb.Health_ServiceDesc, slowHealth{Server: health.NewServer()})
	return p
}

// raftPort stands for a leader's Raft port that takes forwarded calls: it
// answers the handshake and serves the connection with peer.
type raftPort struct {
	lis      net.Listener
	accepted atomic.Int32

	mu    sync.Mutex
	conns []net.Conn
}

// closeConns closes the connections accepted so far, as a leader that
// goes away does.
func (r *raftPort) closeConns() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		c.Close()
	}
	r.conns = nil
}

func newRaftPort(t testing.TB, peer *Peer) *raftPort {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	r := &raftPort{lis: lis}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			r.accepted.Add(1)
			r.mu.Lock()
			r.conns = append(r.conns, c)
			r.mu.Unlock()
			go func() {
				defer c.Close()
				pre := make([]byte, 5)
				if _, err := io.ReadFull(c, pre); err != nil {
					return
				}
				if _, err := c.Write([]byte{1}); err != nil {
					return
				}
				peer.ServeConn(ctx, c)
			}()
		}
	}()
	t.Cleanup(func() {
		cancel()
		lis.Close()
		<-done
		r.closeConns()
	})
	return r
}

func newTestForwarder(t testing.TB) (*Forwarder, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	conns := grpcx.NewConnPool()
	f := NewForwarder(ForwarderOptions{ID: "f1", Conns: conns, MaxMessageSize: 1 << 20, Metrics: NewMetrics(reg)})
	t.Cleanup(func() {
		f.Close()
		_ = conns.Close()
	})
	return f, reg
}

func noAPI() (string, error) { return "", status.Error(codes.Unavailable, "no API address") }

// transport selects the series of a transport, or any when it is empty.
func transport(name string) map[string]string {
	if name == "" {
		return nil
	}
	return map[string]string{"transport": name}
}

func forwarded(t *testing.T, reg *prometheus.Registry, via string) float64 {
	t.Helper()
	return promtest.Value(promtest.Find(t, reg, "hostscale_controller_forwarded_total", transport(via)))
}

// histogram returns the count and sum of the histogram name in reg, of
// the series with label transport when it is set.
func histogram(t *testing.T, reg *prometheus.Registry, name, via string) (uint64, float64) {
	t.Helper()
	h := promtest.Find(t, reg, name, transport(via)).GetHistogram()
	return h.GetSampleCount(), h.GetSampleSum()
}

// requireCancelledAtLeader forwards a call with no deadline, which only
// its caller giving up can end, gives up after 100 ms, and requires the
// leader's handler (which reports on ended) to be cancelled too.
func requireCancelledAtLeader(t *testing.T, f *Forwarder, leader Leader, ended <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	err := f.Call(ctx, leader, checkMethod, &healthpb.HealthCheckRequest{Service: "slow"}, &healthpb.HealthCheckResponse{})
	require.Equal(t, codes.Canceled, status.Code(err), err)
	select {
	case err := <-ended:
		require.ErrorIs(t, err, context.Canceled)
	case <-time.After(5 * time.Second):
		t.Fatal("the leader still runs a call its caller gave up on")
	}
}

func TestPeer_ServeConn_cancelsACallItsFollowerGaveUpOn(t *testing.T) {
	ended := make(chan error, 1)
	peer := NewPeer(nil)
	peer.peerCheck = 20 * time.Millisecond
	peer.Register(&healthpb.Health_ServiceDesc, slowHealth{Server: health.NewServer(), ended: ended})
	port := newRaftPort(t, peer)
	f, _ := newTestForwarder(t)
	leader := Leader{RaftAddr: port.lis.Addr().String(), APIAddr: noAPI}

	requireCancelledAtLeader(t, f, leader, ended)

	// A call that outlives several checks with its follower still there
	// is not cancelled.
	resp := &healthpb.HealthCheckResponse{}
	require.NoError(t, f.Call(context.Background(), leader, checkMethod, &healthpb.HealthCheckRequest{Service: "lingering"}, resp))
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, resp.Status)
}

func TestForwarder_timesTheWaitAndTheLeadersShare(t *testing.T) {
	peer := testPeer()
	leaderReg := prometheus.NewRegistry()
	peer.Metrics = NewMetrics(leaderReg)
	port := newRaftPort(t, peer)
	f, reg := newTestForwarder(t)
	leader := Leader{RaftAddr: port.lis.Addr().String(), APIAddr: noAPI}
	for range 4 {
		require.NoError(t, f.Call(context.Background(), leader, checkMethod, &healthpb.HealthCheckRequest{}, &healthpb.HealthCheckResponse{}))
	}
	// A call the leader fails is timed too.
	err := f.Call(context.Background(), leader, checkMethod, &healthpb.HealthCheckRequest{Service: "nope"}, &healthpb.HealthCheckResponse{})
	require.Equal(t, codes.NotFound, status.Code(err))

	waits, waited := histogram(t, reg, "hostscale_controller_forward_wait_seconds", "raft")
	serves, served := histogram(t, leaderReg, "hostscale_controller_forward_serve_seconds", "")
	require.EqualValues(t, 5, waits)
	require.EqualValues(t, 5, serves)
	require.Positive(t, served)
	require.Greater(t, waited, served, "the follower's wait holds the leader's share and the hop")
	n, _ := histogram(t, reg, "hostscale_controller_forward_wait_seconds", "api")
	require.Zero(t, n)
}

func TestForwarder_callsOverTheRaftPortReuseConnections(t *testing.T) {
	port := newRaftPort(t, testPeer())
	f, reg := newTestForwarder(t)
	leader := Leader{RaftAddr: port.lis.Addr().String(), APIAddr: noAPI}
	ctx := context.Background()

	for range 5 {
		resp := &healthpb.HealthCheckResponse{}
		require.NoError(t, f.Call(ctx, leader, checkMethod, &healthpb.HealthCheckRequest{}, resp))
		require.Equal(t, healthpb.HealthCheckResponse_SERVING, resp.Status)
	}
	require.EqualValues(t, 1, port.accepted.Load(), "one connection serves calls in turn")
	require.EqualValues(t, 5, forwarded(t, reg, "raft"))

	// The leader's error comes back with its code; a context error keeps
	// its own, as from a gRPC server.
	err := f.Call(ctx, leader, checkMethod, &healthpb.HealthCheckRequest{Service: "nope"}, &healthpb.HealthCheckResponse{})
	require.Equal(t, codes.NotFound, status.Code(err), err)
	err = f.Call(ctx, leader, checkMethod, &healthpb.HealthCheckRequest{Service: "expired"}, &healthpb.HealthCheckResponse{})
	require.Equal(t, codes.DeadlineExceeded, status.Code(err), err)
	err = f.Call(ctx, leader, "/hostscale.v1.Nope/Nope", &healthpb.HealthCheckRequest{}, &healthpb.HealthCheckResponse{})
	require.Equal(t, codes.Unimplemented, status.Code(err), err)

	// A call the caller gives up on ends with the caller's code, and its
	// connection is not used again.
	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(100*time.Millisecond, cancel)
	err = f.Call(cctx, leader, checkMethod, &healthpb.HealthCheckRequest{Service: "slow"}, &healthpb.HealthCheckResponse{})
	require.Equal(t, codes.Canceled, status.Code(err), err)
	require.NoError(t, f.Call(ctx, leader, checkMethod, &healthpb.HealthCheckRequest{}, &healthpb.HealthCheckResponse{}))
	require.EqualValues(t, 2, port.accepted.Load())

	// The leader closes the idle connection: the next call dials afresh
	// rather than failing on it.
	port.closeConns()
	require.Eventually(t, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.idle[leader.RaftAddr]) == 1 && !connAlive(f.idle[leader.RaftAddr][0].Conn)
	}, 5*time.Second, 10*time.Millisecond)
	require.NoError(t, f.Call(ctx, leader, checkMethod, &healthpb.HealthCheckRequest{}, &healthpb.HealthCheckResponse{}))
	require.EqualValues(t, 3, port.accepted.Load())
	require.Zero(t, forwarded(t, reg, "api"))
}

// legacyLeader stands for a leader that does not take forwarded calls on
// its Raft port: the port reads the preamble as an unknown RPC type and
// hangs up; its API serves the Forward stream. dials counts the
// connections to the Raft port.
func legacyLeader(tb testing.TB) (leader Leader, dials *atomic.Int32) {
	return legacyLeaderOf(tb, testPeer())
}

// legacyLeaderOf is legacyLeader serving the calls with peer.
func legacyLeaderOf(tb testing.TB, peer *Peer) (leader Leader, dials *atomic.Int32) {
	old, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	dials = new(atomic.Int32)
	go func() {
		for {
			c, err := old.Accept()
			if err != nil {
				return
			}
			dials.Add(1)
			_, _ = c.Read(make([]byte, 1))
			c.Close()
		}
	}()
	tb.Cleanup(func() { old.Close() })
	return Leader{RaftAddr: old.Addr().String(), APIAddr: servePeerAPI(tb, peer)}, dials
}

// servePeerAPI serves peer's Forward stream on a loopback gRPC server,
// stopped at the end of the test, and returns a leader's APIAddr for it.
func servePeerAPI(tb testing.TB, peer *Peer) func() (string, error) {
	api, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	srv := grpc.NewServer()
	peerv1.RegisterPeerServiceServer(srv, peer)
	go func() { _ = srv.Serve(api) }()
	tb.Cleanup(srv.Stop)
	return func() (string, error) { return api.Addr().String(), nil }
}

// Over the stream too, a call whose caller gives up is cancelled at the
// leader, and the stream goes on serving others.
func TestForwarder_streamCancelsACallItsCallerGaveUpOn(t *testing.T) {
	ended := make(chan error, 1)
	peer := NewPeer(nil)
	peer.Register(&healthpb.Health_ServiceDesc, slowHealth{Server: health.NewServer(), ended: ended})
	leader, _ := legacyLeaderOf(t, peer)
	f, reg := newTestForwarder(t)

	requireCancelledAtLeader(t, f, leader, ended)
	resp := &healthpb.HealthCheckResponse{}
	require.NoError(t, f.Call(context.Background(), leader, checkMethod, &healthpb.HealthCheckRequest{}, resp))
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, resp.Status)
	require.EqualValues(t, 2, forwarded(t, reg, "api"))
}

// Calls made while more than streamAbove are in flight share the Forward
// stream to the leader's API; fewer take the Raft port; without a known
// API address, all take the Raft port.
func TestForwarder_manyCallsInFlightShareTheStream(t *testing.T) {
	peer := testPeer()
	port := newRaftPort(t, peer)
	f, reg := newTestForwarder(t)
	leader := Leader{RaftAddr: port.lis.Addr().String(), APIAddr: servePeerAPI(t, peer)}
	ctx := context.Background()
	check := func(l Leader) error {
		return f.Call(ctx, l, checkMethod, &healthpb.HealthCheckRequest{}, &healthpb.HealthCheckResponse{})
	}

	require.NoError(t, check(leader))
	require.EqualValues(t, 1, forwarded(t, reg, "raft"), "alone: the Raft port")
	require.Zero(t, forwarded(t, reg, "api"))

	// streamAbove calls held in flight at the leader; meanwhile three more.
	slowCtx, stopSlow := context.WithCancel(ctx)
	slowDone := make(chan error, streamAbove)
	for range streamAbove {
		go func() {
			slowDone <- f.Call(slowCtx, leader, checkMethod, &healthpb.HealthCheckRequest{Service: "slow"}, &healthpb.HealthCheckResponse{})
		}()
	}
	require.Eventually(t, func() bool { return f.inflight.Load() == streamAbove }, 5*time.Second, time.Millisecond)
	for range 3 {
		require.NoError(t, check(leader))
	}
	require.EqualValues(t, 3, forwarded(t, reg, "api"), "beyond streamAbove in flight: the stream")
	require.NoError(t, check(Leader{RaftAddr: leader.RaftAddr, APIAddr: noAPI}))
	require.EqualValues(t, 2, forwarded(t, reg, "raft"), "no API address: the Raft port")

	stopSlow()
	for range streamAbove {
		require.Equal(t, codes.Canceled, status.Code(<-slowDone))
	}
	require.EqualValues(t, 2+streamAbove, forwarded(t, reg, "raft"), "the held calls went over the Raft port")
	require.NoError(t, check(leader))
	require.EqualValues(t, 3+streamAbove, forwarded(t, reg, "raft"), "alone again: the Raft port")
	require.EqualValues(t, 3, forwarded(t, reg, "api"))
}

func TestForwarder_fallsBackToTheAPIForALeaderWithoutForwarding(t *testing.T) {
	leader, dials := legacyLeader(t)
	f, reg := newTestForwarder(t)
	for range 3 {
		resp := &healthpb.HealthCheckResponse{}
		require.NoError(t, f.Call(context.Background(), leader, checkMethod, &healthpb.HealthCheckRequest{}, resp))
		require.Equal(t, healthpb.HealthCheckResponse_SERVING, resp.Status)
	}
	require.EqualValues(t, 1, dials.Load(), "the refusal is remembered")
	require.EqualValues(t, 3, forwarded(t, reg, "api"))
	require.Zero(t, forwarded(t, reg, "raft"))
	waits, _ := histogram(t, reg, "hostscale_controller_forward_wait_seconds", "api")
	require.EqualValues(t, 3, waits)
}

// BenchmarkForwarder_Call forwards a small call over each transport, on
// loopback, without a disk: one caller at a time, and 64 at once.
func BenchmarkForwarder_Call(b *testing.B) {
	for _, transport := range []string{"raft", "api"} {
		leader, _ := legacyLeader(b)
		if transport == "raft" {
			leader = Leader{RaftAddr: newRaftPort(b, testPeer()).lis.Addr().String(), APIAddr: noAPI}
		}
		call := func(f *Forwarder) {
			if err := f.Call(context.Background(), leader, checkMethod, &healthpb.HealthCheckRequest{}, &healthpb.HealthCheckResponse{}); err != nil {
				b.Error(err) // Fatal may not be called from RunParallel's goroutines
			}
		}
		b.Run(transport+"/1", func(b *testing.B) {
			f, _ := newTestForwarder(b)
			call(f)
			b.ResetTimer()
			for b.Loop() {
				call(f)
			}
		})
		b.Run(transport+"/64", func(b *testing.B) {
			f, _ := newTestForwarder(b)
			call(f)
			b.SetParallelism(64 / runtime.GOMAXPROCS(0))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					call(f)
				}
			})
		})
	}
}

func TestPeer_ServeConn_garbageEndsTheConnectionOnly(t *testing.T) {
	p := testPeer()
	serve := func(t *testing.T) (net.Conn, chan struct{}) {
		client, server := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer server.Close()
			p.ServeConn(context.Background(), server)
		}()
		t.Cleanup(func() { client.Close(); <-done })
		return client, done
	}
	frame := func(b []byte) []byte {
		out := binary.BigEndian.AppendUint32(nil, uint32(len(b)))
		return append(out, b...)
	}
	ended := func(t *testing.T, done chan struct{}) {
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("the connection was not ended")
		}
	}

	t.Run("over the size limit", func(t *testing.T) {
		c, done := serve(t)
		go func() { _, _ = c.Write(binary.BigEndian.AppendUint32(nil, uint32(p.maxFrame()+1))) }()
		ended(t, done)
	})
	t.Run("not a request", func(t *testing.T) {
		c, done := serve(t)
		go func() { _, _ = c.Write(frame([]byte{0xff, 0xff, 0xff})) }()
		ended(t, done)
	})
	t.Run("cut short", func(t *testing.T) {
		c, done := serve(t)
		go func() {
			_, _ = c.Write(frame(make([]byte, 100))[:50])
			c.Close()
		}()
		ended(t, done)
	})
	t.Run("a request that does not decode is answered", func(t *testing.T) {
		c, _ := serve(t)
		r := bufio.NewReader(c)
		go func() {
			_ = writeFrame(c, &peerv1.ForwardRequest{Id: 7, Method: checkMethod, Request: []byte{0xff, 0xff}})
		}()
		var resp peerv1.ForwardResponse
		var buf []byte
		require.NoError(t, readFrame(r, 1<<20, &buf, &resp))
		require.EqualValues(t, 7, resp.Id)
		err := decodeForwarded(&resp, &healthpb.HealthCheckResponse{})
		require.Equal(t, codes.InvalidArgument, status.Code(err), err)
		// The connection goes on serving.
		go func() { _ = writeFrame(c, &peerv1.ForwardRequest{Id: 8, Method: checkMethod}) }()
		require.NoError(t, readFrame(r, 1<<20, &buf, &resp))
		require.NoError(t, decodeForwarded(&resp, &healthpb.HealthCheckResponse{}))
	})
}

// A cancel for a call the stream does not run (done already, or never
// sent) changes nothing, and the stream goes on serving.
func TestPeer_Forward_cancelOfAnUnknownCallIsIgnored(t *testing.T) {
	leader, _ := legacyLeader(t)
	addr, err := leader.APIAddr()
	require.NoError(t, err)
	conn, err := grpcx.Dial(addr)
	require.NoError(t, err)
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := peerv1.NewPeerServiceClient(conn).Forward(ctx)
	require.NoError(t, err)
	req, err := proto.Marshal(&healthpb.HealthCheckRequest{})
	require.NoError(t, err)
	require.NoError(t, stream.Send(&peerv1.ForwardRequest{Id: 99, Cancel: true}))
	require.NoError(t, stream.Send(&peerv1.ForwardRequest{Id: 1, Method: checkMethod, Request: req}))
	resp, err := stream.Recv()
	require.NoError(t, err)
	require.EqualValues(t, 1, resp.Id, "no answer for the cancel, the call's answer")
	require.Empty(t, resp.Status)
	out := &healthpb.HealthCheckResponse{}
	require.NoError(t, proto.Unmarshal(resp.Response, out))
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, out.Status)
	require.NoError(t, stream.CloseSend())
}
