//go:build !unix

package endpoint

import "net"

// connAlive cannot peek here; a closed connection fails the call instead.
func connAlive(net.Conn) bool { return true }

// peerGone cannot peek here: a forwarded call runs to its end.
func peerGone(net.Conn) bool { return false }
