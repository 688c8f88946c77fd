package endpoint

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fakeVerify is a quorum round each of which waits for a result on
// rounds; it records how many ran and the most that ran at once.
type fakeVerify struct {
	rounds           chan error
	started          chan struct{}
	calls, now, most atomic.Int32
}

func newFakeVerify() *fakeVerify {
	return &fakeVerify{rounds: make(chan error), started: make(chan struct{}, 16)}
}

func (f *fakeVerify) verify() error {
	f.calls.Add(1)
	n := f.now.Add(1)
	for m := f.most.Load(); n > m && !f.most.CompareAndSwap(m, n); m = f.most.Load() {
	}
	f.started <- struct{}{}
	err := <-f.rounds
	f.now.Add(-1)
	return err
}

// A read is answered by a round that started after it arrived: reads
// that come while a round runs share the next one, and rounds never
// overlap.
func TestVerifier_readsShareTheNextRound(t *testing.T) {
	f := newFakeVerify()
	v := &verifier{verify: f.verify}
	ctx := context.Background()

	first := make(chan error, 1)
	go func() { first <- v.wait(ctx) }()
	<-f.started // round 1 runs

	later := make(chan error, 8)
	for range 8 {
		go func() { later <- v.wait(ctx) }()
	}
	require.Eventually(t, func() bool {
		v.mu.Lock()
		defer v.mu.Unlock()
		return v.next != nil
	}, 5*time.Second, time.Millisecond)
	// Give the eight calls their time to join: each blocks in wait.
	require.Never(t, func() bool { return len(later) > 0 }, 50*time.Millisecond, 5*time.Millisecond)

	// Round 1 fails: only the read it started for sees it.
	f.rounds <- raft.ErrNotLeader
	require.Equal(t, codes.Unavailable, status.Code(<-first))
	<-f.started // round 2, for the eight
	require.Empty(t, later, "a read was answered by a round under way when it came")
	f.rounds <- nil
	for range 8 {
		require.NoError(t, <-later)
	}
	require.Equal(t, int32(2), f.calls.Load(), "one round for the eight reads")
	require.Equal(t, int32(1), f.most.Load(), "rounds overlapped")
}

// A stuck round (Raft's leader loop waiting on a stalled disk) holds its
// readers only until their context ends; the round goes on alone.
func TestVerifier_aStuckRoundLetsItsReadersGo(t *testing.T) {
	f := newFakeVerify()
	v := &verifier{verify: f.verify}
	t.Cleanup(func() { f.rounds <- nil }) // the loop comes back

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := v.wait(ctx)
	require.Equal(t, codes.DeadlineExceeded, status.Code(err), "%v", err)
	require.Less(t, time.Since(start), VerifyTimeout)

	// Without a deadline of its own, a read gives up after VerifyTimeout.
	start = time.Now()
	err = v.wait(context.Background())
	require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	require.GreaterOrEqual(t, time.Since(start), VerifyTimeout)
	require.Equal(t, int32(1), f.calls.Load(), "one stuck round, not one per read")
}

func TestFailureTolerance_reachableVotersLessAQuorum(t *testing.T) {
	m := func(voter, reachable bool) *pb.Member {
		s := pb.Suffrage_SUFFRAGE_NONVOTER
		if voter {
			s = pb.Suffrage_SUFFRAGE_VOTER
		}
		return &pb.Member{Suffrage: s, Reachable: reachable}
	}
	for _, c := range []struct {
		name    string
		members []*pb.Member
		want    uint32
	}{
		{"three voters", []*pb.Member{m(true, true), m(true, true), m(true, true)}, 1},
		{"one of three unreached", []*pb.Member{m(true, true), m(true, false), m(true, true)}, 0},
		{"two of three unreached", []*pb.Member{m(true, true), m(true, false), m(true, false)}, 0},
		{"four voters", []*pb.Member{m(true, true), m(true, true), m(true, true), m(true, true)}, 1},
		{"five voters", []*pb.Member{m(true, true), m(true, true), m(true, true), m(true, true), m(true, true)}, 2},
		{"non-voters do not count", []*pb.Member{m(true, true), m(true, true), m(true, true), m(false, true), m(false, true)}, 1},
		{"one voter", []*pb.Member{m(true, true)}, 0},
	} {
		require.Equal(t, c.want, FailureTolerance(c.members), c.name)
	}
}
