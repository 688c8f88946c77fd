package sockpeek

import (
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// pair returns the two ends of a loopback TCP connection.
func pair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	b := <-accepted
	require.NotNil(t, b)
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func TestConn_seesThePeerWithoutReading(t *testing.T) {
	a, b := pair(t)
	require.Equal(t, Empty, Conn(a))

	_, err := b.Write([]byte("hi"))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return Conn(a) == Data }, 5*time.Second, time.Millisecond)
	require.Equal(t, Data, Conn(a), "a peek reads nothing")
	buf := make([]byte, 2)
	_, err = a.Read(buf)
	require.NoError(t, err)
	require.Equal(t, "hi", string(buf))
	require.Equal(t, Empty, Conn(a))

	require.NoError(t, b.Close())
	require.Eventually(t, func() bool { return Conn(a) == Closed }, 5*time.Second, time.Millisecond)

	require.NoError(t, a.Close())
	require.Equal(t, Closed, Conn(a), "a closed connection")
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	require.Equal(t, Unknown, Conn(c1), "not a socket")
}
