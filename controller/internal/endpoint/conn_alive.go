package endpoint

import (
	"crypto/tls"
	"net"

	"github.com/hostscale/hostscale/internal/sockpeek"
)

// connAlive reports whether the peer of an idle connection has not closed
// it: nothing to read means it is open; end of file, an error, or bytes an
// idle connection should not have mean it is gone. It costs one system
// call, and spares a call sent on a connection the leader closed while it
// sat idle. Where it cannot peek, a closed connection fails the call
// instead.
func connAlive(c net.Conn) bool {
	st := sockpeek.Conn(raw(c))
	return st == sockpeek.Empty || st == sockpeek.Unknown
}

// peerGone reports whether the peer of a connection in use has closed or
// reset it. Bytes waiting, or none yet, mean it is still there.
func peerGone(c net.Conn) bool { return sockpeek.Conn(raw(c)) == sockpeek.Closed }

// raw is the socket under a TLS connection: a peer's close shows there as
// an alert's bytes or the end of file, which is all these ask.
func raw(c net.Conn) net.Conn {
	if tc, ok := c.(*tls.Conn); ok {
		return tc.NetConn()
	}
	return c
}
