package endpoint

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/hostscale/hostscale/controller/internal/raftnode"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// VerifyTimeout bounds the quorum round of a consistent read on the
// leader, which takes one log write and one round trip to the followers
// when all is well.
const VerifyTimeout = 2 * time.Second

// readRound confirms that this node leads and that its state machine holds
// every write answered before the round began, by committing a barrier
// entry (raft.Barrier): the log read of the Raft thesis (§6.4).
//
// raft.VerifyLeader is cheaper, a heartbeat round with no log write, but
// it counts any successful reply a follower's replication goroutine reads
// while the round is open, including a reply to a heartbeat sent before
// the round began. A leader frozen for seconds (SIGSTOP, a paused VM) with
// such replies waiting in its sockets wakes, reads them, and confirms a
// leadership the others took from it while it slept: a stale read. An
// entry commits only on replies to the requests that carried it, all sent
// after the round began, so no reply from before counts.
func readRound(r *raft.Raft) error {
	err := r.Barrier(VerifyTimeout).Error()
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrNotLeader):
		return status.Error(codes.Unavailable, "confirm leadership: this node is not the leader; retry")
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return status.Errorf(codes.Unavailable, "confirm leadership: a quorum did not confirm this node's leadership within %v; retry", VerifyTimeout)
	}
	var store *raftnode.LogStoreError
	if errors.As(err, &store) {
		return status.Errorf(codes.Unavailable, "confirm leadership: this node could not write its Raft log (%v) and no longer leads; retry", store.Err)
	}
	return raftError("confirm leadership", err)
}

// verifier shares quorum rounds (readRound) between the consistent reads
// that wait at once, as etcd batches its ReadIndex requests: a read joins
// the next round to start, never one already under way, so the round that
// answers it began after the read arrived, and the state it then reads is
// at least as new as any write answered before. One round runs at a time,
// on one goroutine; the reads that arrive during it share the next. Under
// load a round serves many reads instead of each read writing an entry of
// its own; and when Raft's leader loop is stuck (a stalled disk), one
// goroutine waits on it, not one per read.
type verifier struct {
	verify func() error

	mu      sync.Mutex
	next    *verifyRound
	running bool
}

type verifyRound struct {
	done chan struct{}
	err  error
}

// wait returns the outcome of a quorum round that starts after the call,
// or gives up with ctx or after VerifyTimeout.
func (v *verifier) wait(ctx context.Context) error {
	v.mu.Lock()
	if v.next == nil {
		v.next = &verifyRound{done: make(chan struct{})}
	}
	r := v.next
	if !v.running {
		v.running = true
		go v.run()
	}
	v.mu.Unlock()

	timer := time.NewTimer(VerifyTimeout)
	defer timer.Stop()
	select {
	case <-r.done:
		return raftError("confirm leadership", r.err)
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	case <-timer.C:
		return status.Errorf(codes.Unavailable, "confirm leadership: a quorum did not confirm this node's leadership within %v; retry", VerifyTimeout)
	}
}

// run runs the rounds readers wait for, one after the other, until none
// waits.
func (v *verifier) run() {
	for {
		v.mu.Lock()
		r := v.next
		v.next = nil
		if r == nil {
			v.running = false
			v.mu.Unlock()
			return
		}
		v.mu.Unlock()
		r.err = v.verify()
		close(r.done)
	}
}
