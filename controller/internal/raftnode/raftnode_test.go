package raftnode

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"
)

type nopFSM struct{}

func (nopFSM) Apply(*raft.Log) any                 { return nil }
func (nopFSM) Snapshot() (raft.FSMSnapshot, error) { return nil, io.ErrUnexpectedEOF }
func (nopFSM) Restore(rc io.ReadCloser) error      { return rc.Close() }

// soloNode starts a one-node cluster "n1" on a loopback port; the caller
// closes it.
func soloNode(t *testing.T) *Node {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	cfg := DefaultConfig()
	cfg.ID, cfg.DataDir, cfg.Listener = "n1", t.TempDir(), lis
	cfg.Peers = []Peer{{ID: "n1", Address: lis.Addr().String()}}
	n, err := New(cfg, nopFSM{})
	require.NoError(t, err)
	return n
}

// closeWithin closes n and fails the test unless Close returns without
// error within d.
func closeWithin(t *testing.T, n *Node, d time.Duration) {
	t.Helper()
	closed := make(chan error, 1)
	go func() { closed <- n.Close() }()
	select {
	case err := <-closed:
		require.NoError(t, err)
	case <-time.After(d):
		t.Fatal("Close did not return")
	}
}

// A forwarded call may be waiting for a command it proposed when the node
// closes. Close ends such calls while Raft still runs, so that their
// commands are answered: a command proposed just before Raft shuts down
// may otherwise never be (hashicorp/raft#498), and Close waited for ever.
func TestNode_closeEndsForwardedCallsBeforeRaftShutsDown(t *testing.T) {
	n := soloNode(t)
	select {
	case <-n.LeaderCh():
	case <-time.After(5 * time.Second):
		t.Fatal("no leader")
	}

	type exit struct {
		state    raft.RaftState
		applyErr error
	}
	exits := make(chan exit, 1)
	started := make(chan struct{})
	n.ServeForwards(func(c net.Conn) {
		close(started)
		_, _ = io.Copy(io.Discard, c) // until Close ends the connection
		// The call now proposes a command, as a forwarded write does.
		exits <- exit{n.State(), n.Apply([]byte("write"), time.Second).Error()}
	})
	c, err := DialForward(context.Background(), string(n.Transport.LocalAddr()), time.Second)
	require.NoError(t, err)
	defer c.Close()
	<-started

	closeWithin(t, n, 10*time.Second)
	e := <-exits
	require.Equal(t, raft.Leader, e.state, "the call ended before Raft shut down")
	require.NoError(t, e.applyErr, "and its command was answered")

	// A closed node refuses forwarded calls.
	_, err = DialForward(context.Background(), string(n.Transport.LocalAddr()), time.Second)
	require.Error(t, err)
}

// Replication never pipelines (see New): a pipeline whose decoder has
// exited blocks its sender for ever in hashicorp/raft.
func TestNode_replicatesWithoutPipelining(t *testing.T) {
	n := soloNode(t)
	defer n.Close()
	_, err := n.Transport.AppendEntriesPipeline("n2", n.Transport.LocalAddr())
	require.ErrorIs(t, err, raft.ErrPipelineReplicationNotSupported)
}

// A peer that accepts Raft's connections and never answers, as a host
// cut off or powered off leaves them, holds the replication to it in a
// read for the transport's timeout (10 s), and Raft's shutdown waits for
// that replication. Close ends it after shutdownGrace.
func TestNode_closeDoesNotWaitForAPeerThatStoppedAnswering(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	accepted := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c // held open, never read
		}
	}()
	defer func() {
		silent.Close()
		for c := range accepted {
			c.Close()
		}
	}()

	n := soloNode(t)
	select {
	case <-n.LeaderCh():
	case <-time.After(5 * time.Second):
		t.Fatal("no leader")
	}
	require.NoError(t, n.AddNonvoter("n2", raft.ServerAddress(silent.Addr().String()), 0, 5*time.Second).Error())
	// Replication to n2 is under way: it took a connection.
	select {
	case c := <-accepted:
		accepted <- c
	case <-time.After(5 * time.Second):
		t.Fatal("no connection to the silent peer")
	}

	start := time.Now()
	closeWithin(t, n, 20*time.Second)
	took := time.Since(start)
	t.Logf("Close took %v", took.Round(time.Millisecond))
	require.Less(t, took, shutdownGrace+2*time.Second, "Close waited on the silent peer")
}
