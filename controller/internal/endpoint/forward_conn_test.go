package endpoint

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
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

	"github.com/hostscale/hostscale/internal/grpcx"
	peerv1 "github.com/hostscale/hostscale/proto/hostscale/peer/v1"
)

const checkMethod = "/grpc.health.v1.Health/Check"

// slowHealth answers Check, after a while for the service "slow".
type slowHealth struct {
	*health.Server
}

func (s slowHealth) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	if req.Service == "slow" {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return s.Server.Check(ctx, req)
}

func testPeer() *Peer {
	p := NewPeer(nil)
	p.MaxMessageSize = 1 << 20
	p.Register(&healthpb.Health_ServiceDesc, slowHealth{health.NewServer()})
	return p
}

// raftPort stands for a leader's Raft port that takes forwarded calls: it
// answers the handshake and serves the connection with peer.
type raftPort struct {
	lis      net.Listener
	accepted atomic.Int32
	conns    chan net.Conn
}

func newRaftPort(t *testing.T, peer *Peer) *raftPort {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	r := &raftPort{lis: lis, conns: make(chan net.Conn, 16)}
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
			r.conns <- c
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
		close(r.conns)
		for c := range r.conns {
			c.Close()
		}
	})
	return r
}

func newTestForwarder(t *testing.T) (*Forwarder, *prometheus.Registry) {
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

func forwarded(t *testing.T, reg *prometheus.Registry, transport string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != "hostscale_controller_forwarded_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "transport" && l.GetValue() == transport {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
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

	// The leader's error comes back with its code.
	err := f.Call(ctx, leader, checkMethod, &healthpb.HealthCheckRequest{Service: "nope"}, &healthpb.HealthCheckResponse{})
	require.Equal(t, codes.NotFound, status.Code(err), err)
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
	for len(port.conns) > 0 {
		(<-port.conns).Close()
	}
	require.Eventually(t, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.idle[leader.RaftAddr]) == 1 && !connAlive(f.idle[leader.RaftAddr][0].Conn)
	}, 5*time.Second, 10*time.Millisecond)
	require.NoError(t, f.Call(ctx, leader, checkMethod, &healthpb.HealthCheckRequest{}, &healthpb.HealthCheckResponse{}))
	require.EqualValues(t, 3, port.accepted.Load())
	require.Zero(t, forwarded(t, reg, "api"))
}

func TestForwarder_fallsBackToTheAPIForALeaderWithoutForwarding(t *testing.T) {
	// A Raft port that reads the preamble as an unknown RPC type and hangs
	// up, as a leader that does not take forwarded calls there does.
	old, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var dials atomic.Int32
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
	defer old.Close()

	// Its API serves the Forward stream.
	api, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer()
	peerv1.RegisterPeerServiceServer(srv, testPeer())
	go func() { _ = srv.Serve(api) }()
	defer srv.Stop()

	f, reg := newTestForwarder(t)
	leader := Leader{RaftAddr: old.Addr().String(), APIAddr: func() (string, error) { return api.Addr().String(), nil }}
	for range 3 {
		resp := &healthpb.HealthCheckResponse{}
		require.NoError(t, f.Call(context.Background(), leader, checkMethod, &healthpb.HealthCheckRequest{}, resp))
		require.Equal(t, healthpb.HealthCheckResponse_SERVING, resp.Status)
	}
	require.EqualValues(t, 1, dials.Load(), "the refusal is remembered")
	require.EqualValues(t, 3, forwarded(t, reg, "api"))
	require.Zero(t, forwarded(t, reg, "raft"))
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
