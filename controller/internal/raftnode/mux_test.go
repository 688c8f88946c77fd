package raftnode

import (
	"context"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newTestLayer(t *testing.T) *streamLayer {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := newStreamLayer(lis, lis.Addr(), layerOptions{silence: 200 * time.Millisecond})
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func dial(t *testing.T, s *streamLayer) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", s.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// echo is a forward handler that sends back what it reads.
func echo(served *atomic.Int32) func(net.Conn) {
	return func(c net.Conn) {
		served.Add(1)
		_, _ = io.Copy(c, c)
	}
}

func TestStreamLayer_raftConnectionsReachRaftWithTheirFirstByte(t *testing.T) {
	s := newTestLayer(t)
	var served atomic.Int32
	fwd := echo(&served)
	s.forward.Store(&fwd)
	for _, first := range []byte{0, 1, 2, 3, 4} { // Raft's RPC types
		c := dial(t, s)
		_, err := c.Write([]byte{first, 'x', 'y'})
		require.NoError(t, err)
		got, err := s.Accept()
		require.NoError(t, err)
		buf := make([]byte, 3)
		_, err = io.ReadFull(got, buf)
		require.NoError(t, err)
		require.Equal(t, []byte{first, 'x', 'y'}, buf)
		got.Close()
	}
	require.Zero(t, served.Load())
}

func TestStreamLayer_forwardingConnectionsReachTheHandler(t *testing.T) {
	s := newTestLayer(t)
	ctx := context.Background()

	// Before a handler is set, the handshake is refused and the dialer
	// learns the server does not take forwarded calls.
	_, err := DialForward(ctx, s.Addr().String(), time.Second)
	require.ErrorIs(t, err, ErrForwardUnsupported)

	var served atomic.Int32
	fwd := echo(&served)
	s.forward.Store(&fwd)
	c, err := DialForward(ctx, s.Addr().String(), time.Second)
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Write([]byte("ping"))
	require.NoError(t, err)
	buf := make([]byte, 4)
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	require.Equal(t, "ping", string(buf))
	require.EqualValues(t, 1, served.Load())

	// Close ends the handler's connection and waits for it.
	require.NoError(t, s.Close())
	_, err = c.Read(buf)
	require.Error(t, err)
	_, err = s.Accept()
	require.ErrorIs(t, err, net.ErrClosed)
}

func TestDialForward_serverWithoutForwarding(t *testing.T) {
	// A server that reads the preamble as a Raft RPC type it does not know
	// and closes the connection, as Raft's transport does.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer lis.Close()
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			b := make([]byte, 1)
			_, _ = c.Read(b)
			c.Close()
		}
	}()
	_, err = DialForward(context.Background(), lis.Addr().String(), time.Second)
	require.ErrorIs(t, err, ErrForwardUnsupported)

	// Nothing listening is not the same: that is a connection error.
	addr := lis.Addr().String()
	lis.Close()
	_, err = DialForward(context.Background(), addr, time.Second)
	require.Error(t, err)
	require.NotErrorIs(t, err, ErrForwardUnsupported)
}

func TestStreamLayer_garbageIsClosedAndRaftKeepsAccepting(t *testing.T) {
	s := newTestLayer(t)
	var served atomic.Int32
	fwd := echo(&served)
	s.forward.Store(&fwd)

	closed := func(c net.Conn) {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := io.ReadAll(c) // nil at a close; a reset when bytes were left unread
		var ne net.Error
		require.False(t, errors.As(err, &ne) && ne.Timeout(), "the server should close the connection, not leave it open")
	}
	// The forwarding byte with a wrong preamble.
	c := dial(t, s)
	_, err := c.Write([]byte{forwardPreamble[0], 'n', 'o', 'p', 'e', 'x'})
	require.NoError(t, err)
	closed(c)
	// The forwarding byte, then silence.
	c = dial(t, s)
	_, err = c.Write(forwardPreamble[:1])
	require.NoError(t, err)
	closed(c)
	// Nothing at all.
	closed(dial(t, s))
	// Half a preamble and a hang-up.
	c = dial(t, s)
	_, err = c.Write(forwardPreamble[:3])
	require.NoError(t, err)
	require.NoError(t, c.(*net.TCPConn).CloseWrite())
	closed(c)
	require.Zero(t, served.Load())

	// Raft's connections still come through.
	c = dial(t, s)
	_, err = c.Write([]byte{1})
	require.NoError(t, err)
	got, err := s.Accept()
	require.NoError(t, err)
	got.Close()
}

// disconnect closes the listener and the forwarding connections being
// served at once, without waiting for their handlers, which may be stuck
// (a forwarded write waiting on a stalled disk); Close later still waits
// for them.
func TestStreamLayer_disconnectDoesNotWaitForHandlers(t *testing.T) {
	s := newTestLayer(t)
	release := make(chan struct{})
	entered := make(chan struct{})
	fwd := func(c net.Conn) {
		close(entered)
		<-release // stuck, its connection unread
	}
	s.forward.Store(&fwd)
	c, err := DialForward(context.Background(), s.Addr().String(), time.Second)
	require.NoError(t, err)
	defer c.Close()
	<-entered

	disconnected := make(chan struct{})
	go func() { s.disconnect(); close(disconnected) }()
	select {
	case <-disconnected:
	case <-time.After(5 * time.Second):
		t.Fatal("disconnect waited for the handler")
	}
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	// Closed: EOF, or a reset when the server left bytes unread.
	_, err = c.Read(make([]byte, 1))
	require.True(t, errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET), "the connection was closed: %v", err)
	_, err = net.DialTimeout("tcp", s.Addr().String(), time.Second)
	require.Error(t, err, "the port refuses connections")
	close(release)
	require.NoError(t, s.Close())
}
