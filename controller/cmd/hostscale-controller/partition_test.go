package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostscale/hostscale/controller/internal/endpoint"
	"github.com/hostscale/hostscale/controller/internal/raftnode"
	"github.com/hostscale/hostscale/internal/testcluster"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// netCluster starts three controller processes, each in a network
// namespace of its own (testcluster.Net), and waits for their leader.
func netCluster(t *testing.T, ctx context.Context) (*testcluster.Net, *testcluster.Cluster, *testcluster.Node) {
	t.Helper()
	nt := testcluster.NewNet(t, 3)
	c, leader := testcluster.StartLed(ctx, t, testcluster.Options{Nodes: 3, Launcher: testcluster.BinaryLauncher{Path: binary}, Net: nt}, 10*time.Second)
	return nt, c, leader
}

func routedPool(name string) *pb.CreatePoolRequest {
	return &pb.CreatePoolRequest{Pool: &pb.Pool{Name: name, PathPrefix: "/" + name}}
}

// unavailable requires err to be what a client may retry elsewhere: the
// node could not reach a leader or a quorum in time.
func unavailable(t *testing.T, err error, what string) {
	t.Helper()
	require.Error(t, err, what)
	code := status.Code(err)
	require.True(t, code == codes.Unavailable || code == codes.DeadlineExceeded, "%s: %v", what, err)
}

// newLeader waits for a ready leader among the nodes but old.
func newLeader(ctx context.Context, t *testing.T, c *testcluster.Cluster, old *testcluster.Node) (*testcluster.Node, uint64) {
	t.Helper()
	leader, term, err := c.WaitNewLeader(ctx, old, 10*time.Second)
	require.NoError(t, err)
	return leader, term
}

// TestPartition_isolatedLeaderStepsDownAndTheMajorityCarriesOn: the leader
// is cut off from both followers (its packets dropped, the process
// running). The two elect a new leader and take writes through either of
// them; the old one steps down and, cut off, refuses writes and consistent
// reads instead of answering from its old state, while its local reads
// say which index they reflect. Healed, it follows the new leader and
// catches up, without an election: pre-vote keeps the cut-off node's
// campaigns from deposing the leader it rejoins. The write it took as it
// was cut off never lands.
func TestPartition_isolatedLeaderStepsDownAndTheMajorityCarriesOn(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nt, c, old := netCluster(t, ctx)
	_, err := old.Pools().CreatePool(ctx, routedPool("before"))
	require.NoError(t, err)
	var majority []*testcluster.Node
	for _, n := range c.Nodes() {
		if n != old {
			majority = append(majority, n)
		}
	}

	nt.Isolate(old.Host)
	cut := time.Now()
	// The old leader still believes it leads for up to its lease: a
	// write sent now cannot reach a quorum.
	wctx, wcancel := context.WithTimeout(ctx, 3*time.Second)
	_, err = old.Pools().CreatePool(wctx, routedPool("lost"))
	wcancel()
	unavailable(t, err, "a write through the cut-off leader")
	t.Logf("the cut-off leader's write failed after %v: %v", time.Since(cut).Round(time.Millisecond), err)

	// The majority elects a new leader.
	leader, term := newLeader(ctx, t, c, old)
	elected := time.Since(cut)
	t.Logf("%s leads the majority (term %d) %v after the cut", leader.ID, term, elected.Round(time.Millisecond))
	require.Less(t, elected, 3*time.Second, "a new leader within 3s of the cut")

	// The old leader steps down: its lease ran out.
	var oldSt *pb.GetStatusResponse
	require.NoError(t, testcluster.Eventually(ctx, 5*time.Second, func(ctx context.Context) error {
		st, err := old.Status(ctx)
		if err != nil {
			return err
		}
		if st.State == pb.RaftState_RAFT_STATE_LEADER {
			return fmt.Errorf("%s still leads", old.ID)
		}
		oldSt = st
		return nil
	}))
	t.Logf("%s stepped down %v after the cut, now %v", old.ID, time.Since(cut).Round(time.Millisecond), oldSt.State)

	// Writes land through both nodes of the majority.
	var lastIndex uint64
	for _, n := range majority {
		resp, err := n.Pools().CreatePool(ctx, routedPool("during-"+n.ID))
		require.NoError(t, err, "a write through %s", n.ID)
		lastIndex = max(lastIndex, resp.Index)
	}

	// The cut-off node: writes and consistent reads fail, whatever it
	// knew; local reads answer from its state, and say how old it is.
	wctx, wcancel = context.WithTimeout(ctx, 3*time.Second)
	_, err = old.Pools().CreatePool(wctx, routedPool("refused"))
	wcancel()
	unavailable(t, err, "a write through the cut-off node")
	rctx, rcancel := context.WithTimeout(ctx, 3*time.Second)
	_, err = old.Pools().GetPool(rctx, &pb.GetPoolRequest{Pool: "before", Consistent: true})
	rcancel()
	unavailable(t, err, "a consistent read on the cut-off node")
	local, err := old.Pools().GetPool(ctx, &pb.GetPoolRequest{Pool: "before"})
	require.NoError(t, err, "a local read on the cut-off node")
	require.Less(t, local.Index, lastIndex, "the cut-off node's local read reflects an index before the majority's writes")
	_, err = old.Pools().GetPool(ctx, &pb.GetPoolRequest{Pool: "during-" + leader.ID})
	require.Equal(t, codes.NotFound, status.Code(err), "%v", err)

	nt.Heal()
	healed := time.Now()
	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
		st, err := old.Status(ctx)
		if err != nil {
			return err
		}
		if st.Leader.GetId() != leader.ID {
			return fmt.Errorf("%s follows %q", old.ID, st.Leader.GetId())
		}
		for _, n := range majority {
			if _, err := old.Pools().GetPool(ctx, &pb.GetPoolRequest{Pool: "during-" + n.ID}); err != nil {
				return fmt.Errorf("%s has not caught up: %w", old.ID, err)
			}
		}
		return nil
	}))
	t.Logf("%s follows %s and has caught up %v after the heal", old.ID, leader.ID, time.Since(healed).Round(time.Millisecond))
	// No election at the rejoin, nor for a while after it.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for until := time.Now().Add(3 * time.Second); time.Now().Before(until); <-tick.C {
		for _, n := range c.Nodes() {
			st, err := n.Status(ctx)
			require.NoError(t, err)
			require.Equal(t, leader.ID, st.Leader.GetId(), "%s's leader after the heal", n.ID)
			require.Equal(t, term, st.Term, "%s's term after the heal", n.ID)
		}
	}
	for _, n := range c.Nodes() {
		_, err := n.Pools().GetPool(ctx, &pb.GetPoolRequest{Pool: "lost", Consistent: true})
		require.Equal(t, codes.NotFound, status.Code(err), "the cut-off leader's write, read through %s: %v", n.ID, err)
		_, err = n.Pools().GetPool(ctx, &pb.GetPoolRequest{Pool: "refused", Consistent: true})
		require.Equal(t, codes.NotFound, status.Code(err), "%v", err)
	}
	_, err = old.Pools().CreatePool(ctx, routedPool("after"))
	require.NoError(t, err, "a write through the rejoined node")
}

// TestPartition_frozenLeaderServesNoStaleConsistentRead: the leader is
// frozen (SIGSTOP, as a long pause of a VM or a process leaves it) and cut
// off; the majority elects a new leader and a write lands through it.
// Consistent reads sent to the old leader then wait in its socket and meet
// it as it wakes still believing it leads. Each must fail or see the new
// write: an old value is a stale read. Two things stand in the way: the
// old leader's lease check, whose timer has expired and fires as it wakes,
// and the round before each consistent read, which commits an entry and
// which a cut-off node cannot complete. The first wins the race most of the
// time. A heartbeat round (VerifyLeader) in place of the second lost it
// now and then: the node reads, as it wakes, replies to heartbeats it sent
// before it froze, and they count for the round.
func TestPartition_frozenLeaderServesNoStaleConsistentRead(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nt, c, old := netCluster(t, ctx)
	createRegister(ctx, t, old)
	_, err := old.Pools().ScalePool(ctx, &pb.ScalePoolRequest{Pool: "reg", Desired: 1})
	require.NoError(t, err)
	// The test's connection to the old leader is up before the freeze.
	got, err := old.Pools().GetPool(ctx, &pb.GetPoolRequest{Pool: "reg", Consistent: true})
	require.NoError(t, err)
	require.Equal(t, uint32(1), got.Pool.GetDesired())

	old.Pause()
	resumed := false
	defer func() {
		if !resumed {
			old.Resume()
		}
	}()
	nt.Isolate(old.Host)
	frozen := time.Now()
	leader, _ := newLeader(ctx, t, c, old)
	t.Logf("%s leads %v after %s froze", leader.ID, time.Since(frozen).Round(time.Millisecond), old.ID)
	wrote, err := leader.Pools().ScalePool(ctx, &pb.ScalePoolRequest{Pool: "reg", Desired: 2})
	require.NoError(t, err)

	// Every read is sent after the write was answered; they queue in the
	// frozen node's socket and meet it as it wakes.
	const reads = 64
	type answer struct {
		desired uint32
		index   uint64
		err     error
	}
	answers := make(chan answer, reads)
	var sent sync.WaitGroup
	for range reads {
		sent.Add(1)
		go func() {
			rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
			defer rcancel()
			sent.Done()
			resp, err := old.Pools().GetPool(rctx, &pb.GetPoolRequest{Pool: "reg", Consistent: true})
			answers <- answer{resp.GetPool().GetDesired(), resp.GetIndex(), err}
		}()
	}
	sent.Wait()
	// The calls wait in the frozen node's socket: its kernel took them.
	// Each is a HEADERS and a DATA frame of at least 30 bytes together.
	require.NoError(t, testcluster.Eventually(ctx, 5*time.Second, func(context.Context) error {
		queued, err := receiveQueued(old.Host, "7700")
		if err != nil {
			return err
		}
		if queued < reads*30 {
			return fmt.Errorf("%d bytes wait in %s's socket", queued, old.ID)
		}
		return nil
	}))
	old.Resume()
	resumed = true
	var failed, fresh int
	var firstErr error
	for range reads {
		a := <-answers
		switch {
		case a.err != nil:
			unavailable(t, a.err, "a consistent read on the deposed leader")
			failed++
			if firstErr == nil {
				firstErr = a.err
			}
		case a.desired == 2:
			fresh++
		default:
			t.Errorf("stale consistent read on the deposed leader %s: desired %d at index %d, after the write at index %d was answered",
				old.ID, a.desired, a.index, wrote.Index)
		}
	}
	t.Logf("%d consistent reads on the woken deposed leader: %d failed (%v), %d saw the new write", reads, failed, firstErr, fresh)
}

// diskCluster starts three controllers, each on a host of its own with
// its data directory on a StallDisk, with the extra flags args, and sets a
// register pool's desired count to 1 through the leader. It returns the
// leader and every node's disk by id.
func diskCluster(ctx context.Context, t *testing.T, args ...string) (*testcluster.Net, *testcluster.Cluster, *testcluster.Node, map[string]*testcluster.StallDisk) {
	t.Helper()
	nt := testcluster.NewNet(t, 3)
	// Mounted before the cluster starts, so unmounted after it stopped.
	disks := map[string]*testcluster.StallDisk{}
	for i := range 3 {
		disks[fmt.Sprintf("c%d", i+1)] = testcluster.NewStallDisk(t)
	}
	c, leader := testcluster.StartLed(ctx, t, testcluster.Options{
		Nodes: 3, Launcher: testcluster.BinaryLauncher{Path: binary}, Net: nt, Args: args,
		DataDir: func(id string) string { return disks[id].Dir },
	}, 10*time.Second)
	// Whatever the test's end, the disks answer before the nodes stop.
	t.Cleanup(func() {
		for _, d := range disks {
			d.Resume()
		}
	})
	createRegister(ctx, t, leader)
	_, err := leader.Pools().ScalePool(ctx, &pb.ScalePoolRequest{Pool: "reg", Desired: 1})
	require.NoError(t, err)
	return nt, c, leader, disks
}

// stalledLeader is diskCluster, then it stalls the leader's disk and sends
// a write of 3 through it, which waits in the leader's log write (its
// error comes on held).
func stalledLeader(ctx context.Context, t *testing.T, args ...string) (*testcluster.Net, *testcluster.Cluster, *testcluster.Node, map[string]*testcluster.StallDisk, <-chan error) {
	t.Helper()
	nt, c, leader, disks := diskCluster(ctx, t, args...)
	disk := disks[leader.ID]
	disk.Stall()
	held := make(chan error, 1)
	go func() {
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		defer wcancel()
		_, err := leader.Pools().ScalePool(wctx, &pb.ScalePoolRequest{Pool: "reg", Desired: 3})
		held <- err
	}()
	require.NoError(t, disk.WaitHeld(ctx, 10*time.Second))
	return nt, c, leader, disks, held
}

// TestPartition_leaderWithAStalledDiskExitsAndAnotherLeads: with
// -log-stall-exit, a leader whose log write has not returned for that long
// exits; its heartbeats stop, the other two elect a leader and take
// writes. The write it held never lands, and, its disk back, it restarts
// and follows.
func TestPartition_leaderWithAStalledDiskExitsAndAnotherLeads(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const limit = 3 * time.Second
	_, c, old, disks, held := stalledLeader(ctx, t, "-log-stall-exit="+limit.String())
	stalled := time.Now()
	const exiting = "exiting so that another controller leads"
	require.NoError(t, testcluster.Eventually(ctx, limit+10*time.Second, func(context.Context) error {
		if !strings.Contains(old.Log(), exiting) {
			return fmt.Errorf("%s has not given up", old.ID)
		}
		return nil
	}))
	gaveUp := time.Since(stalled)
	require.GreaterOrEqual(t, gaveUp, limit-time.Second, "gave up before the limit")
	// It closed its ports as it gave up: the process may not finish
	// exiting while the kernel holds its write, and clients, agents and
	// balancers are refused at once, not left waiting on its open sockets.
	require.NoError(t, testcluster.Eventually(ctx, 2*time.Second, func(context.Context) error {
		for _, addr := range []string{old.GRPCAddr, old.HTTPAddr, old.RaftAddr} {
			if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
				c.Close()
				return fmt.Errorf("%s still accepts on %s", old.ID, addr)
			}
		}
		return nil
	}))
	select {
	case err := <-held:
		unavailable(t, err, "the write the stalled leader held")
	case <-time.After(time.Second):
		t.Fatal("the write the stalled leader held still waits after it gave up")
	}
	// The process cannot finish exiting while the kernel holds its write,
	// but its other threads are gone: its heartbeats stop.
	leader, _ := newLeader(ctx, t, c, old)
	elected := time.Since(stalled)
	t.Logf("%s gave up %v after its disk stalled; %s leads %v after", old.ID, gaveUp.Round(time.Millisecond), leader.ID, elected.Round(time.Millisecond))
	_, err := leader.Pools().ScalePool(ctx, &pb.ScalePoolRequest{Pool: "reg", Desired: 2})
	require.NoError(t, err)

	// Its disk back, the process finishes exiting; restarted, it follows.
	disks[old.ID].Resume()
	require.NoError(t, old.WaitExited(ctx, 10*time.Second))
	old.Restart()
	caughtUp(ctx, t, c, old, leader)

	// A follower whose disk stalls stays: the leader commits with the
	// other follower, and only the stalled one falls behind. (The third
	// node, whose log holds no earlier life.)
	var follower *testcluster.Node
	for _, n := range c.Nodes() {
		if n != leader && n != old {
			follower = n
			break
		}
	}
	disks[follower.ID].Stall()
	_, err = leader.Pools().ScalePool(ctx, &pb.ScalePoolRequest{Pool: "reg", Desired: 4})
	require.NoError(t, err)
	require.NoError(t, disks[follower.ID].WaitHeld(ctx, 10*time.Second))
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for until := time.Now().Add(limit + 2*time.Second); time.Now().Before(until); <-tick.C {
		require.True(t, follower.Running(), "the follower %s exited over its stalled disk", follower.ID)
		_, err := leader.Pools().ScalePool(ctx, &pb.ScalePoolRequest{Pool: "reg", Desired: 5})
		require.NoError(t, err, "a write with one follower stalled")
	}
	require.NotContains(t, follower.Log(), exiting)
	disks[follower.ID].Resume()
}

// TestPartition_leaderWithAFailingDiskStepsDown: the leader's disk
// answers every write with an error (EIO), as a dying disk or a file
// system remounted read-only after errors does. The write it takes fails
// UNAVAILABLE, saying why and that it may be retried: hashicorp/raft's
// leader steps down when its log write fails, having sent the entry to no
// one. The other two elect a leader and take writes, through either of
// them. The failed node cannot save a new term, without which Raft cannot
// go on: it says so and exits (hashicorp/raft would panic). Its disk back,
// it restarts, follows and catches up.
func TestPartition_leaderWithAFailingDiskStepsDown(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, c, old, disks := diskCluster(ctx, t)
	disks[old.ID].Fail(syscall.EIO)
	failed := time.Now()
	_, err := old.Pools().ScalePool(ctx, &pb.ScalePoolRequest{Pool: "reg", Desired: 3})
	require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	require.ErrorContains(t, err, "could not write its Raft log")
	require.ErrorContains(t, err, "input/output error")
	require.ErrorContains(t, err, "retry with the same request_id")

	leader, _ := newLeader(ctx, t, c, old)
	t.Logf("%s leads %v after %s's disk failed", leader.ID, time.Since(failed).Round(time.Millisecond), old.ID)
	_, err = leader.Pools().ScalePool(ctx, &pb.ScalePoolRequest{Pool: "reg", Desired: 5})
	require.NoError(t, err)
	for _, n := range c.Nodes() {
		if n != leader && n != old {
			_, err = n.Pools().ScalePool(ctx, &pb.ScalePoolRequest{Pool: "reg", Desired: 2})
			require.NoError(t, err, "a write through the other follower")
		}
	}
	require.NoError(t, old.WaitExited(ctx, 10*time.Second))
	require.Contains(t, old.Log(), "the Raft stable store could not save the term or vote")
	require.Contains(t, old.Log(), "input/output error")
	require.NotContains(t, old.Log(), "panic:")

	disks[old.ID].Resume()
	old.Restart()
	caughtUp(ctx, t, c, old, leader)
}

// caughtUp waits until old follows leader and its own state has the
// register's desired count at 2, then reads 2 through every node with a
// consistent read.
func caughtUp(ctx context.Context, t *testing.T, c *testcluster.Cluster, old, leader *testcluster.Node) {
	t.Helper()
	require.NoError(t, testcluster.Eventually(ctx, 15*time.Second, func(ctx context.Context) error {
		st, err := old.Status(ctx)
		if err != nil {
			return err
		}
		if st.Leader.GetId() != leader.ID {
			return fmt.Errorf("%s follows %q", old.ID, st.Leader.GetId())
		}
		resp, err := old.Pools().GetPool(ctx, &pb.GetPoolRequest{Pool: "reg"})
		if err != nil {
			return err
		}
		if resp.Pool.GetDesired() != 2 {
			return fmt.Errorf("%s reads desired %d", old.ID, resp.Pool.GetDesired())
		}
		return nil
	}))
	for _, n := range c.Nodes() {
		resp, err := n.Pools().GetPool(ctx, &pb.GetPoolRequest{Pool: "reg", Consistent: true})
		require.NoError(t, err)
		require.Equal(t, uint32(2), resp.Pool.GetDesired(), "through %s", n.ID)
	}
}

// TestPartition_leaderWithAStalledDiskServesNoStaleConsistentRead: the
// leader's disk stops answering (testcluster.StallDisk), so hashicorp/raft's
// leader loop, which writes the leader's log itself, waits in that write;
// the leader's replication keeps sending heartbeats, and its API answers.
// It is then cut off: the majority elects a new leader, which takes a
// write. The old leader's loop cannot run its lease check, so nothing in
// its own state says it no longer leads, and a consistent read served from
// that state would return the old value. The quorum round before every
// consistent read (VerifyLeader) goes through the same loop, so the read
// fails instead. Once the disk answers and the partition heals, the old
// leader follows, and the write it held never lands.
func TestPartition_leaderWithAStalledDiskServesNoStaleConsistentRead(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// The leader stays however long its disk stalls.
	nt, c, old, disks, held := stalledLeader(ctx, t, "-log-stall-exit=0")
	disk := disks[old.ID]
	stalled := time.Now()
	// The node says so: /readyz fails once a log write has run for
	// raftnode.LogWriteStallLimit, and /metrics shows how long.
	require.NoError(t, testcluster.Eventually(ctx, 2*raftnode.LogWriteStallLimit, func(context.Context) error {
		code, body, err := fetch("http://" + old.HTTPAddr + "/readyz")
		if err != nil {
			return err
		}
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "the disk is stalled") {
			return fmt.Errorf("/readyz: %d %q", code, body)
		}
		return nil
	}))
	t.Logf("%s not ready %v after its disk stalled", old.ID, time.Since(stalled).Round(time.Millisecond))
	_, page, err := fetch("http://" + old.HTTPAddr + "/metrics")
	require.NoError(t, err)
	inProgress, ok := metricValue(page, "hostscale_raft_log_write_in_progress_seconds")
	require.True(t, ok, "hostscale_raft_log_write_in_progress_seconds missing")
	require.Greater(t, inProgress, raftnode.LogWriteStallLimit.Seconds())

	nt.Isolate(old.Host)
	cut := time.Now()

	leader, _ := newLeader(ctx, t, c, old)
	t.Logf("%s leads %v after the cut", leader.ID, time.Since(cut).Round(time.Millisecond))
	wrote, err := leader.Pools().ScalePool(ctx, &pb.ScalePoolRequest{Pool: "reg", Desired: 2})
	require.NoError(t, err)

	// The old leader still answers local reads, from its old state.
	local, err := old.Pools().GetPool(ctx, &pb.GetPoolRequest{Pool: "reg"})
	require.NoError(t, err)
	require.Equal(t, uint32(1), local.Pool.GetDesired(), "the old leader's local read")
	// A consistent read must not; the node gives up on confirming its
	// leadership after VerifyTimeout, before the caller's deadline.
	start := time.Now()
	rctx, rcancel := context.WithTimeout(ctx, 2*endpoint.VerifyTimeout)
	resp, err := old.Pools().GetPool(rctx, &pb.GetPoolRequest{Pool: "reg", Consistent: true})
	rcancel()
	if err == nil {
		require.Equal(t, uint32(2), resp.Pool.GetDesired(),
			"stale consistent read on the old leader, after the write at index %d was answered", wrote.Index)
	}
	require.Equal(t, codes.Unavailable, status.Code(err), "a consistent read on the old leader with a stalled disk: %v", err)
	t.Logf("the consistent read on the old leader failed after %v: %v", time.Since(start).Round(time.Millisecond), err)

	disk.Resume()
	nt.Heal()
	healed := time.Now()
	caughtUp(ctx, t, c, old, leader)
	t.Logf("%s caught up %v after the heal", old.ID, time.Since(healed).Round(time.Millisecond))
	code, body, err := fetch("http://" + old.HTTPAddr + "/readyz")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code, "/readyz once the disk answers: %s", body)
	select {
	case err := <-held:
		unavailable(t, err, "the write the old leader held")
	case <-ctx.Done():
		t.Fatal("the held write was never answered")
	}
}

// createRegister creates the pool "reg" through n: its desired count is
// the register the tests write and read.
func createRegister(ctx context.Context, t *testing.T, n *testcluster.Node) {
	t.Helper()
	_, err := n.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{
		Name: "reg", PathPrefix: "/reg", Min: 0, Max: 1000,
		Template: &pb.InstanceTemplate{Command: "/bin/true"},
	}})
	require.NoError(t, err)
}

// fetch GETs url and returns the status code and body.
func fetch(url string) (int, string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// receiveQueued sums the bytes waiting to be read in the receive queues of
// the established TCP connections to port on host.
func receiveQueued(host *testcluster.Host, port string) (int, error) {
	out, err := host.Command("ss", "-Htn", "state", "established", "( sport = :"+port+" )").Output()
	if err != nil {
		return 0, fmt.Errorf("ss: %w", err)
	}
	total := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		n, err := strconv.Atoi(f[0])
		if err != nil {
			return 0, fmt.Errorf("ss: receive queue %q: %w", f[0], err)
		}
		total += n
	}
	return total, nil
}

// TestPartition_oneLinkCutKeepsTheLeader: only the link between the
// leader and one follower is cut; the third node reaches both. The
// follower that no longer hears the leader campaigns, and the node in
// the middle, which hears the leader, refuses its pre-vote: the leader
// and the term stay (an outage of etcd's at Cloudflare in 2020 came from
// such a partial partition without pre-vote). Writes carry on through
// the leader and the middle node; the cut-off follower, which cannot
// forward, answers UNAVAILABLE. Healed, it catches up.
func TestPartition_oneLinkCutKeepsTheLeader(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nt, c, leader := netCluster(t, ctx)
	st, err := leader.Status(ctx)
	require.NoError(t, err)
	term := st.Term
	var far, middle *testcluster.Node
	for _, n := range c.Nodes() {
		switch {
		case n == leader:
		case far == nil:
			far = n
		default:
			middle = n
		}
	}
	nt.Partition([]*testcluster.Host{leader.Host}, []*testcluster.Host{far.Host})
	cut := time.Now()
	i := 0
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for time.Since(cut) < 6*time.Second { // past many election timeouts of the far follower
		<-tick.C
		for _, n := range c.Nodes() {
			st, err := n.Status(ctx)
			require.NoError(t, err)
			if n != far {
				require.Equal(t, leader.ID, st.Leader.GetId(), "%s's leader %v after the cut", n.ID, time.Since(cut).Round(time.Millisecond))
			}
			require.Equal(t, term, st.Term, "%s's term %v after the cut", n.ID, time.Since(cut).Round(time.Millisecond))
		}
		for _, n := range []*testcluster.Node{leader, middle} {
			i++
			_, err := n.Pools().CreatePool(ctx, routedPool(fmt.Sprintf("p%d", i)))
			require.NoError(t, err, "a write through %s during the cut", n.ID)
		}
	}
	wctx, wcancel := context.WithTimeout(ctx, 3*time.Second)
	_, err = far.Pools().CreatePool(wctx, routedPool("far"))
	wcancel()
	unavailable(t, err, "a write through the follower that cannot reach the leader")
	t.Logf("%d writes landed in %v with the link cut; the leader and term stayed", i, time.Since(cut).Round(time.Millisecond))

	nt.Heal()
	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
		_, err := far.Pools().GetPool(ctx, &pb.GetPoolRequest{Pool: fmt.Sprintf("p%d", i)})
		return err
	}), "the far follower catches up")
	st, err = leader.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, term, st.Term)
}

// regOp is one operation on the register: a pool's desired count, set by
// ScalePool and read by a consistent GetPool.
type regOp struct {
	write bool
	value uint32
	node  string
}

var registerModel = porcupine.Model{
	Init: func() any { return uint32(0) },
	Step: func(state, input, output any) (bool, any) {
		in := input.(regOp)
		if in.write {
			return true, in.value
		}
		return output.(uint32) == state.(uint32), state
	},
	DescribeOperation: func(input, output any) string {
		in := input.(regOp)
		if in.write {
			return fmt.Sprintf("write %d via %s", in.value, in.node)
		}
		return fmt.Sprintf("read via %s: %v", in.node, output)
	},
}

// history records operations against the test's monotonic clock.
type history struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation
	// Writes answered, of them after retries, and never answered;
	// reads answered and failed.
	writes, retried, open, reads, failedReads int
}

func (h *history) now() int64 { return int64(time.Since(h.start)) }

// retryable reports whether err is what a client retries: the node could
// not reach a leader or a quorum in time.
func retryable(err error) bool {
	code := status.Code(err)
	return code == codes.Unavailable || code == codes.DeadlineExceeded
}

// write sets the register to value, as a careful client does: with one
// request id, retried on the next node until it is answered. Answered, it
// took effect exactly once between the call and the answer. Never
// answered (30s), it may take effect at any time after its call: it stays
// open until the end of the history.
func (h *history) write(ctx context.Context, t *testing.T, client int, nodes []*testcluster.Node, first int, seq uint64) {
	id := fmt.Sprintf("lin-%d-%d", client, seq)
	value := uint32(seq%1000) + 1 // within the pool's max
	call := h.now()
	for attempt := 0; ; attempt++ {
		n := nodes[(first+attempt)%len(nodes)]
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := n.Pools().ScalePool(actx, &pb.ScalePoolRequest{RequestId: id, Pool: "reg", Desired: value})
		cancel()
		in := regOp{write: true, value: value, node: n.ID}
		switch {
		case err == nil:
			h.mu.Lock()
			h.writes++
			if attempt > 0 {
				h.retried++
			}
			h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Return: h.now()})
			h.mu.Unlock()
			return
		case !retryable(err):
			t.Errorf("write %d via %s: %v", value, n.ID, err)
			return
		case time.Duration(h.now()-call) > 30*time.Second:
			h.mu.Lock()
			h.open++
			h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Return: math.MaxInt64})
			h.mu.Unlock()
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// read reads the register through n with a consistent read. A failed
// read took no effect and is left out; it reports whether it was answered.
func (h *history) read(ctx context.Context, t *testing.T, client int, n *testcluster.Node) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	call := h.now()
	resp, err := n.Pools().GetPool(ctx, &pb.GetPoolRequest{Pool: "reg", Consistent: true})
	ret := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if err != nil {
		if !retryable(err) {
			t.Errorf("read via %s: %v", n.ID, err)
		}
		h.failedReads++
		return false
	}
	h.reads++
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: regOp{node: n.ID}, Call: call, Output: resp.Pool.GetDesired(), Return: ret})
	return true
}

// TestPartition_writesAndConsistentReadsStayLinearizable: six clients,
// two on each node, write and read one register (a pool's desired count:
// ScalePool, and GetPool with consistent set) while the nodes are cut
// apart, paused and killed: the leader alone, a follower alone, the one
// link between the leader and a follower, every node from every other,
// the leader frozen (SIGSTOP) and thawed, the leader killed and
// restarted, with healing between. The
// history of every call, with a write that failed counted as possibly
// applied, must be linearizable (checked with porcupine), and afterwards
// the three nodes hold the same state.
func TestPartition_writesAndConsistentReadsStayLinearizable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	nt, c, leader := netCluster(t, ctx)
	createRegister(ctx, t, leader)

	h := &history{start: time.Now()}
	var next atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	nodes := c.Nodes()
	for client := range 6 {
		n := nodes[client%3]
		rng := rand.New(rand.NewPCG(uint64(client), 1))
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(time.Duration(5+rng.IntN(20)) * time.Millisecond):
				}
				if rng.IntN(2) == 0 {
					h.write(ctx, t, client, nodes, client%3, next.Add(1))
					continue
				}
				if !h.read(ctx, t, client, n) {
					time.Sleep(100 * time.Millisecond)
				}
			}
		})
	}

	leaderOf := func() *testcluster.Node {
		for _, n := range c.Running() {
			if st, err := n.Status(ctx); err == nil && st.State == pb.RaftState_RAFT_STATE_LEADER {
				return n
			}
		}
		return nil
	}
	faults := []struct {
		name  string
		apply func() func() // the fault, and what ends it
	}{
		{"the leader cut off", func() func() {
			if l := leaderOf(); l != nil {
				nt.Isolate(l.Host)
			}
			return nt.Heal
		}},
		{"a follower cut off", func() func() {
			l := leaderOf()
			for _, n := range nodes {
				if n != l {
					nt.Isolate(n.Host)
					break
				}
			}
			return nt.Heal
		}},
		{"one link cut: the leader and a follower", func() func() {
			// The third node reaches both: a partial partition, where a
			// follower that cannot hear the leader must not unseat it
			// through the node that can (pre-vote).
			l := leaderOf()
			for _, n := range nodes {
				if n != l && l != nil {
					nt.Partition([]*testcluster.Host{l.Host}, []*testcluster.Host{n.Host})
					break
				}
			}
			return nt.Heal
		}},
		{"every node cut off", func() func() {
			var groups [][]*testcluster.Host
			for _, n := range nodes {
				groups = append(groups, []*testcluster.Host{n.Host})
			}
			nt.Partition(groups...)
			return nt.Heal
		}},
		{"the leader paused", func() func() {
			l := leaderOf()
			if l == nil {
				return func() {}
			}
			l.Pause()
			return l.Resume
		}},
		{"the leader killed", func() func() {
			l := leaderOf()
			if l == nil {
				return func() {}
			}
			l.Kill()
			return l.Restart
		}},
	}
	rng := rand.New(rand.NewPCG(2, 2))
	time.Sleep(time.Second) // a calm start in the history
	for _, i := range append(rng.Perm(len(faults)), rng.Perm(len(faults))...) {
		f := faults[i]
		t.Logf("%v: %s", time.Since(h.start).Round(time.Millisecond), f.name)
		end := f.apply()
		time.Sleep(time.Duration(1500+rng.IntN(1500)) * time.Millisecond)
		end()
		t.Logf("%v: healed", time.Since(h.start).Round(time.Millisecond))
		time.Sleep(time.Duration(1000+rng.IntN(1000)) * time.Millisecond)
	}
	close(stop)
	wg.Wait()

	// Healed: a leader, and every node answers; a last consistent read
	// through each node goes into the history.
	_, _, err := c.WaitLeader(ctx, 15*time.Second)
	require.NoError(t, err)
	for i, n := range nodes {
		require.True(t, h.read(ctx, t, 6+i, n), "a last read via %s", n.ID)
	}
	h.mu.Lock()
	ops := h.ops
	t.Logf("%d operations: %d writes answered, %d of them after retries, %d never; %d reads answered, %d failed",
		len(ops), h.writes, h.retried, h.open, h.reads, h.failedReads)
	require.Positive(t, h.retried, "the faults made no write retry")
	require.Positive(t, h.failedReads, "the faults made no read fail")
	require.Greater(t, h.writes, 200, "too few writes to mean much")
	require.Greater(t, h.reads, 200, "too few reads to mean much")
	h.mu.Unlock()

	began := time.Now()
	res, info := porcupine.CheckOperationsVerbose(registerModel, ops, time.Minute)
	t.Logf("checked in %v: %s", time.Since(began).Round(time.Millisecond), res)
	if res != porcupine.Ok {
		path := filepath.Join(os.TempDir(), fmt.Sprintf("hostscale-linearizability-%d.html", time.Now().UnixNano()))
		if err := porcupine.VisualizePath(registerModel, info, path); err == nil {
			t.Logf("the history, drawn: %s", path)
		}
		t.Fatalf("the history is not linearizable: %s", res)
	}

	// The three nodes converge on one state.
	require.NoError(t, testcluster.Eventually(ctx, 15*time.Second, func(ctx context.Context) error {
		var want *pb.GetStatusResponse
		for _, n := range nodes {
			st, err := n.Status(ctx)
			if err != nil {
				return err
			}
			if want != nil && st.AppliedIndex != want.AppliedIndex {
				return fmt.Errorf("%s applied %d, %s %d", n.ID, st.AppliedIndex, want.Id, want.AppliedIndex)
			}
			want = st
		}
		var desired []uint32
		for _, n := range nodes {
			p, err := n.Pools().GetPool(ctx, &pb.GetPoolRequest{Pool: "reg"})
			if err != nil {
				return err
			}
			desired = append(desired, p.Pool.Desired)
		}
		if desired[0] != desired[1] || desired[1] != desired[2] {
			return fmt.Errorf("local reads differ: %v", desired)
		}
		return nil
	}))
}
