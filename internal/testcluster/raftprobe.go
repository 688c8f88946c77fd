package testcluster

import (
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// RaftPortRefusesTokenless sends the Raft port at addr the first bytes of
// an AppendEntries RPC (hashicorp/raft's type 0, then a msgpack map) with
// no token before them, as a peer that is not a controller would. It
// returns nil when the port closes the connection within wait without
// answering anything, and says otherwise what happened.
func RaftPortRefusesTokenless(addr string, wait time.Duration) error {
	conn, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.Write([]byte{0, 0x84, 0xa1, 'x'}); err != nil {
		return err
	}
	if err := conn.SetReadDeadline(time.Now().Add(wait)); err != nil {
		return err
	}
	got, err := io.ReadAll(conn)
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("the raft port at %s kept a connection without a token open for %v", addr, wait)
	case len(got) > 0:
		return fmt.Errorf("the raft port at %s answered a connection without a token: %q", addr, got)
	}
	return nil
}
