//go:build !unix

package sockpeek

import "syscall"

// Raw cannot peek on this system.
func Raw(syscall.RawConn) State { return Unknown }
