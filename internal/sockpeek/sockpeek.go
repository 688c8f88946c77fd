// Package sockpeek looks at what waits in a socket's receive queue without
// reading it: whether the peer of a connection is still there.
package sockpeek

import (
	"net"
	"syscall"
)

// State is what a peek found.
type State int

const (
	// Empty: nothing to read yet, the peer is there.
	Empty State = iota
	// Data: bytes wait to be read.
	Data
	// Closed: the end of the stream or an error: the peer is gone.
	Closed
	// Unknown: the connection is not a socket that can be peeked at.
	Unknown
)

// Conn peeks at c's socket; Unknown when c is not a socket.
func Conn(c net.Conn) State {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return Unknown
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return Closed
	}
	return Raw(rc)
}
