package endpoint

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// holdingTransport is an in-memory transport whose AppendEntries calls,
// while it holds, reach the follower and get its reply, but return it only
// once released: the replies that wait in a frozen leader's sockets.
// Replication sends one request at a time, as the controller's does.
type holdingTransport struct {
	*raft.InmemTransport

	mu      sync.Mutex
	holding bool
	held    map[raft.ServerAddress]int
	release chan struct{}
}

func (h *holdingTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	err := h.InmemTransport.AppendEntries(id, target, args, resp)
	h.mu.Lock()
	if !h.holding {
		h.mu.Unlock()
		return err
	}
	h.held[target]++
	release := h.release
	h.mu.Unlock()
	<-release
	return err
}

func (h *holdingTransport) AppendEntriesPipeline(raft.ServerID, raft.ServerAddress) (raft.AppendPipeline, error) {
	return nil, raft.ErrPipelineReplicationNotSupported
}

func (h *holdingTransport) hold() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.holding, h.held, h.release = true, map[raft.ServerAddress]int{}, make(chan struct{})
}

func (h *holdingTransport) heldFor(target raft.ServerAddress) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.held[target]
}

func (h *holdingTransport) unhold() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.holding {
		h.holding = false
		close(h.release)
	}
}

// countingStore is an in-memory log store that counts its writes.
type countingStore struct {
	*raft.InmemStore
	stored atomic.Int64
}

func (s *countingStore) StoreLogs(ls []*raft.Log) error {
	defer s.stored.Add(1)
	return s.InmemStore.StoreLogs(ls)
}

func (s *countingStore) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

type nopFSM struct{}

func (nopFSM) Apply(*raft.Log) any                 { return nil }
func (nopFSM) Snapshot() (raft.FSMSnapshot, error) { return nil, fmt.Errorf("no snapshots") }
func (nopFSM) Restore(io.ReadCloser) error         { return nil }

// A leader cut off for longer than the others take to elect a new leader
// and commit a write, and which then reads the replies to heartbeats it
// sent before, does not confirm a read: replies to requests sent before
// the round began confirm nothing. (raft.VerifyLeader counts them, and
// confirms.) The leader's lease is longer than the others' election
// takes, so the lease check, which would step it down, stays out of the
// way as it does for a leader frozen through both.
func TestReadRound_repliesFromBeforeTheRoundConfirmNothing(t *testing.T) {
	type node struct {
		id    raft.ServerID
		trans *holdingTransport
		store *countingStore
		raft  *raft.Raft
	}
	nodes := make([]*node, 3)
	var servers []raft.Server
	for i := range nodes {
		addr, trans := raft.NewInmemTransport("")
		n := &node{
			id:    raft.ServerID(fmt.Sprintf("n%d", i+1)),
			trans: &holdingTransport{InmemTransport: trans},
			store: &countingStore{InmemStore: raft.NewInmemStore()},
		}
		nodes[i] = n
		servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: n.id, Address: addr})
	}
	for _, a := range nodes {
		for _, b := range nodes {
			if a != b {
				a.trans.Connect(b.trans.LocalAddr(), b.trans.InmemTransport)
			}
		}
	}
	old, others := nodes[0], nodes[1:]
	for _, n := range nodes {
		conf := raft.DefaultConfig()
		conf.LocalID = n.id
		// A leader heartbeats every tenth of its heartbeat timeout or up
		// to twice that: n1's heartbeats come at most 1.6 s apart, and
		// the others wait 2 to 4 s before they campaign. n1 campaigns only
		// when handed the leadership, and steps down once it has heard
		// from no quorum for 8 s: cut off, it still leads when the others
		// have elected and committed, within about 6 s of the cut even on
		// a loaded machine (with a 2 s lease, the others' election lost
		// that race in one CI run).
		timeout := 2 * time.Second
		if n == old {
			timeout = 8 * time.Second
		}
		conf.HeartbeatTimeout, conf.ElectionTimeout, conf.LeaderLeaseTimeout = timeout, timeout, timeout
		conf.CommitTimeout = 5 * time.Millisecond
		conf.BatchApplyCh = true
		conf.LogOutput = io.Discard
		require.NoError(t, raft.BootstrapCluster(conf, n.store, n.store, raft.NewInmemSnapshotStore(), n.trans, raft.Configuration{Servers: servers}))
		r, err := raft.NewRaft(conf, nopFSM{}, n.store, n.store, raft.NewInmemSnapshotStore(), n.trans)
		require.NoError(t, err)
		n.raft = r
	}
	t.Cleanup(func() {
		for _, n := range nodes {
			n.trans.unhold()
		}
		for _, n := range nodes {
			require.NoError(t, n.raft.Shutdown().Error())
		}
	})
	leaderOf := func(among []*node) *node {
		for _, n := range among {
			if n.raft.State() == raft.Leader {
				return n
			}
		}
		return nil
	}
	require.Eventually(t, func() bool { return leaderOf(nodes) != nil }, 10*time.Second, 10*time.Millisecond)
	if leaderOf(nodes) != old {
		require.NoError(t, leaderOf(nodes).raft.LeadershipTransferToServer(old.id, old.trans.LocalAddr()).Error())
	}
	require.Eventually(t, func() bool { return old.raft.State() == raft.Leader }, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, old.raft.Apply([]byte("first"), time.Second).Error())
	require.NoError(t, readRound(old.raft), "a leader in touch with the others confirms its reads")

	// The leader's heartbeats reach the others, but it gets no reply
	// until released, and nothing the others send reaches it: they hear
	// nothing more after one heartbeat each, elect one of themselves and
	// commit.
	for _, n := range others {
		n.trans.Disconnect(old.trans.LocalAddr())
	}
	old.trans.hold()
	require.Eventually(t, func() bool {
		return old.trans.heldFor(others[0].trans.LocalAddr()) > 0 && old.trans.heldFor(others[1].trans.LocalAddr()) > 0
	}, 5*time.Second, time.Millisecond)
	require.Eventually(t, func() bool { return leaderOf(others) != nil }, 10*time.Second, time.Millisecond)
	require.NoError(t, leaderOf(others).raft.Apply([]byte("newer"), time.Second).Error())
	require.Equal(t, raft.Leader, old.raft.State(), "the old leader has not noticed yet")

	// A read comes to the old leader, which takes up its round; then the
	// replies from before reach it.
	storedBefore := old.store.stored.Load()
	read := make(chan error, 1)
	go func() { read <- readRound(old.raft) }()
	require.Eventually(t, func() bool {
		return old.store.stored.Load() > storedBefore || old.raft.State() != raft.Leader
	}, 5*time.Second, time.Millisecond, "the round's entry is in the old leader's log")
	// A round that writes nothing (VerifyLeader) leaves the wait above to
	// the lease's end: the replies from before would then reach a leader
	// no more.
	require.Equal(t, raft.Leader, old.raft.State(), "the old leader still leads once its round has begun")
	old.trans.unhold()

	select {
	case err := <-read:
		require.Error(t, err, "the old leader confirmed a read after another leader committed a write")
		require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
		require.Contains(t, err.Error(), "not the leader")
	case <-time.After(10 * time.Second):
		t.Fatal("the read's round did not end")
	}
}
