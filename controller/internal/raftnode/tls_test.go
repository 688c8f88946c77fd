package raftnode

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"

	"github.com/hostscale/hostscale/internal/tlsx/tlstest"
)

// TestStreamLayer_TLS: a Raft port serving mutual TLS carries Raft's RPCs
// and forwarded calls from peers with a certificate of its CA, and
// refuses plaintext peers and peers of another CA before anything
// reaches Raft or the forward handler.
func TestStreamLayer_TLS(t *testing.T) {
	set := tlstest.Write(t)
	serverTLS, err := set.Server.Server()
	require.NoError(t, err)
	peerTLS, err := set.Server.Client() // a controller dials with its own certificate
	require.NoError(t, err)
	otherTLS, err := set.Other.Client()
	require.NoError(t, err)
	otherTLS.RootCAs = peerTLS.RootCAs // trusts the server, but the server does not trust it

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := newStreamLayer(lis, lis.Addr(), layerOptions{silence: 200 * time.Millisecond, serverTLS: serverTLS, clientTLS: func() *tls.Config { return peerTLS }})
	t.Cleanup(func() { _ = s.Close() })
	var served atomic.Int32
	fwd := echo(&served)
	s.forward.Store(&fwd)
	addr := s.Addr().String()

	// Raft's own RPC, dialled by a peer's layer.
	c, err := s.Dial(raft.ServerAddress(addr), time.Second)
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Write([]byte{1, 'x'})
	require.NoError(t, err)
	got, err := s.Accept()
	require.NoError(t, err)
	buf := make([]byte, 2)
	_, err = io.ReadFull(got, buf)
	require.NoError(t, err)
	require.Equal(t, []byte{1, 'x'}, buf)
	got.Close()

	// A forwarded call.
	ctx := context.Background()
	fc, err := DialForwardAs(ctx, addr, time.Second, PeerAuth{TLS: peerTLS})
	require.NoError(t, err)
	defer fc.Close()
	_, err = fc.Write([]byte("ping"))
	require.NoError(t, err)
	buf = make([]byte, 4)
	_, err = io.ReadFull(fc, buf)
	require.NoError(t, err)
	require.Equal(t, "ping", string(buf))

	// Refused: plaintext, and a certificate of another CA.
	_, err = DialForward(ctx, addr, time.Second)
	require.Error(t, err)
	_, err = DialForwardAs(ctx, addr, time.Second, PeerAuth{TLS: otherTLS})
	require.Error(t, err)
	plain, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer plain.Close()
	_, _ = plain.Write([]byte{1, 'x', 'y'})
	_ = plain.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = plain.Read(buf)
	require.Error(t, err, "a plaintext Raft peer is cut off")
	require.EqualValues(t, 1, served.Load(), "only the certified forwarded call was served")
	select {
	case c := <-s.raftConns:
		t.Fatalf("a refused connection reached Raft: %v", c.RemoteAddr())
	default:
	}
}

// TestStreamLayer_TLSAcceptingPlaintext: a Raft port serving TLS with
// acceptPlain takes Raft's RPCs and forwarded calls both over TLS and in
// plaintext, counting the plaintext connections; a peer of another CA is
// still refused.
func TestStreamLayer_TLSAcceptingPlaintext(t *testing.T) {
	set := tlstest.Write(t)
	serverTLS, err := set.Server.Server()
	require.NoError(t, err)
	peerTLS, err := set.Server.Client()
	require.NoError(t, err)
	otherTLS, err := set.Other.Client()
	require.NoError(t, err)
	otherTLS.RootCAs = peerTLS.RootCAs
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var plain atomic.Int32
	s := newStreamLayer(lis, lis.Addr(), layerOptions{silence: 200 * time.Millisecond, serverTLS: serverTLS, clientTLS: func() *tls.Config { return peerTLS }, acceptPlain: true, onPlain: func() { plain.Add(1) }})
	t.Cleanup(func() { _ = s.Close() })
	var served atomic.Int32
	fwd := echo(&served)
	s.forward.Store(&fwd)
	addr := s.Addr().String()
	ctx := context.Background()

	raftRPC := func(c net.Conn) {
		t.Helper()
		_, err := c.Write([]byte{1, 'x'})
		require.NoError(t, err)
		got, err := s.Accept()
		require.NoError(t, err)
		defer got.Close()
		buf := make([]byte, 2)
		_, err = io.ReadFull(got, buf)
		require.NoError(t, err)
		require.Equal(t, []byte{1, 'x'}, buf)
	}
	forward := func(c net.Conn) {
		t.Helper()
		_, err := c.Write([]byte("ping"))
		require.NoError(t, err)
		buf := make([]byte, 4)
		_, err = io.ReadFull(c, buf)
		require.NoError(t, err)
		require.Equal(t, "ping", string(buf))
	}

	tlsRaft, err := s.Dial(raft.ServerAddress(addr), time.Second)
	require.NoError(t, err)
	defer tlsRaft.Close()
	raftRPC(tlsRaft)
	plainRaft, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer plainRaft.Close()
	raftRPC(plainRaft)
	tlsFwd, err := DialForwardAs(ctx, addr, time.Second, PeerAuth{TLS: peerTLS})
	require.NoError(t, err)
	defer tlsFwd.Close()
	forward(tlsFwd)
	plainFwd, err := DialForward(ctx, addr, time.Second)
	require.NoError(t, err)
	defer plainFwd.Close()
	forward(plainFwd)
	require.EqualValues(t, 2, plain.Load(), "the two plaintext connections")

	_, err = DialForwardAs(ctx, addr, time.Second, PeerAuth{TLS: otherTLS})
	require.Error(t, err, "a peer of another CA")
	require.EqualValues(t, 2, served.Load())
}
