package balancer

import (
	"net"
	"time"

	"github.com/pires/go-proxyproto"
)

// ProxyProtocolListener returns a listener whose connections must open with
// a PROXY protocol header, version 1 or 2 (Config.ProxyProtocol). Accept
// does not read it: a connection reads it on its first Read or RemoteAddr,
// within timeout, so that a slow client holds up no other.
func ProxyProtocolListener(ln net.Listener, timeout time.Duration) net.Listener {
	return proxiedListener{&proxyproto.Listener{
		Listener:          ln,
		ReadHeaderTimeout: timeout,
		ConnPolicy: func(proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
			return proxyproto.REQUIRE, nil
		},
	}}
}

type proxiedListener struct{ *proxyproto.Listener }

func (l proxiedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if pc, ok := c.(*proxyproto.Conn); ok {
		return &proxiedConn{pc}, nil
	}
	return c, nil
}

// proxiedConn is a connection of a ProxyProtocolListener that can still
// half-close (an answer to a client that is still sending, a tunnel).
type proxiedConn struct{ *proxyproto.Conn }

func (c *proxiedConn) CloseWrite() error {
	if cw, ok := c.Raw().(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}
