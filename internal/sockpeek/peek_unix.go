//go:build unix

package sockpeek

import "syscall"

// Raw peeks at the socket behind rc with one non-blocking system call.
func Raw(rc syscall.RawConn) State {
	st := Unknown
	err := rc.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case err == syscall.EAGAIN || err == syscall.EWOULDBLOCK || err == syscall.EINTR:
			st = Empty
		case err != nil || n == 0:
			st = Closed
		default:
			st = Data
		}
		return true // never wait for readiness
	})
	if err != nil {
		return Closed
	}
	return st
}
