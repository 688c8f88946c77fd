package tlsx

import (
	"io"
	"net"
)

// recordHandshake is the first byte of every TLS connection: a TLS record
// of the handshake type carrying the ClientHello.
const recordHandshake = 0x16

// Sniff reads conn's first byte and reports whether it opens a TLS
// handshake. The conn returned reads that byte again first. Protocols
// that share a port with TLS during a migration to it (the controllers'
// gRPC API and Raft port, with -tls-accept-plaintext) never start with
// that byte.
func Sniff(conn net.Conn) (c net.Conn, isTLS bool, err error) {
	var b [1]byte
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		return conn, false, err
	}
	return &PrefixConn{Conn: conn, First: b[0], Pending: true}, b[0] == recordHandshake, nil
}

// PrefixConn is a connection whose first byte was read already: it reads
// First again before the rest while Pending.
type PrefixConn struct {
	net.Conn
	First   byte
	Pending bool
}

func (p *PrefixConn) Read(b []byte) (int, error) {
	if p.Pending && len(b) > 0 {
		p.Pending = false
		b[0] = p.First
		return 1, nil
	}
	return p.Conn.Read(b)
}
