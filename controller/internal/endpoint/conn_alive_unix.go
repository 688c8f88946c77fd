//go:build unix

package endpoint

import (
	"net"
	"syscall"
)

// connAlive reports whether the peer of an idle connection has not closed
// it: a peek that would block means it is open; end of file or an error
// means it is gone. It costs one system call, and spares a call sent on a
// connection the leader closed while it sat idle.
func connAlive(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var alive bool
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		// Only "would block" is alive: end of file, an error, or bytes an
		// idle connection should not have all mean it is gone.
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		alive = err == syscall.EAGAIN || err == syscall.EWOULDBLOCK
		return true
	})
	return err == nil && alive
}

// peerGone reports whether the peer of a connection in use has closed or
// reset it: a peek that finds the end of the stream or an error. Bytes
// waiting, or none yet, mean it is still there. One system call.
func peerGone(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	var gone bool
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		gone = (n == 0 && err == nil) || (err != nil && err != syscall.EAGAIN && err != syscall.EWOULDBLOCK && err != syscall.EINTR)
		return true
	})
	return err != nil || gone
}
