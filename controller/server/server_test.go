package server_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hostscale/hostscale/controller/internal/raftnode"
	"github.com/hostscale/hostscale/controller/server"
	"github.com/hostscale/hostscale/controller/server/servertest"
	"github.com/hostscale/hostscale/internal/testcluster"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// grpc-go's resolver and balancer goroutines of closed client
		// connections exit asynchronously.
		goleak.IgnoreTopFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}

// fastTimings keep in-process elections quick; the binary tests use the
// defaults.
func startCluster(t *testing.T, n int) *testcluster.Cluster {
	t.Helper()
	return startClusterWith(t, n, nil)
}

// startClusterWith is startCluster with each node's config adjusted by
// configure.
func startClusterWith(t *testing.T, n int, configure func(*server.Config)) *testcluster.Cluster {
	t.Helper()
	return testcluster.Start(t, testcluster.Options{
		Nodes:            n,
		Launcher:         servertest.Launcher{Configure: configure},
		HeartbeatTimeout: 500 * time.Millisecond,
		ElectionTimeout:  500 * time.Millisecond,
	})
}

// memberOf returns id's entry in the leader's member list, nil when absent.
func memberOf(ctx context.Context, t *testing.T, n *testcluster.Node, id string) *pb.Member {
	t.Helper()
	resp, err := retry(ctx, func(ctx context.Context) (*pb.ListMembersResponse, error) {
		return n.Cluster().ListMembers(ctx, &pb.ListMembersRequest{Consistent: true})
	})
	require.NoError(t, err)
	for _, m := range resp.Members {
		if m.Id == id {
			return m
		}
	}
	return nil
}

// waitVoter waits until id is a voter.
func waitVoter(ctx context.Context, t *testing.T, n *testcluster.Node, id string, timeout time.Duration) {
	t.Helper()
	require.NoError(t, testcluster.Eventually(ctx, timeout, func(ctx context.Context) error {
		if m := memberOf(ctx, t, n, id); m.GetSuffrage() != pb.Suffrage_SUFFRAGE_VOTER || m.Promoting {
			return fmt.Errorf("%s: %v, promoting %v", id, m.GetSuffrage(), m.GetPromoting())
		}
		return nil
	}))
}

func waitLeader(t *testing.T, c *testcluster.Cluster) *testcluster.Node {
	t.Helper()
	l, took, err := c.WaitLeader(context.Background(), 10*time.Second)
	require.NoError(t, err)
	t.Logf("leader %s after %v", l.ID, took)
	return l
}

func follower(c *testcluster.Cluster, leader *testcluster.Node) *testcluster.Node {
	for _, n := range c.Running() {
		if n != leader {
			return n
		}
	}
	return nil
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// retry calls f until it does not fail with UNAVAILABLE (the retryable
// code) or the deadline passes.
func retry[T any](ctx context.Context, f func(context.Context) (T, error)) (T, error) {
	for {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		v, err := f(cctx)
		cancel()
		code := status.Code(err)
		if (code != codes.Unavailable && code != codes.DeadlineExceeded) || ctx.Err() != nil {
			return v, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func pool(name string, backends ...string) *pb.Pool {
	p := &pb.Pool{Name: name, PathPrefix: "/" + name}
	for _, b := range backends {
		p.Backends = append(p.Backends, &pb.Backend{Address: b})
	}
	return p
}

func TestCluster_writeThroughFollowerIsSeenEverywhere(t *testing.T) {
	c := startCluster(t, 3)
	leader := waitLeader(t, c)
	f := follower(c, leader)
	ctx := ctxT(t)

	resp, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: pool("web", "127.0.0.1:9001")})
	require.NoError(t, err)
	require.Equal(t, "web", resp.Pool.Name)
	require.EqualValues(t, 100, resp.Pool.Backends[0].Weight, "default weight filled in")
	require.NotZero(t, resp.Index)

	// A consistent read from the other follower is served by the leader.
	for _, n := range c.Running() {
		got, err := n.Pools().GetPool(ctx, &pb.GetPoolRequest{Pool: "web", Consistent: true})
		require.NoError(t, err, n.ID)
		require.GreaterOrEqual(t, got.Index, resp.Index, n.ID)
		require.True(t, proto.Equal(resp.Pool, got.Pool), n.ID)
	}
	// Local reads catch up on every node.
	for _, n := range c.Running() {
		require.NoError(t, testcluster.Eventually(ctx, 5*time.Second, func(ctx context.Context) error {
			_, err := n.Pools().GetPool(ctx, &pb.GetPoolRequest{Pool: "web"})
			return err
		}), n.ID)
	}
	// Forwarded errors keep their code.
	_, err = f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: pool("web")})
	require.Equal(t, codes.AlreadyExists, status.Code(err), err)
	// Prefixes match whole segments: "/web/" is the route "/web" already has.
	_, err = f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "web2", PathPrefix: "/web/"}})
	require.Equal(t, codes.FailedPrecondition, status.Code(err), err)
	require.Contains(t, err.Error(), `already served by pool "web"`)
	_, err = f.Pools().AddBackend(ctx, &pb.AddBackendRequest{Pool: "nope", Backend: &pb.Backend{Address: "127.0.0.1:1"}})
	require.Equal(t, codes.NotFound, status.Code(err), err)
	// The followers forwarded over the leader's Raft port, never its API.
	raft := regexp.MustCompile(`(?m)^hostscale_controller_forwarded_total\{grpc_method="[^"]+",transport="raft"\} ([0-9]+)$`)
	// Each forwarded call is timed on its follower, and on the leader that ran it.
	waited := regexp.MustCompile(`(?m)^hostscale_controller_forward_wait_seconds_count\{transport="raft"\} ([0-9]+)$`)
	served := regexp.MustCompile(`(?m)^hostscale_controller_forward_serve_seconds_count ([0-9]+)$`)
	forwarded, waits, serves := 0, 0, 0
	sum := func(re *regexp.Regexp, body string) int {
		n := 0
		for _, m := range re.FindAllStringSubmatch(body, -1) {
			v, _ := strconv.Atoi(m[1])
			n += v
		}
		return n
	}
	for _, n := range c.Running() {
		body := scrape(t, n.HTTPAddr)
		require.NotContains(t, body, `transport="api"`, n.ID)
		forwarded += sum(raft, body)
		waits += sum(waited, body)
		serves += sum(served, body)
	}
	// The creates and the consistent reads on the followers: at least the
	// reads of the node that did not lead throughout.
	require.GreaterOrEqual(t, forwarded, 1)
	require.Equal(t, forwarded, waits)
	require.GreaterOrEqual(t, serves, 1)
}

func TestCluster_retriedRequestIDAppliesOnceAcrossLeaderKill(t *testing.T) {
	c := startCluster(t, 3)
	leader := waitLeader(t, c)
	ctx := ctxT(t)

	// Writers send CreatePool through every node while the leader dies;
	// each request that fails is retried with its request id until it
	// succeeds. A write that committed before the failure must be
	// recognised by its id: the retry answers OK, never ALREADY_EXISTS.
	const writers, perWriter = 8, 12
	type outcome struct {
		name     string
		attempts int
		index    uint64
	}
	results := make(chan outcome, writers*perWriter)
	var wg sync.WaitGroup
	killed := make(chan struct{})
	started := make(chan struct{}, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				if i == perWriter/3 {
					started <- struct{}{}
				}
				name := fmt.Sprintf("p-%d-%d", w, i)
				id := "req-" + name
				o := outcome{name: name}
				for {
					o.attempts++
					nodes := c.Running()
					n := nodes[(w+o.attempts)%len(nodes)]
					cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
					resp, err := n.Pools().CreatePool(cctx, &pb.CreatePoolRequest{RequestId: id, Pool: pool(name)})
					cancel()
					if err == nil {
						o.index = resp.Pool.CreateIndex
						break
					}
					code := status.Code(err)
					if code != codes.Unavailable && code != codes.DeadlineExceeded && code != codes.Canceled {
						t.Errorf("%s attempt %d: %v", name, o.attempts, err)
						break
					}
					if ctx.Err() != nil {
						t.Errorf("%s: gave up: %v", name, err)
						break
					}
					time.Sleep(10 * time.Millisecond)
				}
				results <- o
			}
		}()
	}
	for range writers {
		<-started
	}
	leader.Kill()
	close(killed)
	wg.Wait()
	close(results)

	retried := 0
	indexes := map[string]uint64{}
	for o := range results {
		indexes[o.name] = o.index
		if o.attempts > 1 {
			retried++
		}
	}
	t.Logf("%d of %d writes needed a retry", retried, writers*perWriter)
	newLeader := waitLeader(t, c)
	list, err := newLeader.Pools().ListPools(ctx, &pb.ListPoolsRequest{PageSize: 1000, Consistent: true})
	require.NoError(t, err)
	require.Len(t, list.Pools, writers*perWriter)
	for _, p := range list.Pools {
		require.Equal(t, indexes[p.Name], p.CreateIndex, "pool %s: the answer names the index of its only application", p.Name)
	}
}

func TestCluster_snapshotRestoresIntoFreshCluster(t *testing.T) {
	ctx := ctxT(t)
	src := startCluster(t, 3)
	srcLeader := waitLeader(t, src)
	var last uint64
	for i := range 20 {
		resp, err := retry(ctx, func(ctx context.Context) (*pb.CreatePoolResponse, error) {
			return srcLeader.Pools().CreatePool(ctx, &pb.CreatePoolRequest{
				RequestId: fmt.Sprintf("r%d", i),
				Pool: &pb.Pool{
					Name: fmt.Sprintf("pool-%02d", i), Hosts: []string{fmt.Sprintf("h%d.example.com", i)},
					PathPrefix: "/app", Policy: pb.Policy_POLICY_ROUND_ROBIN,
					Backends: []*pb.Backend{{Address: fmt.Sprintf("10.0.0.%d:80", i+1), Weight: uint32(i + 1)}},
				},
			})
		})
		require.NoError(t, err)
		last = resp.Index
	}
	// Save from a follower: any node serves a snapshot of its own state,
	// once it has applied the last write.
	from := follower(src, srcLeader)
	require.NoError(t, testcluster.Eventually(ctx, 5*time.Second, func(ctx context.Context) error {
		st, err := from.Status(ctx)
		if err == nil && st.Index < last {
			err = fmt.Errorf("%s is at index %d, before %d", from.ID, st.Index, last)
		}
		return err
	}))
	data, meta := saveSnapshot(t, ctx, from.Conn())
	require.GreaterOrEqual(t, meta.Index, last)
	require.NotZero(t, meta.Index)

	dst := startCluster(t, 3)
	dstLeader := waitLeader(t, dst)
	// Restore through a follower: the stream is forwarded to the leader.
	stream, err := follower(dst, dstLeader).Cluster().RestoreSnapshot(ctx)
	require.NoError(t, err)
	for len(data) > 0 {
		n := min(len(data), 1000)
		require.NoError(t, stream.Send(&pb.RestoreSnapshotRequest{Chunk: data[:n], Sha256: meta.Sha256}))
		data = data[n:]
	}
	_, err = stream.CloseAndRecv()
	require.NoError(t, err)

	want := listAll(t, ctx, srcLeader)
	for _, n := range dst.Running() {
		require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
			got := listAllLocal(ctx, n)
			if len(got) != len(want) {
				return fmt.Errorf("%s has %d pools, want %d", n.ID, len(got), len(want))
			}
			for i := range want {
				if !proto.Equal(want[i], got[i]) {
					return fmt.Errorf("%s: pool %d differs: %v vs %v", n.ID, i, got[i], want[i])
				}
			}
			return nil
		}))
	}
	// The restored request ids are remembered: a retry is answered, not
	// applied again.
	_, err = retry(ctx, func(ctx context.Context) (*pb.CreatePoolResponse, error) {
		return dstLeader.Pools().CreatePool(ctx, &pb.CreatePoolRequest{RequestId: "r3", Pool: pool("pool-03")})
	})
	require.NoError(t, err)
	// Every node keeps serving writes after the restore.
	_, err = retry(ctx, func(ctx context.Context) (*pb.CreatePoolResponse, error) {
		return follower(dst, dstLeader).Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: pool("after-restore")})
	})
	require.NoError(t, err)
}

func saveSnapshot(t *testing.T, ctx context.Context, conn *grpc.ClientConn) ([]byte, *pb.SnapshotMetadata) {
	t.Helper()
	stream, err := pb.NewClusterServiceClient(conn).SaveSnapshot(ctx, &pb.SaveSnapshotRequest{})
	require.NoError(t, err)
	first, err := stream.Recv()
	require.NoError(t, err)
	meta := first.GetMetadata()
	require.NotNil(t, meta)
	var data []byte
	for {
		m, err := stream.Recv()
		if err != nil {
			require.ErrorContains(t, err, "EOF")
			break
		}
		data = append(data, m.GetChunk()...)
	}
	require.EqualValues(t, meta.Size, len(data))
	return data, meta
}

func listAll(t *testing.T, ctx context.Context, n *testcluster.Node) []*pb.Pool {
	t.Helper()
	resp, err := n.Pools().ListPools(ctx, &pb.ListPoolsRequest{PageSize: 1000, Consistent: true})
	require.NoError(t, err)
	return resp.Pools
}

func listAllLocal(ctx context.Context, n *testcluster.Node) []*pb.Pool {
	var out []*pb.Pool
	token := ""
	for {
		resp, err := n.Pools().ListPools(ctx, &pb.ListPoolsRequest{PageSize: 7, PageToken: token})
		if err != nil {
			return nil
		}
		out = append(out, resp.Pools...)
		if token = resp.NextPageToken; token == "" {
			return out
		}
	}
}

func TestCluster_removeAndAddBackMember(t *testing.T) {
	const stabilization = 2 * time.Second
	c := startClusterWith(t, 3, func(cfg *server.Config) { cfg.ServerStabilization = stabilization })
	leader := waitLeader(t, c)
	ctx := ctxT(t)
	victim := follower(c, leader)

	_, err := leader.Cluster().RemoveMember(ctx, &pb.RemoveMemberRequest{Id: victim.ID})
	require.NoError(t, err)
	victim.Stop()
	members, err := leader.Cluster().ListMembers(ctx, &pb.ListMembersRequest{Consistent: true})
	require.NoError(t, err)
	require.Len(t, members.Members, 2)

	// Two of three keep committing, with writes through either node.
	for i, n := range c.Running() {
		_, err := retry(ctx, func(ctx context.Context) (*pb.CreatePoolResponse, error) {
			return n.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: pool(fmt.Sprintf("two-%d", i))})
		})
		require.NoError(t, err)
	}

	// The removed node comes back with a fresh data directory and joins.
	require.NoError(t, os.RemoveAll(victim.DataDir))
	victim.Restart()
	// It holds no peers: before AddMember it knows no leader.
	joined := time.Now()
	added, err := retry(ctx, func(ctx context.Context) (*pb.AddMemberResponse, error) {
		return leader.Cluster().AddMember(ctx, &pb.AddMemberRequest{Id: victim.ID, RaftAddress: victim.RaftAddr, ApiAddress: victim.GRPCAddr})
	})
	require.NoError(t, err)
	require.True(t, added.Promoting, "a new voter joins as a non-voter")
	rejoined := memberOf(ctx, t, leader, victim.ID)
	require.Equal(t, pb.Suffrage_SUFFRAGE_NONVOTER, rejoined.GetSuffrage())
	require.True(t, rejoined.GetPromoting())
	waitVoter(ctx, t, leader, victim.ID, 30*time.Second)
	took := time.Since(joined)
	t.Logf("%s promoted to voter %v after it joined", victim.ID, took.Round(time.Millisecond))
	require.GreaterOrEqual(t, took, stabilization, "promoted before it was healthy for -server-stabilization-time")
	_, _, err = c.WaitLeader(ctx, 10*time.Second)
	require.NoError(t, err)
	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
		got := listAllLocal(ctx, victim)
		if len(got) != 2 {
			return fmt.Errorf("rejoined node has %d pools", len(got))
		}
		return nil
	}))
	members, err = victim.Cluster().ListMembers(ctx, &pb.ListMembersRequest{Consistent: true})
	require.NoError(t, err)
	require.Len(t, members.Members, 3)

	// A brand new node joins too, and leadership moves to it on request.
	n4, err := c.AddNode(ctx, "c4")
	require.NoError(t, err)
	_, _, err = c.WaitLeader(ctx, 10*time.Second)
	require.NoError(t, err)
	waitVoter(ctx, t, victim, n4.ID, 30*time.Second)
	tr, err := retry(ctx, func(ctx context.Context) (*pb.TransferLeadershipResponse, error) {
		return victim.Cluster().TransferLeadership(ctx, &pb.TransferLeadershipRequest{Id: n4.ID})
	})
	require.NoError(t, err)
	require.Equal(t, n4.ID, tr.LeaderId)
}

// TestCluster_aNewVoterThatDoesNotCatchUpStaysANonvoter: a member added
// as a voter that never answers (nothing runs at its addresses) joins as
// a non-voter and stays one, so it never counts in the quorum: the three
// voters keep committing with one of them stopped. Added with
// -server-stabilization-time 0, a voter counts at once.
func TestCluster_aNewVoterThatDoesNotCatchUpStaysANonvoter(t *testing.T) {
	const stabilization = time.Second
	c := startClusterWith(t, 3, func(cfg *server.Config) { cfg.ServerStabilization = stabilization })
	leader := waitLeader(t, c)
	ctx := ctxT(t)
	ghost := []string{freeAddr(t), freeAddr(t)}
	added, err := retry(ctx, func(ctx context.Context) (*pb.AddMemberResponse, error) {
		return follower(c, leader).Cluster().AddMember(ctx, &pb.AddMemberRequest{Id: "ghost", RaftAddress: ghost[0], ApiAddress: ghost[1]})
	})
	require.NoError(t, err)
	require.True(t, added.Promoting)
	// Retried, it changes nothing.
	again, err := leader.Cluster().AddMember(ctx, &pb.AddMemberRequest{Id: "ghost", RaftAddress: ghost[0], ApiAddress: ghost[1]})
	require.NoError(t, err)
	require.True(t, again.Promoting)

	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
		if why := memberOf(ctx, t, leader, "ghost").GetPromotion(); !strings.Contains(why, "status:") {
			return fmt.Errorf("promotion: %q", why)
		}
		return nil
	}), "the leader says why the ghost is not a voter")
	deadline := time.Now().Add(stabilization + 3*time.Second)
	for time.Now().Before(deadline) {
		m := memberOf(ctx, t, leader, "ghost")
		require.Equal(t, pb.Suffrage_SUFFRAGE_NONVOTER, m.GetSuffrage(), "a member that never answered was promoted")
		require.True(t, m.GetPromoting())
		_, err := leader.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: pool(fmt.Sprintf("p%d", time.Now().UnixNano()))})
		require.NoError(t, err)
	}
	// With one voter of three stopped, the two others still commit: the
	// ghost does not count.
	stopped := follower(c, leader)
	stopped.Stop()
	_, err = retry(ctx, func(ctx context.Context) (*pb.CreatePoolResponse, error) {
		return leader.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: pool("two-of-three")})
	})
	require.NoError(t, err)

	// Asked to join as a non-voter, it no longer waits for promotion.
	kept, err := leader.Cluster().AddMember(ctx, &pb.AddMemberRequest{Id: "ghost", RaftAddress: ghost[0], Nonvoter: true})
	require.NoError(t, err)
	require.False(t, kept.Promoting)
	require.False(t, memberOf(ctx, t, leader, "ghost").GetPromoting())
	_, err = leader.Cluster().RemoveMember(ctx, &pb.RemoveMemberRequest{Id: "ghost"})
	require.NoError(t, err)
}

// TestCluster_aPromotedMemberReplacesADeadOne: a voter stopped for longer
// than -dead-server-after (10s) is removed once a new member is promoted
// in its place, as Consul's autopilot cleans up dead servers: the cluster
// is three voters again, all alive, and no longer needs the dead one.
func TestCluster_aPromotedMemberReplacesADeadOne(t *testing.T) {
	const deadAfter = 10 * time.Second
	c := startClusterWith(t, 3, func(cfg *server.Config) {
		cfg.ServerStabilization, cfg.DeadServerAfter = time.Second, deadAfter
	})
	leader := waitLeader(t, c)
	ctx := ctxT(t)
	tolerance := func(want uint32) {
		t.Helper()
		require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
			st, err := leader.Cluster().GetStatus(ctx, &pb.GetStatusRequest{})
			if err != nil {
				return err
			}
			if st.FailureTolerance != want {
				return fmt.Errorf("failure tolerance %d, want %d", st.FailureTolerance, want)
			}
			if m := scrape(t, leader.HTTPAddr); !strings.Contains(m, fmt.Sprintf("hostscale_controller_failure_tolerance %d\n", want)) {
				return fmt.Errorf("/metrics has no failure tolerance of %d", want)
			}
			return nil
		}))
	}
	tolerance(1)
	dead := follower(c, leader)
	dead.Stop()
	stopped := time.Now()
	tolerance(0)
	// The leader has not reached it for deadAfter (it may never have).
	require.NoError(t, testcluster.Eventually(ctx, deadAfter+10*time.Second, func(ctx context.Context) error {
		m := memberOf(ctx, t, leader, dead.ID)
		if last := m.GetLastReached(); m.GetReachable() || time.Since(stopped) < deadAfter+time.Second ||
			(last != nil && time.Since(last.AsTime()) < deadAfter+time.Second) {
			return fmt.Errorf("%s: reachable %v, last reached %v", dead.ID, m.GetReachable(), last.AsTime())
		}
		return nil
	}))
	n4, err := c.AddNode(ctx, "c4")
	require.NoError(t, err)
	require.NoError(t, testcluster.Eventually(ctx, 30*time.Second, func(ctx context.Context) error {
		if m := memberOf(ctx, t, leader, dead.ID); m != nil {
			return fmt.Errorf("%s is still a member (%v)", dead.ID, m.GetSuffrage())
		}
		return nil
	}))
	t.Logf("%s removed %v after it stopped, replaced by %s", dead.ID, time.Since(stopped).Round(time.Millisecond), n4.ID)
	require.Equal(t, pb.Suffrage_SUFFRAGE_VOTER, memberOf(ctx, t, leader, n4.ID).GetSuffrage())
	resp, err := leader.Cluster().ListMembers(ctx, &pb.ListMembersRequest{Consistent: true})
	require.NoError(t, err)
	require.Len(t, resp.Members, 3)
	tolerance(1)
	// The three alive voters commit with one of them stopped.
	follower(c, leader).Stop()
	_, err = retry(ctx, func(ctx context.Context) (*pb.CreatePoolResponse, error) {
		return leader.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: pool("after-cleanup")})
	})
	require.NoError(t, err)
}

// TestCluster_withoutStabilizationAVoterCountsAtOnce: with
// -server-stabilization-time 0 AddMember adds a voter at once.
func TestCluster_withoutStabilizationAVoterCountsAtOnce(t *testing.T) {
	c := startClusterWith(t, 3, func(cfg *server.Config) { cfg.ServerStabilization = 0 })
	leader := waitLeader(t, c)
	ctx := ctxT(t)
	n4, err := c.AddNode(ctx, "c4")
	require.NoError(t, err)
	m := memberOf(ctx, t, leader, n4.ID)
	require.Equal(t, pb.Suffrage_SUFFRAGE_VOTER, m.GetSuffrage())
	require.False(t, m.GetPromoting())
}

// rulesInstalled waits until the new leader has installed the default
// alerting rules: the last write a fresh cluster makes on its own.
func rulesInstalled(t *testing.T, ctx context.Context, n *testcluster.Node) {
	t.Helper()
	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
		r, err := pb.NewAlertServiceClient(n.Conn()).ListRules(ctx, &pb.ListRulesRequest{Consistent: true})
		if err == nil && len(r.Rules) == 0 {
			err = fmt.Errorf("no rules yet")
		}
		return err
	}))
}

func TestCluster_badInputChangesNothing(t *testing.T) {
	c := startCluster(t, 3)
	leader := waitLeader(t, c)
	f := follower(c, leader)
	ctx := ctxT(t)
	rulesInstalled(t, ctx, leader)
	before, err := leader.Cluster().GetStatus(ctx, &pb.GetStatusRequest{})
	require.NoError(t, err)

	for name, tc := range map[string]struct {
		call  func() error
		code  codes.Code
		field string
	}{
		"AddMember empty id": {func() error {
			_, err := f.Cluster().AddMember(ctx, &pb.AddMemberRequest{RaftAddress: "127.0.0.1:1"})
			return err
		}, codes.InvalidArgument, "id"},
		"AddMember unparsable address": {func() error {
			_, err := f.Cluster().AddMember(ctx, &pb.AddMemberRequest{Id: "c9", RaftAddress: "not an address"})
			return err
		}, codes.InvalidArgument, "raft_address"},
		"AddMember port out of range": {func() error {
			_, err := f.Cluster().AddMember(ctx, &pb.AddMemberRequest{Id: "c9", RaftAddress: "127.0.0.1:70000"})
			return err
		}, codes.InvalidArgument, "raft_address"},
		"AddMember address of another member": {func() error {
			_, err := leader.Cluster().AddMember(ctx, &pb.AddMemberRequest{Id: "c9", RaftAddress: f.RaftAddr})
			return err
		}, codes.AlreadyExists, "raft_address"},
		"RemoveMember unknown": {func() error {
			_, err := f.Cluster().RemoveMember(ctx, &pb.RemoveMemberRequest{Id: "nobody"})
			return err
		}, codes.NotFound, "nobody"},
		"TransferLeadership unknown": {func() error {
			_, err := f.Cluster().TransferLeadership(ctx, &pb.TransferLeadershipRequest{Id: "nobody"})
			return err
		}, codes.NotFound, "id"},
		"CreatePool bad name": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: pool("Bad_Name")})
			return err
		}, codes.InvalidArgument, "pool.name"},
		"CreatePool bad backend": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: pool("ok", "127.0.0.1:80", "nohost")})
			return err
		}, codes.InvalidArgument, "pool.backends[1].address"},
		"CreatePool backend host name": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: pool("ok", "backend.example.com:80")})
			return err
		}, codes.InvalidArgument, "pool.backends[0].address"},
		"CreatePool bad weight": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "ok", Backends: []*pb.Backend{{Address: "10.0.0.1:1", Weight: 5000}}}})
			return err
		}, codes.InvalidArgument, "pool.backends[0].weight"},
		"CreatePool template without command": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "ok", Template: &pb.InstanceTemplate{Args: []string{"x"}}}})
			return err
		}, codes.InvalidArgument, "pool.template.command"},
		"CreatePool template sets PORT": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "ok", Template: &pb.InstanceTemplate{Command: "app", Env: map[string]string{"PORT": "1"}}}})
			return err
		}, codes.InvalidArgument, `pool.template.env["PORT"]`},
		"CreatePool template bad signal": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "ok", Template: &pb.InstanceTemplate{Command: "app", StopSignal: "SIGSTOP"}}})
			return err
		}, codes.InvalidArgument, "pool.template.stop_signal"},
		"CreatePool template relative dir": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "ok", Template: &pb.InstanceTemplate{Command: "app", WorkingDir: "srv"}}})
			return err
		}, codes.InvalidArgument, "pool.template.working_dir"},
		"CreatePool template bad health path": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "ok", Template: &pb.InstanceTemplate{Command: "app", HealthPath: "healthz"}}})
			return err
		}, codes.InvalidArgument, "pool.template.health_path"},
		"CreatePool template health interval too short": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "ok", Template: &pb.InstanceTemplate{Command: "app", HealthInterval: durationpb.New(time.Millisecond)}}})
			return err
		}, codes.InvalidArgument, "pool.template.health_interval"},
		"CreatePool min above max": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "ok", Template: &pb.InstanceTemplate{Command: "app"}, Min: 5, Max: 2}})
			return err
		}, codes.InvalidArgument, "pool.max"},
		"CreatePool desired above max": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "ok", Template: &pb.InstanceTemplate{Command: "app"}, Max: 2, Desired: 3}})
			return err
		}, codes.InvalidArgument, "pool.desired"},
		"CreatePool bad selector": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "ok", Template: &pb.InstanceTemplate{Command: "app"}, Selector: "tier in (web"}})
			return err
		}, codes.InvalidArgument, "pool.selector"},
		"CreatePool reserves more cores than any node": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "ok", Template: &pb.InstanceTemplate{Command: "app",
				Resources: &pb.InstanceResources{CpuMillicores: 1 << 31}}}})
			return err
		}, codes.InvalidArgument, "pool.template.resources.cpu_millicores"},
		"CreatePool reserves more memory than any node": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "ok", Template: &pb.InstanceTemplate{Command: "app",
				Resources: &pb.InstanceResources{MemoryBytes: 1 << 62}}}})
			return err
		}, codes.InvalidArgument, "pool.template.resources.memory_bytes"},
		"CreatePool huge max_surge": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "ok", Template: &pb.InstanceTemplate{Command: "app"}, MaxSurge: 1 << 30}})
			return err
		}, codes.InvalidArgument, "pool.max_surge"},
		"CreatePool max_surge without template": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "ok", MaxSurge: 1}})
			return err
		}, codes.InvalidArgument, "pool.template"},
		"CreatePool min without template": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "ok", Min: 1}})
			return err
		}, codes.InvalidArgument, "pool.template"},
		"UpdatePool unknown pool": {func() error {
			_, err := f.Pools().UpdatePool(ctx, &pb.UpdatePoolRequest{Pool: &pb.Pool{Name: "nope"}})
			return err
		}, codes.NotFound, "nope"},
		"UpdatePool bad template": {func() error {
			_, err := f.Pools().UpdatePool(ctx, &pb.UpdatePoolRequest{Pool: &pb.Pool{Name: "nope", Template: &pb.InstanceTemplate{StopGrace: durationpb.New(time.Hour)}}})
			return err
		}, codes.InvalidArgument, "pool.template.command"},
		"CreatePool bad scaling target": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "ok", Template: &pb.InstanceTemplate{Command: "app"},
				Scaling: &pb.ScalingPolicy{Metric: pb.ScalingMetric_SCALING_METRIC_HOST_CPU, Target: -1}}})
			return err
		}, codes.InvalidArgument, "pool.scaling.target"},
		"CreatePool repeated further metric": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "ok", Template: &pb.InstanceTemplate{Command: "app"},
				Scaling: &pb.ScalingPolicy{Metric: pb.ScalingMetric_SCALING_METRIC_HOST_CPU, Target: 50, Metrics: []*pb.MetricTarget{
					{Metric: pb.ScalingMetric_SCALING_METRIC_P95_LATENCY_MS, Target: 200}, {Metric: pb.ScalingMetric_SCALING_METRIC_HOST_CPU, Target: 60}}}}})
			return err
		}, codes.InvalidArgument, "pool.scaling.metrics[1].metric"},
		"CreatePool scaling window too long": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "ok", Template: &pb.InstanceTemplate{Command: "app"},
				Scaling: &pb.ScalingPolicy{Metric: pb.ScalingMetric_SCALING_METRIC_HOST_CPU, Target: 50, Window: durationpb.New(time.Hour)}}})
			return err
		}, codes.InvalidArgument, "pool.scaling.window"},
		"CreatePool scaling evaluations too rare for the window": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "ok", Template: &pb.InstanceTemplate{Command: "app"},
				Scaling: &pb.ScalingPolicy{Metric: pb.ScalingMetric_SCALING_METRIC_HOST_CPU, Target: 50, EvaluationPeriod: durationpb.New(time.Second), ScaleDownStabilization: durationpb.New(time.Hour)}}})
			return err
		}, codes.InvalidArgument, "pool.scaling"},
		"CreatePool webhook without url": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "ok", Template: &pb.InstanceTemplate{Command: "app"},
				Scaling: &pb.ScalingPolicy{Metric: pb.ScalingMetric_SCALING_METRIC_HOST_CPU, Target: 50,
					Provider: &pb.ScaleProvider{Provider: &pb.ScaleProvider_Webhook{Webhook: &pb.WebhookProvider{}}}}}})
			return err
		}, codes.InvalidArgument, "pool.scaling.provider.webhook.url"},
		"ReportStats bad bounds": {func() error {
			_, err := pb.NewBalancerServiceClient(f.Conn()).ReportStats(ctx, &pb.ReportStatsRequest{Balancer: "lb", BucketBounds: []float64{2, 1}})
			return err
		}, codes.InvalidArgument, "bucket_bounds[1]"},
		"ReportStats bad address": {func() error {
			_, err := pb.NewBalancerServiceClient(f.Conn()).ReportStats(ctx, &pb.ReportStatsRequest{Balancer: "lb",
				Backends: []*pb.BackendCounters{{Pool: "web", Address: "nowhere"}}})
			return err
		}, codes.InvalidArgument, "backends[0].address"},
		"ReportStats negative in_flight_seconds": {func() error {
			_, err := pb.NewBalancerServiceClient(f.Conn()).ReportStats(ctx, &pb.ReportStatsRequest{Balancer: "lb",
				Backends: []*pb.BackendCounters{{Pool: "web", Address: "127.0.0.1:1"}, {Pool: "web", Address: "127.0.0.1:2", InFlightSeconds: proto.Float64(-1)}}})
			return err
		}, codes.InvalidArgument, "backends[1].in_flight_seconds"},
		"ReportStats NaN in_flight_seconds": {func() error {
			_, err := pb.NewBalancerServiceClient(f.Conn()).ReportStats(ctx, &pb.ReportStatsRequest{Balancer: "lb",
				Backends: []*pb.BackendCounters{{Pool: "web", Address: "127.0.0.1:1", InFlightSeconds: proto.Float64(math.NaN())}}})
			return err
		}, codes.InvalidArgument, "backends[0].in_flight_seconds"},
		"ReportStats bad started": {func() error {
			_, err := pb.NewBalancerServiceClient(f.Conn()).ReportStats(ctx, &pb.ReportStatsRequest{Balancer: "lb",
				Started: &timestamppb.Timestamp{Seconds: 1, Nanos: -5}})
			return err
		}, codes.InvalidArgument, "started"},
		"ReportStats bad pool name": {func() error {
			_, err := pb.NewBalancerServiceClient(f.Conn()).ReportStats(ctx, &pb.ReportStatsRequest{Balancer: "lb",
				Pools: []*pb.PoolCounters{{Pool: "web"}, {Pool: "Web!", Waiting: 1}}})
			return err
		}, codes.InvalidArgument, "pools[1].pool"},
		"CreatePool activation timeout without scaling to zero": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "ok", Template: &pb.InstanceTemplate{Command: "app"},
				Scaling: &pb.ScalingPolicy{Metric: pb.ScalingMetric_SCALING_METRIC_HOST_CPU, Target: 50, ActivationTimeout: durationpb.New(time.Second)}}})
			return err
		}, codes.InvalidArgument, "pool.scaling.activation_timeout"},
		"CreatePool scaling to zero without a template": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "ok",
				Scaling: &pb.ScalingPolicy{Metric: pb.ScalingMetric_SCALING_METRIC_HOST_CPU, Target: 50, ScaleToZeroAfter: durationpb.New(time.Minute),
					Provider: &pb.ScaleProvider{Provider: &pb.ScaleProvider_Exec{Exec: &pb.ExecProvider{Command: "scale"}}}}}})
			return err
		}, codes.InvalidArgument, "pool.scaling.scale_to_zero_after"},
		"ListScaleEvents unknown pool": {func() error {
			_, err := f.Pools().ListScaleEvents(ctx, &pb.ListScaleEventsRequest{Pool: "nope"})
			return err
		}, codes.NotFound, "nope"},
		"ScalePool unknown pool": {func() error {
			_, err := f.Pools().ScalePool(ctx, &pb.ScalePoolRequest{Pool: "nope", Desired: 1})
			return err
		}, codes.NotFound, "nope"},
		"ScalePool bad pool name": {func() error {
			_, err := f.Pools().ScalePool(ctx, &pb.ScalePoolRequest{Pool: "No_Pool", Desired: 1})
			return err
		}, codes.InvalidArgument, "pool"},
		"DrainNode unknown node": {func() error {
			_, err := f.Nodes().DrainNode(ctx, &pb.DrainNodeRequest{Node: "nope"})
			return err
		}, codes.NotFound, "nope"},
		"ListInstances bad node": {func() error {
			_, err := f.Pools().ListInstances(ctx, &pb.ListInstancesRequest{Node: "-x"})
			return err
		}, codes.InvalidArgument, "node"},
		"CreatePool bad path": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "ok", PathPrefix: "api"}})
			return err
		}, codes.InvalidArgument, "pool.path_prefix"},
		"CreatePool bad host": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "ok", Hosts: []string{"a..b"}}})
			return err
		}, codes.InvalidArgument, "pool.hosts[0]"},
		"CreatePool no pool": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{})
			return err
		}, codes.InvalidArgument, "pool"},
		"long request id": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{RequestId: strings.Repeat("x", 200), Pool: pool("ok")})
			return err
		}, codes.InvalidArgument, "request_id"},
		"ListPools bad token": {func() error {
			_, err := f.Pools().ListPools(ctx, &pb.ListPoolsRequest{PageToken: "!!"})
			return err
		}, codes.InvalidArgument, "page_token"},
		"5 MiB request": {func() error {
			_, err := f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "big", Hosts: []string{strings.Repeat("a", 5<<20)}}})
			return err
		}, codes.ResourceExhausted, ""},
		"unknown method": {func() error {
			return f.Conn().Invoke(ctx, "/hostscale.v1.ClusterService/Explode", &pb.GetStatusRequest{}, &pb.GetStatusResponse{})
		}, codes.Unimplemented, ""},
		"unknown service": {func() error {
			return f.Conn().Invoke(ctx, "/hostscale.v9.Nothing/Call", &pb.GetStatusRequest{}, &pb.GetStatusResponse{})
		}, codes.Unimplemented, ""},
		"restore garbage": {func() error {
			s, err := f.Cluster().RestoreSnapshot(ctx)
			if err != nil {
				return err
			}
			_ = s.Send(&pb.RestoreSnapshotRequest{Chunk: []byte("\xff\xff\xffnot a snapshot")})
			_, err = s.CloseAndRecv()
			return err
		}, codes.InvalidArgument, "chunk"},
		"restore wrong checksum": {func() error {
			s, err := f.Cluster().RestoreSnapshot(ctx)
			if err != nil {
				return err
			}
			_ = s.Send(&pb.RestoreSnapshotRequest{Chunk: []byte{}, Sha256: strings.Repeat("0", 64)})
			_, err = s.CloseAndRecv()
			return err
		}, codes.InvalidArgument, "sha256"},
	} {
		t.Run(name, func(t *testing.T) {
			err := tc.call()
			require.Equal(t, tc.code, status.Code(err), "%v", err)
			require.Contains(t, status.Convert(err).Message(), tc.field)
		})
	}

	after, err := leader.Cluster().GetStatus(ctx, &pb.GetStatusRequest{})
	require.NoError(t, err)
	require.Equal(t, before.Index, after.Index, "no command was applied")
	require.Len(t, after.Members, 3)
	pools, err := leader.Pools().ListPools(ctx, &pb.ListPoolsRequest{})
	require.NoError(t, err)
	require.Empty(t, pools.Pools)
}

// TestCluster_garbageOnTheRaftPortChangesNothing sends what is neither Raft
// nor a well-formed forwarded call to the leader's Raft port: each
// connection is dropped, and the cluster goes on committing.
func TestCluster_garbageOnTheRaftPortChangesNothing(t *testing.T) {
	c := startCluster(t, 3)
	leader := waitLeader(t, c)
	ctx := ctxT(t)

	send := func(conn net.Conn, b []byte) {
		t.Helper()
		_, _ = conn.Write(b)
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.ReadAll(conn)
		var ne net.Error
		require.False(t, errors.As(err, &ne) && ne.Timeout(), "the connection should be dropped")
		conn.Close()
	}
	frame := func(b []byte) []byte { return append(binary.BigEndian.AppendUint32(nil, uint32(len(b))), b...) }
	// Random bytes, starting with the forwarding byte or not.
	for _, b := range [][]byte{
		[]byte("\xf5GET / HTTP/1.1\r\n\r\n"),
		[]byte("\x7fELF\x02\x01\x01garbage"),
	} {
		conn, err := net.Dial("tcp", leader.RaftAddr)
		require.NoError(t, err)
		send(conn, b)
	}
	// A well-formed handshake, then frames that are not calls.
	for _, b := range [][]byte{
		binary.BigEndian.AppendUint32(nil, 1<<31), // over the size limit
		frame([]byte("\xff\xff\xff\xff")),         // not a ForwardRequest
		frame(nil)[:2],                            // cut short
	} {
		conn, err := raftnode.DialForward(ctx, leader.RaftAddr, 5*time.Second)
		require.NoError(t, err)
		if len(b) == 2 {
			_, _ = conn.Write(b)
			require.NoError(t, conn.(*net.TCPConn).CloseWrite())
			b = nil
		}
		send(conn, b)
	}

	// The cluster goes on: a write through a follower commits, and it is the
	// only pool.
	f := follower(c, leader)
	_, err := retry(ctx, func(ctx context.Context) (*pb.CreatePoolResponse, error) {
		return f.Pools().CreatePool(ctx, &pb.CreatePoolRequest{RequestId: "after-garbage", Pool: pool("web", "127.0.0.1:9001")})
	})
	require.NoError(t, err)
	pools, err := leader.Pools().ListPools(ctx, &pb.ListPoolsRequest{Consistent: true})
	require.NoError(t, err)
	require.Len(t, pools.Pools, 1)
	for _, n := range c.Running() {
		require.True(t, n.Running(), n.ID)
	}
}

// freeAddr returns a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}
