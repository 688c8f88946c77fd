package testcluster

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The probe tells a port that closes a token-less connection unread from
// one that keeps it open and one that answers.
func TestRaftPortRefusesTokenless(t *testing.T) {
	serve := func(handle func(net.Conn)) string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					handle(c)
				}()
			}
		}()
		return l.Addr().String()
	}
	closes := serve(func(net.Conn) {})
	require.NoError(t, RaftPortRefusesTokenless(closes, 5*time.Second))

	holds := serve(func(c net.Conn) { _, _ = io.Copy(io.Discard, c) }) // until the probe gives up
	err := RaftPortRefusesTokenless(holds, 200*time.Millisecond)
	require.ErrorContains(t, err, "kept a connection without a token open")

	answers := serve(func(c net.Conn) { _, _ = c.Read(make([]byte, 64)); _, _ = c.Write([]byte("ok")) })
	err = RaftPortRefusesTokenless(answers, 5*time.Second)
	require.Error(t, err)
	require.True(t, strings.Contains(err.Error(), `answered a connection without a token: "ok"`), err.Error())
}
