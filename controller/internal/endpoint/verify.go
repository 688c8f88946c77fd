package endpoint

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// VerifyTimeout bounds the quorum round of a consistent read on the
// leader, which takes one round trip to the followers when all is well.
const VerifyTimeout = 2 * time.Second

// verifier shares quorum rounds (raft.VerifyLeader) between the
// consistent reads that wait at once, as etcd batches its ReadIndex
// requests: a read joins the next round to start, never one already under
// way, so the round that answers it began after the read arrived, and the
// state it then reads is at least as new as any write answered before.
// One round runs at a time, on one goroutine; the reads that arrive during
// it share the next. Under load a round serves many reads instead of each
// read sending its own heartbeat to every follower; and when Raft's leader
// loop is stuck (a stalled disk), one goroutine waits on it, not one per
// read.
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
		return raftError("verify leader", r.err)
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	case <-timer.C:
		return status.Errorf(codes.Unavailable, "verify leader: a quorum did not confirm this node's leadership within %v; retry", VerifyTimeout)
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
