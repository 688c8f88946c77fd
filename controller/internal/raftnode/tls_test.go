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
	s := newStreamLayer(lis, lis.Addr(), 200*time.Millisecond, serverTLS, func() *tls.Config { return peerTLS })
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
	fc, err := DialForwardTLS(ctx, addr, time.Second, peerTLS)
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
	_, err = DialForwardTLS(ctx, addr, time.Second, otherTLS)
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
