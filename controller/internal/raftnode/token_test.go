package raftnode

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"

	"github.com/hostscale/hostscale/internal/tlsx/tlstest"
)

// refusals records what a layer refused.
type refusals struct {
	mu   sync.Mutex
	errs []error
}

func (r *refusals) add(_ net.Addr, err error) {
	r.mu.Lock()
	r.errs = append(r.errs, err)
	r.mu.Unlock()
}

func (r *refusals) list() []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]error(nil), r.errs...)
}

const goodToken = "controllers-0123456789"

func newTokenLayer(t *testing.T, authenticate func(string) error, token string, refused *refusals) *streamLayer {
	t.Helper()
	o := layerOptions{silence: 500 * time.Millisecond, authenticate: authenticate, token: func() string { return token }}
	if refused != nil {
		o.refused = refused.add
	}
	lis := mustListen(t)
	s := newStreamLayer(lis, lis.Addr(), o)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func onlyGood(tok string) error {
	if tok != goodToken {
		return errors.New("unknown token")
	}
	return nil
}

// raftRoundTrip dials to's Raft port from from's Dial and checks that
// what it writes reaches to's Raft, first byte included: the first
// connection to reach Raft is this one, so nothing refused before it was
// handed to Raft.
func raftRoundTrip(t *testing.T, from, to *streamLayer) {
	t.Helper()
	c, err := from.Dial(raft.ServerAddress(to.advertise.String()), time.Second)
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Write([]byte{1, 'o', 'k'})
	require.NoError(t, err)
	got, err := to.Accept()
	require.NoError(t, err)
	defer got.Close()
	buf := make([]byte, 3)
	_, err = io.ReadFull(got, buf)
	require.NoError(t, err)
	require.Equal(t, []byte{1, 'o', 'k'}, buf)
}

// TestStreamLayer_tokens: a port that checks tokens takes Raft's and the
// forwarded calls' connections that present a token it accepts, and
// refuses, before anything reaches Raft or the forward handler, those that
// present another, none, or a malformed handshake.
func TestStreamLayer_tokens(t *testing.T) {
	var refused refusals
	port := newTokenLayer(t, onlyGood, "", &refused)
	var served atomic.Int32
	fwd := echo(&served)
	port.forward.Store(&fwd)
	addr := port.advertise.String()
	ctx := context.Background()

	// Refused: a wrong token, on a Raft or a forwarding connection.
	_, err := newTokenLayer(t, nil, "someone-elses-token", nil).Dial(raft.ServerAddress(addr), time.Second)
	require.ErrorIs(t, err, ErrTokenRefused)
	_, err = DialForwardAs(ctx, addr, time.Second, PeerAuth{Token: "someone-elses-token"})
	require.ErrorIs(t, err, ErrTokenRefused)
	// No token: Raft's first byte, or the forwarding preamble, closes it.
	c := dial(t, port)
	_, err = c.Write([]byte{0, 1, 2, 3})
	require.NoError(t, err)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = io.ReadAll(c)
	var ne net.Error
	require.False(t, errors.As(err, &ne) && ne.Timeout(), "the port should close a connection without a token")
	_, err = DialForward(ctx, addr, time.Second)
	require.ErrorIs(t, err, ErrForwardUnsupported)
	errs := refused.list()
	require.Len(t, errs, 4)
	require.EqualError(t, errs[0], "unknown token")
	require.EqualError(t, errs[1], "unknown token")
	require.ErrorIs(t, errs[2], ErrNoToken)
	require.ErrorIs(t, errs[3], ErrNoToken)

	// Malformed handshakes are closed: a wrong magic, an empty or
	// oversized length, a token cut short, silence after the first byte.
	for name, msg := range map[string][]byte{
		"wrong magic": append([]byte{tokenPreamble[0], 'n', 'o', 'p', 'e'}, 0, 4, 'a', 'b', 'c', 'd'),
		"empty":       binary.BigEndian.AppendUint16(append([]byte{}, tokenPreamble[:]...), 0),
		"oversized":   binary.BigEndian.AppendUint16(append([]byte{}, tokenPreamble[:]...), maxTokenLen+1),
		"cut short":   append(binary.BigEndian.AppendUint16(append([]byte{}, tokenPreamble[:]...), 30), "controllers"...),
		"silence":     tokenPreamble[:1],
	} {
		c := dial(t, port)
		_, err := c.Write(msg)
		require.NoError(t, err, name)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(c)
		require.False(t, errors.As(err, &ne) && ne.Timeout(), "%s: the port should close the connection", name)
		require.Empty(t, got, "%s: the port answers nothing", name)
	}
	require.Zero(t, served.Load(), "no refused connection reached the forward handler")

	// Admitted: the right token, on a Raft connection (the first to reach
	// Raft) and a forwarding one.
	raftRoundTrip(t, newTokenLayer(t, nil, goodToken, nil), port)
	fc, err := DialForwardAs(ctx, addr, time.Second, PeerAuth{Token: goodToken})
	require.NoError(t, err)
	defer fc.Close()
	_, err = fc.Write([]byte("ping"))
	require.NoError(t, err)
	buf := make([]byte, 4)
	_, err = io.ReadFull(fc, buf)
	require.NoError(t, err)
	require.Equal(t, "ping", string(buf))
	require.EqualValues(t, 1, served.Load())
	require.Len(t, refused.list(), 4, "the admitted connections and the malformed ones are not refusals")
}

// TestStreamLayer_aPortWithoutTokensTakesOnesPresented: while ACLs are
// turned on, controllers given a token already present it to ports that
// do not check tokens yet, which take the connection as if none came.
func TestStreamLayer_aPortWithoutTokensTakesOnesPresented(t *testing.T) {
	port := newTokenLayer(t, nil, "", nil)
	raftRoundTrip(t, newTokenLayer(t, nil, goodToken, nil), port)
	raftRoundTrip(t, newTokenLayer(t, nil, "", nil), port)
	var served atomic.Int32
	fwd := echo(&served)
	port.forward.Store(&fwd)
	fc, err := DialForwardAs(context.Background(), port.advertise.String(), time.Second, PeerAuth{Token: "any-token-at-all-0123"})
	require.NoError(t, err)
	fc.Close()
}

// TestStreamLayer_tokensInsideTLS: on a port that serves TLS, the token's
// handshake runs inside TLS, after it.
func TestStreamLayer_tokensInsideTLS(t *testing.T) {
	set := tlstest.Write(t)
	serverTLS, err := set.Server.Server()
	require.NoError(t, err)
	peerTLS, err := set.Server.Client()
	require.NoError(t, err)
	lis := mustListen(t)
	var refused refusals
	port := newStreamLayer(lis, lis.Addr(), layerOptions{
		silence: 500 * time.Millisecond, serverTLS: serverTLS, clientTLS: func() *tls.Config { return peerTLS },
		authenticate: onlyGood, refused: refused.add,
	})
	t.Cleanup(func() { _ = port.Close() })
	var served atomic.Int32
	fwd := echo(&served)
	port.forward.Store(&fwd)
	addr := port.Addr().String()
	ctx := context.Background()

	_, err = DialForwardAs(ctx, addr, time.Second, PeerAuth{TLS: peerTLS})
	require.ErrorIs(t, err, ErrForwardUnsupported, "TLS without a token")
	_, err = DialForwardAs(ctx, addr, time.Second, PeerAuth{TLS: peerTLS, Token: "someone-elses-token"})
	require.ErrorIs(t, err, ErrTokenRefused)
	_, err = DialForwardAs(ctx, addr, time.Second, PeerAuth{Token: goodToken})
	require.Error(t, err, "a token without TLS")
	fc, err := DialForwardAs(ctx, addr, time.Second, PeerAuth{TLS: peerTLS, Token: goodToken})
	require.NoError(t, err)
	fc.Close()
	require.Len(t, refused.list(), 2)

	dialer := newStreamLayer(mustListen(t), nil, layerOptions{clientTLS: func() *tls.Config { return peerTLS }, token: func() string { return goodToken }})
	t.Cleanup(func() { _ = dialer.Close() })
	raftRoundTrip(t, dialer, port)
}

func mustListen(t *testing.T) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	return lis
}
