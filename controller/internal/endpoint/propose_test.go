package endpoint

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/hostscale/hostscale/controller/internal/fsm"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// heldRaft is a Raft whose entries stay in flight until the test applies
// them: each proposed entry arrives on entries, with the number of
// commands it holds.
type heldRaft struct {
	entries chan *heldEntry
	index   atomic.Uint64
}

type heldEntry struct {
	commands int
	applied  chan struct{}
	index    uint64
}

func (e *heldEntry) Error() error  { <-e.applied; return nil }
func (e *heldEntry) Index() uint64 { return e.index }
func (e *heldEntry) Response() any {
	if e.commands == 1 {
		return &fsm.Result{Index: e.index}
	}
	rs := make([]*fsm.Result, e.commands)
	for i := range rs {
		rs[i] = &fsm.Result{Index: e.index}
	}
	return rs
}

func (r *heldRaft) Apply(data []byte, _ time.Duration) raft.ApplyFuture {
	cmd := &pb.Command{}
	if err := proto.Unmarshal(data, cmd); err != nil {
		panic(err)
	}
	n := 1
	if b := cmd.GetBatch(); b != nil {
		n = len(b.Commands)
	}
	e := &heldEntry{commands: n, applied: make(chan struct{}), index: r.index.Add(1)}
	r.entries <- e
	return e
}

// proposals runs n proposals at once and returns a channel that gets
// each one's error.
func proposals(p *proposer, n int) <-chan error {
	out := make(chan error, n)
	for i := range n {
		go func() {
			_, err := p.propose(&pb.Command{RequestId: fmt.Sprintf("r%d-%d", time.Now().UnixNano(), i)})
			out <- err
		}()
	}
	return out
}

// nextEntry waits for the next entry proposed.
func nextEntry(t *testing.T, r *heldRaft) *heldEntry {
	t.Helper()
	select {
	case e := <-r.entries:
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no entry proposed")
		return nil
	}
}

// waitQueued waits until n commands wait for the next entry.
func waitQueued(t *testing.T, p *proposer, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.queue) == n
	}, 10*time.Second, time.Millisecond)
}

func allOK(t *testing.T, errs <-chan error, n int) {
	t.Helper()
	for range n {
		select {
		case err := <-errs:
			require.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Fatal("a proposal was not answered")
		}
	}
}

func newHeldProposer(holdMax time.Duration) (*proposer, *heldRaft, *Metrics) {
	r := &heldRaft{entries: make(chan *heldEntry, 16)}
	m := NewMetrics(prometheus.NewRegistry())
	return &proposer{raft: r, timeout: time.Minute, metrics: m, holdMax: holdMax}, r, m
}

// inFlightWith puts an entry of n commands in flight and returns it,
// with its proposals' errors: one command alone first, then n queued
// behind it, which leave as one entry when the first is applied.
func inFlightWith(t *testing.T, p *proposer, r *heldRaft, n int) (*heldEntry, <-chan error) {
	t.Helper()
	first := proposals(p, 1)
	e := nextEntry(t, r)
	require.Equal(t, 1, e.commands)
	errs := proposals(p, n)
	waitQueued(t, p, n)
	close(e.applied) // one command: nothing is held after it
	allOK(t, first, 1)
	e = nextEntry(t, r)
	require.Equal(t, n, e.commands)
	return e, errs
}

// After an entry of ten commands, the three that wait are held until
// ten wait, and then leave at once as one entry, however long the hold
// could still last.
func TestProposer_underLoadHoldsTheNextEntryUntilItIsAsFull(t *testing.T) {
	p, r, m := newHeldProposer(time.Hour)
	e, errs := inFlightWith(t, p, r, 10)
	// The entry's time in Raft sets the hold's length: twice this, far
	// more than the late proposals need to queue.
	time.Sleep(time.Second)
	early := proposals(p, 3)
	waitQueued(t, p, 3)
	close(e.applied)
	allOK(t, errs, 10)

	late := proposals(p, 7)
	e = nextEntry(t, r)
	require.Equal(t, 10, e.commands, "the held entry left with all ten")
	close(e.applied)
	allOK(t, early, 3)
	allOK(t, late, 7)
	require.Equal(t, 1.0, testutil.ToFloat64(m.holds.WithLabelValues("filled")))
	require.Equal(t, 0.0, testutil.ToFloat64(m.holds.WithLabelValues("timed_out")))
}

// A held entry that does not fill leaves when its hold ends, with what
// waits.
func TestProposer_aHeldEntryLeavesWhenItsHoldEnds(t *testing.T) {
	p, r, m := newHeldProposer(50 * time.Millisecond)
	e, errs := inFlightWith(t, p, r, 10)
	time.Sleep(50 * time.Millisecond) // a hold of up to twice this, bounded by holdMax
	early := proposals(p, 3)
	waitQueued(t, p, 3)
	held := time.Now()
	close(e.applied)
	allOK(t, errs, 10)

	e = nextEntry(t, r)
	require.Equal(t, 3, e.commands)
	require.GreaterOrEqual(t, time.Since(held), 50*time.Millisecond, "left before its hold ended")
	close(e.applied)
	allOK(t, early, 3)
	require.Equal(t, 1.0, testutil.ToFloat64(m.holds.WithLabelValues("timed_out")))
}

// Nothing is held below holdMin commands an entry, when as many commands
// as the last entry held already wait, or with no hold allowed
// (-commit-hold 0): the commands that waited leave at once.
func TestProposer_leavesAtOnceWhenNothingCallsForAHold(t *testing.T) {
	for name, tc := range map[string]struct {
		holdMax       time.Duration
		entry, queued int
	}{
		"light load":      {time.Hour, holdMin - 1, 3},
		"full queue":      {time.Hour, 10, 12},
		"no hold allowed": {0, 10, 3},
	} {
		t.Run(name, func(t *testing.T) {
			p, r, m := newHeldProposer(tc.holdMax)
			e, errs := inFlightWith(t, p, r, tc.entry)
			waiting := proposals(p, tc.queued)
			waitQueued(t, p, tc.queued)
			close(e.applied)
			allOK(t, errs, tc.entry)
			e = nextEntry(t, r)
			require.Equal(t, tc.queued, e.commands)
			close(e.applied)
			allOK(t, waiting, tc.queued)
			require.Zero(t, testutil.ToFloat64(m.holds.WithLabelValues("filled"))+testutil.ToFloat64(m.holds.WithLabelValues("timed_out")))
		})
	}
}
