package server_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hostscale/hostscale/controller/server"
	"github.com/hostscale/hostscale/controller/server/servertest"
	"github.com/hostscale/hostscale/internal/testcluster"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

const testTTL = 2 * time.Second

func startAgentCluster(t *testing.T) *testcluster.Cluster {
	t.Helper()
	return testcluster.Start(t, testcluster.Options{
		Nodes:            3,
		Launcher:         servertest.Launcher{Configure: func(c *server.Config) { c.HeartbeatTTL = testTTL }},
		HeartbeatTimeout: 500 * time.Millisecond,
		ElectionTimeout:  500 * time.Millisecond,
	})
}

func hello(node string) *pb.ConnectRequest {
	return &pb.ConnectRequest{Message: &pb.ConnectRequest_Hello{Hello: &pb.Hello{
		Node:   node,
		Labels: map[string]string{"tier": "web", "zone": "a"},
		Facts:  &pb.NodeFacts{Hostname: node, CpuCount: 4, MemoryBytes: 8 << 30, Os: "linux", Kernel: "6.1", AgentVersion: "test"},
	}}}
}

// helloUnder is hello with the node under conds.
func helloUnder(node string, conds ...*pb.NodeCondition) *pb.ConnectRequest {
	h := hello(node)
	h.GetHello().Conditions = conds
	return h
}

func conditions(conds ...*pb.NodeCondition) *pb.ConnectRequest {
	return &pb.ConnectRequest{Message: &pb.ConnectRequest_Conditions{Conditions: &pb.NodeConditions{Conditions: conds}}}
}

func diskPressure(since time.Time) *pb.NodeCondition {
	return &pb.NodeCondition{Type: pb.NodeConditionType_NODE_CONDITION_TYPE_DISK_PRESSURE, Since: timestamppb.New(since),
		Message: "1.0 GiB of 20.0 GiB free on the filesystem of /var/lib/hostscale-agent (5.0 %, under 10 %)"}
}

func batch(seq uint64, samples ...*pb.Sample) *pb.ConnectRequest {
	return &pb.ConnectRequest{Message: &pb.ConnectRequest_Samples{Samples: &pb.SampleBatch{Seq: seq, Samples: samples}}}
}

func sampleAt(t time.Time, cpu float64) *pb.Sample {
	return &pb.Sample{Time: timestamppb.New(t), CpuPercent: cpu, MemoryUsedPercent: 40, MemoryUsedBytes: 3 << 30,
		Disks: []*pb.DiskUsage{{Mount: "/", UsedPercent: 50}}, Processes: 100}
}

// agentStream opens Connect on conn, sends the hello and returns the stream
// and the first answer.
func agentStream(t *testing.T, ctx context.Context, conn *grpc.ClientConn, node string) (pb.AgentService_ConnectClient, *pb.ConnectResponse) {
	t.Helper()
	return agentStreamWith(t, ctx, conn, hello(node))
}

// agentStreamWith is agentStream with a hello of the test's.
func agentStreamWith(t *testing.T, ctx context.Context, conn *grpc.ClientConn, hello *pb.ConnectRequest) (pb.AgentService_ConnectClient, *pb.ConnectResponse) {
	t.Helper()
	s, err := pb.NewAgentServiceClient(conn).Connect(ctx)
	require.NoError(t, err)
	require.NoError(t, s.Send(hello))
	first, err := s.Recv()
	require.NoError(t, err)
	if first.GetWelcome() != nil {
		// The leader sends the node's assignments right after the
		// Welcome: none here.
		a, err := s.Recv()
		require.NoError(t, err)
		require.NotNil(t, a.GetAssignments(), "%v", a)
		require.Empty(t, a.GetAssignments().Instances)
	}
	return s, first
}

func nodeStatus(ctx context.Context, n *testcluster.Node, name string) (pb.NodeStatus, *pb.Node, error) {
	resp, err := n.Nodes().GetNode(ctx, &pb.GetNodeRequest{Node: name})
	if err != nil {
		return 0, nil, err
	}
	return resp.Node.Status, resp.Node, nil
}

func TestAgents_registerRedirectSampleAndListEverywhere(t *testing.T) {
	c := startAgentCluster(t)
	leader := waitLeader(t, c)
	f := follower(c, leader)
	ctx := ctxT(t)

	// A follower answers the hello with the leader's address.
	s, first := agentStream(t, ctx, f.Conn(), "web-1")
	r := first.GetRedirect()
	require.NotNil(t, r, "%v", first)
	require.Equal(t, leader.ID, r.LeaderId)
	require.Equal(t, leader.GRPCAddr, r.LeaderAddress)
	_, err := s.Recv()
	require.ErrorContains(t, err, "EOF", "the follower closes the stream")

	s, first = agentStream(t, ctx, leader.Conn(), "web-1")
	w := first.GetWelcome()
	require.NotNil(t, w, "%v", first)
	require.Equal(t, leader.ID, w.Controller)
	require.Equal(t, testTTL, w.HeartbeatTtl.AsDuration())
	now := time.Now()
	require.NoError(t, s.Send(batch(1, sampleAt(now.Add(-time.Second), 10), sampleAt(now, 42))))
	ack, err := s.Recv()
	require.NoError(t, err)
	require.Equal(t, &pb.Ack{Seq: 1, Accepted: 2}, ack.GetAck())
	// A repeated (old) sample is rejected, not an error.
	require.NoError(t, s.Send(batch(2, sampleAt(now, 99))))
	ack, err = s.Recv()
	require.NoError(t, err)
	require.EqualValues(t, 1, ack.GetAck().Rejected)

	for _, n := range c.Running() {
		require.NoError(t, testcluster.Eventually(ctx, 5*time.Second, func(ctx context.Context) error {
			resp, err := n.Nodes().ListNodes(ctx, &pb.ListNodesRequest{Selector: "tier=web,zone in (a,b)", Status: pb.NodeStatus_NODE_STATUS_UP})
			if err != nil {
				return err
			}
			if len(resp.Nodes) != 1 || resp.Nodes[0].Latest.GetCpuPercent() != 42 {
				return fmt.Errorf("%s lists %v", n.ID, resp.Nodes)
			}
			node := resp.Nodes[0]
			require.Equal(t, "web-1", node.Facts.Hostname)
			require.Equal(t, leader.ID, node.Controller)
			require.NotNil(t, node.LastHeartbeat)
			return nil
		}), n.ID)
		none, err := n.Nodes().ListNodes(ctx, &pb.ListNodesRequest{Selector: "tier!=web"})
		require.NoError(t, err)
		require.Empty(t, none.Nodes)
	}

	q, err := f.Metrics().QueryMetrics(ctx, &pb.QueryMetricsRequest{Metric: "cpu_percent", Node: "web-1", Window: durationpb.New(time.Minute)})
	require.NoError(t, err)
	require.Len(t, q.Points, 2)
	require.Equal(t, 42.0, q.Max)
	require.Equal(t, 26.0, q.Avg)
	agg, err := leader.Metrics().QueryMetrics(ctx, &pb.QueryMetricsRequest{Metric: "cpu_percent", Selector: "tier=web", Aggregate: pb.Aggregate_AGGREGATE_MAX, Step: durationpb.New(time.Hour)})
	require.NoError(t, err)
	require.Equal(t, []string{"web-1"}, agg.Nodes)
	require.Len(t, agg.Points, 1)
	require.Equal(t, 26.0, agg.Points[0].Value, "the node's mean in the step")
	_, err = leader.Metrics().QueryMetrics(ctx, &pb.QueryMetricsRequest{Metric: "cpu"})
	require.Equal(t, codes.InvalidArgument, status.Code(err))
	require.Contains(t, err.Error(), "metric")
}

func TestAgents_silentNodeGoesDownAfterTTLAndComesBack(t *testing.T) {
	c := startAgentCluster(t)
	leader := waitLeader(t, c)
	ctx := ctxT(t)

	sctx, cancel := context.WithCancel(ctx)
	s, first := agentStream(t, sctx, leader.Conn(), "db-1")
	require.NotNil(t, first.GetWelcome())
	require.NoError(t, s.Send(&pb.ConnectRequest{Message: &pb.ConnectRequest_Heartbeat{Heartbeat: &pb.Heartbeat{Time: timestamppb.Now()}}}))
	lastSent := time.Now()
	cancel() // the agent dies

	for _, n := range c.Running() {
		require.NoError(t, testcluster.Eventually(ctx, 3*testTTL, func(ctx context.Context) error {
			st, _, err := nodeStatus(ctx, n, "db-1")
			if err == nil && st != pb.NodeStatus_NODE_STATUS_DOWN {
				err = fmt.Errorf("%s: db-1 is %v", n.ID, st)
			}
			return err
		}))
	}
	took := time.Since(lastSent)
	t.Logf("down %v after the last message (ttl %v)", took, testTTL)
	require.InDelta(t, testTTL.Seconds(), took.Seconds(), 1.0, "down after the TTL, within a second")

	// It comes back under the same name.
	s, first = agentStream(t, ctx, leader.Conn(), "db-1")
	require.NotNil(t, first.GetWelcome())
	for _, n := range c.Running() {
		require.NoError(t, testcluster.Eventually(ctx, 5*time.Second, func(ctx context.Context) error {
			st, _, err := nodeStatus(ctx, n, "db-1")
			if err == nil && st != pb.NodeStatus_NODE_STATUS_UP {
				err = fmt.Errorf("%s: db-1 is %v", n.ID, st)
			}
			return err
		}))
	}
	_ = s.CloseSend()
}

func TestAgents_newLeaderStartsTTLClocksAfresh(t *testing.T) {
	c := startAgentCluster(t)
	leader := waitLeader(t, c)
	ctx := ctxT(t)

	// The node registers, then stays quiet for most of a TTL.
	sctx, cancel := context.WithCancel(ctx)
	_, first := agentStream(t, sctx, leader.Conn(), "quiet-1")
	require.NotNil(t, first.GetWelcome())
	cancel()
	time.Sleep(testTTL / 2) // let the old leader's clock run: the new one must not inherit it
	leader.Kill()
	elected := time.Now()
	newLeader := waitLeader(t, c)

	// Not down before a full TTL under the new leader...
	for time.Since(elected) < testTTL-200*time.Millisecond {
		st, _, err := nodeStatus(ctx, newLeader, "quiet-1")
		require.NoError(t, err)
		require.Equal(t, pb.NodeStatus_NODE_STATUS_UP, st, "declared down %v into the new term", time.Since(elected))
		time.Sleep(50 * time.Millisecond)
	}
	// ...and down after it.
	require.NoError(t, testcluster.Eventually(ctx, 2*testTTL, func(ctx context.Context) error {
		st, _, err := nodeStatus(ctx, newLeader, "quiet-1")
		if err == nil && st != pb.NodeStatus_NODE_STATUS_DOWN {
			err = fmt.Errorf("quiet-1 is %v", st)
		}
		return err
	}))
}

func report(ins ...*pb.InstanceStatus) *pb.ConnectRequest {
	return &pb.ConnectRequest{Message: &pb.ConnectRequest_Instances{Instances: &pb.InstanceReport{Instances: ins}}}
}

// rawCodec sends bytes as they are.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error)      { return v.([]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error { *(v.(*[]byte)) = data; return nil }
func (rawCodec) Name() string                       { return "proto" }

func TestAgents_badInputIsRejectedAndOthersKeepStreaming(t *testing.T) {
	c := startAgentCluster(t)
	leader := waitLeader(t, c)
	ctx := ctxT(t)

	// A well-behaved agent streams throughout.
	good, first := agentStream(t, ctx, leader.Conn(), "good-1")
	require.NotNil(t, first.GetWelcome())
	seq := uint64(0)
	goodSend := func() {
		t.Helper()
		seq++
		require.NoError(t, good.Send(batch(seq, sampleAt(time.Now(), 5))))
		ack, err := good.Recv()
		require.NoError(t, err)
		require.Equal(t, seq, ack.GetAck().GetSeq())
	}
	goodSend()

	now := time.Now()
	huge := make([]*pb.Sample, 1_000_000)
	for i := range huge {
		huge[i] = &pb.Sample{}
	}
	tooMany := make([]*pb.Sample, 1001)
	for i := range tooMany {
		tooMany[i] = sampleAt(now.Add(time.Duration(i)*time.Millisecond), 1)
	}
	for name, tc := range map[string]struct {
		msgs  []*pb.ConnectRequest
		code  codes.Code
		field string
	}{
		"samples before registration": {[]*pb.ConnectRequest{batch(1, sampleAt(now, 1))}, codes.FailedPrecondition, "hello"},
		"heartbeat before registration": {[]*pb.ConnectRequest{{Message: &pb.ConnectRequest_Heartbeat{Heartbeat: &pb.Heartbeat{}}}},
			codes.FailedPrecondition, "hello"},
		"invalid node id":  {[]*pb.ConnectRequest{hello("Not_A_Name")}, codes.InvalidArgument, "hello.node"},
		"empty node id":    {[]*pb.ConnectRequest{hello("")}, codes.InvalidArgument, "hello.node"},
		"bad labels":       {[]*pb.ConnectRequest{{Message: &pb.ConnectRequest_Hello{Hello: &pb.Hello{Node: "x", Facts: &pb.NodeFacts{}, Labels: map[string]string{"a b": "c"}}}}}, codes.InvalidArgument, "hello.labels"},
		"NaN":              {[]*pb.ConnectRequest{hello("bad-1"), batch(1, sampleAt(now, math.NaN()))}, codes.InvalidArgument, "samples[0].cpu_percent"},
		"negative":         {[]*pb.ConnectRequest{hello("bad-1"), batch(1, sampleAt(now, 1), &pb.Sample{Time: timestamppb.New(now), Load1: -3})}, codes.InvalidArgument, "samples[1].load1"},
		"over 100 percent": {[]*pb.ConnectRequest{hello("bad-1"), batch(1, sampleAt(now, 250))}, codes.InvalidArgument, "samples[0].cpu_percent"},
		"several bad values, the first named": {[]*pb.ConnectRequest{hello("bad-1"), batch(1, &pb.Sample{Time: timestamppb.New(now),
			Load1: -1, SwapUsedPercent: 101, NetTxBytesPerSecond: math.NaN()})}, codes.InvalidArgument, "samples[0].load1"},
		"a core over 100 percent": {[]*pb.ConnectRequest{hello("bad-1"), batch(1, &pb.Sample{Time: timestamppb.New(now),
			CpuCorePercent: []float64{10, 20, 180}})}, codes.InvalidArgument, "samples[0].cpu_core_percent[2]"},
		"a disk negative": {[]*pb.ConnectRequest{hello("bad-1"), batch(1, &pb.Sample{Time: timestamppb.New(now),
			Disks: []*pb.DiskUsage{{Mount: "/", UsedPercent: 5}, {Mount: "/var", UsedPercent: -1}}})}, codes.InvalidArgument, "samples[0].disks[1].used_percent"},
		"an instance's CPU NaN": {[]*pb.ConnectRequest{hello("bad-1"), batch(1, &pb.Sample{Time: timestamppb.New(now),
			Instances: []*pb.InstanceUsage{{Id: "web-1"}, {Id: "web-2", CpuPercent: math.Inf(1)}}})}, codes.InvalidArgument, "samples[0].instances[1].cpu_percent"},
		"an instance's usage without id": {[]*pb.ConnectRequest{hello("bad-1"), batch(1, &pb.Sample{Time: timestamppb.New(now),
			Instances: []*pb.InstanceUsage{{CpuPercent: 1}}})}, codes.InvalidArgument, "samples[0].instances[0].id"},
		"a day ahead":          {[]*pb.ConnectRequest{hello("bad-1"), batch(1, sampleAt(now.Add(24*time.Hour), 1))}, codes.InvalidArgument, "samples[0].time"},
		"no timestamp":         {[]*pb.ConnectRequest{hello("bad-1"), batch(1, &pb.Sample{})}, codes.InvalidArgument, "samples[0].time"},
		"1,000,000 samples":    {[]*pb.ConnectRequest{hello("bad-1"), batch(1, huge...)}, codes.ResourceExhausted, ""},
		"over the batch limit": {[]*pb.ConnectRequest{hello("bad-1"), batch(1, tooMany...)}, codes.ResourceExhausted, "samples"},
		"hello twice":          {[]*pb.ConnectRequest{hello("bad-1"), hello("bad-1")}, codes.FailedPrecondition, "hello"},
		"empty message":        {[]*pb.ConnectRequest{hello("bad-1"), {}}, codes.InvalidArgument, "message"},
		"instance without id":  {[]*pb.ConnectRequest{hello("bad-1"), report(&pb.InstanceStatus{State: pb.InstanceState_INSTANCE_STATE_HEALTHY})}, codes.InvalidArgument, "instances[0].id"},
		"instance bad address": {[]*pb.ConnectRequest{hello("bad-1"), report(&pb.InstanceStatus{Id: "web-1", State: pb.InstanceState_INSTANCE_STATE_HEALTHY, Address: "nowhere"})}, codes.InvalidArgument, "instances[0].address"},
		"instance bad state":   {[]*pb.ConnectRequest{hello("bad-1"), report(&pb.InstanceStatus{Id: "web-1", State: 99})}, codes.InvalidArgument, "instances[0].state"},
		"hello with an unknown condition": {[]*pb.ConnectRequest{helloUnder("bad-1", &pb.NodeCondition{Type: 99, Since: timestamppb.New(now)})},
			codes.InvalidArgument, "hello.conditions[0].type"},
		"a condition listed twice": {[]*pb.ConnectRequest{hello("bad-1"), conditions(diskPressure(now), diskPressure(now))},
			codes.InvalidArgument, "conditions.conditions[1].type"},
		"a condition without a start": {[]*pb.ConnectRequest{hello("bad-1"), conditions(&pb.NodeCondition{Type: pb.NodeConditionType_NODE_CONDITION_TYPE_DISK_STALLED})},
			codes.InvalidArgument, "conditions.conditions[0].since"},
		"a condition starting tomorrow": {[]*pb.ConnectRequest{hello("bad-1"), conditions(diskPressure(now.Add(24 * time.Hour)))},
			codes.InvalidArgument, "conditions.conditions[0].since"},
		"a condition's message of 1 MiB": {[]*pb.ConnectRequest{hello("bad-1"), conditions(&pb.NodeCondition{Type: pb.NodeConditionType_NODE_CONDITION_TYPE_DISK_PRESSURE,
			Since: timestamppb.New(now), Message: strings.Repeat("x", 1<<20)})}, codes.InvalidArgument, "conditions.conditions[0].message"},
		"a nil condition": {[]*pb.ConnectRequest{hello("bad-1"), conditions(diskPressure(now), nil)},
			codes.InvalidArgument, "conditions.conditions[1]"},
		"instance no state": {[]*pb.ConnectRequest{hello("bad-1"), report(&pb.InstanceStatus{Id: "web-1"})}, codes.InvalidArgument, "instances[0].state"},
		"a relative allowed command": {[]*pb.ConnectRequest{{Message: &pb.ConnectRequest_Hello{Hello: &pb.Hello{Node: "x",
			Facts: &pb.NodeFacts{AllowedCommands: []string{"/usr/bin/*", "bin/app"}}}}}}, codes.InvalidArgument, "hello.facts.allowed_commands"},
		"an allowed command of 1 MiB": {[]*pb.ConnectRequest{{Message: &pb.ConnectRequest_Hello{Hello: &pb.Hello{Node: "x",
			Facts: &pb.NodeFacts{AllowedCommands: []string{"/" + strings.Repeat("x", 1<<20)}}}}}}, codes.InvalidArgument, "hello.facts.allowed_commands"},
	} {
		t.Run(name, func(t *testing.T) {
			s, err := pb.NewAgentServiceClient(leader.Conn()).Connect(ctx)
			require.NoError(t, err)
			var last error
			for _, m := range tc.msgs {
				if err := s.Send(m); err != nil {
					break
				}
			}
			for {
				if _, last = s.Recv(); last != nil {
					break
				}
			}
			require.Equal(t, tc.code, status.Code(last), "%v", last)
			require.Contains(t, status.Convert(last).Message(), tc.field)
			goodSend()
		})
	}

	t.Run("garbage bytes", func(t *testing.T) {
		desc := &grpc.StreamDesc{StreamName: "Connect", ServerStreams: true, ClientStreams: true}
		s, err := leader.Conn().NewStream(ctx, desc, "/hostscale.v1.AgentService/Connect", grpc.ForceCodec(rawCodec{}))
		require.NoError(t, err)
		require.NoError(t, s.SendMsg([]byte("\xff\xfe\xfd garbage \x00\x01")))
		var out []byte
		err = s.RecvMsg(&out)
		// gRPC closes a stream whose bytes do not decode, before the
		// handler sees them.
		require.Equal(t, codes.Internal, status.Code(err), "%v", err)
		require.Contains(t, err.Error(), "failed to unmarshal")
		goodSend()
	})

	// Nothing bad was registered; the good node still reports.
	nodes, err := leader.Nodes().ListNodes(ctx, &pb.ListNodesRequest{})
	require.NoError(t, err)
	var names []string
	for _, n := range nodes.Nodes {
		names = append(names, n.Name)
	}
	require.NotContains(t, strings.Join(names, ","), "Not_A_Name")
	st, node, err := nodeStatus(ctx, leader, "good-1")
	require.NoError(t, err)
	require.Equal(t, pb.NodeStatus_NODE_STATUS_UP, st)
	require.Equal(t, 5.0, node.Latest.GetCpuPercent())
}

// liveAgent opens an agent's stream with hello, welcomed, and keeps it up
// (heartbeats, reading what the leader sends) until the test ends; the
// returned func sends on it.
func liveAgent(t *testing.T, ctx context.Context, conn *grpc.ClientConn, hello *pb.ConnectRequest) func(*pb.ConnectRequest) {
	t.Helper()
	sctx, end := context.WithCancel(ctx)
	s, first := agentStreamWith(t, sctx, conn, hello)
	require.NotNil(t, first.GetWelcome(), "%v", first)
	var mu sync.Mutex // Send is not safe for concurrent use
	send := func(m *pb.ConnectRequest) error {
		mu.Lock()
		defer mu.Unlock()
		return s.Send(m)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { end(); wg.Wait() })
	wg.Go(func() {
		for {
			if _, err := s.Recv(); err != nil {
				return
			}
		}
	})
	wg.Go(func() {
		tick := time.NewTicker(time.Second / 4)
		defer tick.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-tick.C:
				if send(&pb.ConnectRequest{Message: &pb.ConnectRequest_Heartbeat{Heartbeat: &pb.Heartbeat{}}}) != nil {
					return
				}
			}
		}
	})
	return func(m *pb.ConnectRequest) { require.NoError(t, send(m)) }
}

// A node's conditions, from its Hello on and as its agent reports them,
// show on every controller and keep new instances off the node; the
// instances it has stay.
func TestAgents_conditionsAreShownAndKeepNewInstancesAway(t *testing.T) {
	c := startAgentCluster(t)
	leader := waitLeader(t, c)
	f := follower(c, leader)
	ctx := ctxT(t)

	began := time.Now().Add(-time.Minute).Truncate(time.Second)
	send1 := liveAgent(t, ctx, leader.Conn(), helloUnder("n1", diskPressure(began)))
	send2 := liveAgent(t, ctx, leader.Conn(), hello("n2"))

	conditionsOn := func(n *testcluster.Node, node string) []pb.NodeConditionType {
		resp, err := n.Nodes().GetNode(ctx, &pb.GetNodeRequest{Node: node})
		require.NoError(t, err)
		var out []pb.NodeConditionType
		for _, c := range resp.Node.Conditions {
			out = append(out, c.Type)
		}
		return out
	}
	resp, err := f.Nodes().GetNode(ctx, &pb.GetNodeRequest{Node: "n1"})
	require.NoError(t, err)
	require.Len(t, resp.Node.Conditions, 1, "a follower shows the leader's view")
	require.True(t, proto.Equal(diskPressure(began), resp.Node.Conditions[0]), "%v", resp.Node.Conditions[0])
	require.Empty(t, conditionsOn(f, "n2"))
	body := scrape(t, leader.HTTPAddr)
	require.Contains(t, body, `hostscale_nodes_under_condition{condition="disk_pressure"} 1`)
	require.Contains(t, body, `hostscale_nodes_under_condition{condition="memory_pressure"} 0`)

	placed := func(want int) map[string]int {
		t.Helper()
		var on map[string]int
		require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
			r, err := leader.Pools().ListInstances(ctx, &pb.ListInstancesRequest{Pool: "web"})
			if err != nil {
				return err
			}
			on = map[string]int{}
			for _, in := range r.Instances {
				on[in.Node]++
			}
			if len(r.Instances) != want {
				return fmt.Errorf("%d instances placed, want %d", len(r.Instances), want)
			}
			return nil
		}))
		return on
	}
	_, err = leader.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{
		Name: "web", PathPrefix: "/", Template: &pb.InstanceTemplate{Command: "app"}, Max: 50, Desired: 4}})
	require.NoError(t, err)
	require.Equal(t, map[string]int{"n2": 4}, placed(4), "n1 is under disk pressure")

	// n1's condition ends and n2 comes under one.
	send1(conditions())
	send2(conditions(&pb.NodeCondition{Type: pb.NodeConditionType_NODE_CONDITION_TYPE_MEMORY_PRESSURE, Since: timestamppb.Now()}))
	require.NoError(t, testcluster.Eventually(ctx, 5*time.Second, func(ctx context.Context) error {
		if got := conditionsOn(f, "n2"); len(got) != 1 || got[0] != pb.NodeConditionType_NODE_CONDITION_TYPE_MEMORY_PRESSURE {
			return fmt.Errorf("n2 shows %v", got)
		}
		if got := conditionsOn(f, "n1"); len(got) != 0 {
			return fmt.Errorf("n1 shows %v", got)
		}
		return nil
	}))
	_, err = leader.Pools().ScalePool(ctx, &pb.ScalePoolRequest{Pool: "web", Desired: 10})
	require.NoError(t, err)
	body = scrape(t, leader.HTTPAddr)
	require.Contains(t, body, `hostscale_nodes_under_condition{condition="disk_pressure"} 0`)
	require.Contains(t, body, `hostscale_nodes_under_condition{condition="memory_pressure"} 1`)
	// Spread alone would give n1 five of the six new ones and n2 one.
	require.Equal(t, map[string]int{"n1": 6, "n2": 4}, placed(10), "n2's instances stay, and it takes no new one")
}

// An assignment change applied while the leader handles an agent's report
// (the two may even share a Raft entry) still reaches the agent, with no
// later change to carry it.
func TestAgents_assignmentsChangedDuringAReportAreSent(t *testing.T) {
	c := startAgentCluster(t)
	leader := waitLeader(t, c)
	ctx := ctxT(t)
	s, first := agentStream(t, ctx, leader.Conn(), "n1")
	require.NotNil(t, first.GetWelcome())
	_, err := leader.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{
		Name: "web", PathPrefix: "/", Template: &pb.InstanceTemplate{Command: "app"}, Max: 50, Desired: 1}})
	require.NoError(t, err)

	latest := make(chan []string, 100)
	go func() {
		for {
			m, err := s.Recv()
			if err != nil {
				return
			}
			if a := m.GetAssignments(); a != nil {
				var ids []string
				for _, as := range a.Instances {
					ids = append(ids, as.Instance)
				}
				latest <- ids
			}
		}
	}()
	waitAssigned := func(n int) error {
		// Within the heartbeat TTL: no node-down write comes to help.
		deadline := time.After(testTTL / 2)
		for {
			select {
			case ids := <-latest:
				if len(ids) == n {
					return nil
				}
			case <-deadline:
				return fmt.Errorf("no assignments of %d instances", n)
			}
		}
	}
	require.NoError(t, waitAssigned(1))

	restarts := uint32(0)
	for n := 2; n <= 12; n++ {
		_, err := leader.Pools().ScalePool(ctx, &pb.ScalePoolRequest{Pool: "web", Desired: uint32(n)})
		require.NoError(t, err)
		// Reports that each change web-1 keep the handler busy until
		// the placement is applied, and stop then.
		for {
			restarts++
			require.NoError(t, s.Send(report(&pb.InstanceStatus{Id: "web-1", Pool: "web", State: pb.InstanceState_INSTANCE_STATE_STARTING, Restarts: restarts})))
			r, err := leader.Pools().ListInstances(ctx, &pb.ListInstancesRequest{Pool: "web"})
			require.NoError(t, err)
			if len(r.Instances) == n {
				break
			}
		}
		require.NoError(t, waitAssigned(n), "round %d", n)
	}
}

// An agent that goes away mid-stream leaves nothing behind on the leader,
// however its cancellation meets the handler's reading: the handler ends,
// the node is no longer attached, and the server stops gracefully. (A
// handler that missed the cancellation kept the node attached and held a
// graceful stop forever.)
func TestAgents_cancelledStreamsEndTheirHandlers(t *testing.T) {
	c := startAgentCluster(t)
	leader := waitLeader(t, c)
	ctx := ctxT(t)
	nodes := pb.NewNodeServiceClient(leader.Conn())
	heartbeat := &pb.ConnectRequest{Message: &pb.ConnectRequest_Heartbeat{Heartbeat: &pb.Heartbeat{}}}
	for i := range 40 {
		sctx, cancel := context.WithCancel(ctx)
		s, first := agentStream(t, sctx, leader.Conn(), "gone")
		require.NotNil(t, first.GetWelcome(), "round %d: %v", i, first)
		// The handler is busy with earlier messages when the agent goes.
		for range 50 + i%7*40 {
			if s.Send(heartbeat) != nil {
				break
			}
		}
		cancel()
		require.NoError(t, testcluster.Eventually(ctx, 5*time.Second, func(ctx context.Context) error {
			n, err := nodes.GetNode(ctx, &pb.GetNodeRequest{Node: "gone"})
			if err == nil && n.Node.Controller != "" {
				err = fmt.Errorf("round %d: still attached to %s", i, n.Node.Controller)
			}
			return err
		}))
	}
	done := make(chan struct{})
	go func() { leader.Stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("the leader did not stop")
	}
}

// ListInstances pages through a pool's instances in order, on a follower
// as on the leader, and by node from the index by node.
func TestPools_listInstancesPageByPage(t *testing.T) {
	c := startAgentCluster(t)
	leader := waitLeader(t, c)
	ctx := ctxT(t)
	for _, n := range []string{"n1", "n2"} {
		_, first := agentStream(t, ctx, leader.Conn(), n)
		require.NotNil(t, first.GetWelcome())
	}
	for _, p := range []string{"api", "web"} {
		_, err := leader.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{
			Name: p, PathPrefix: "/" + p, Template: &pb.InstanceTemplate{Command: "app"}, Max: 50, Desired: 6}})
		require.NoError(t, err)
	}
	var all []*pb.Instance
	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
		r, err := leader.Pools().ListInstances(ctx, &pb.ListInstancesRequest{})
		if err != nil {
			return err
		}
		if all = r.Instances; len(all) != 12 {
			return fmt.Errorf("%d instances placed", len(all))
		}
		return nil
	}))
	ids := func(ins []*pb.Instance) []string {
		var out []string
		for _, in := range ins {
			out = append(out, in.Id)
		}
		return out
	}
	require.Equal(t, []string{"api-1", "api-2", "api-3", "api-4", "api-5", "api-6", "web-1", "web-2", "web-3", "web-4", "web-5", "web-6"}, ids(all))

	pages := func(n *testcluster.Node, req *pb.ListInstancesRequest) (got []string, count int) {
		for {
			r, err := n.Pools().ListInstances(ctx, req)
			require.NoError(t, err)
			require.LessOrEqual(t, len(r.Instances), int(req.PageSize))
			got = append(got, ids(r.Instances)...)
			count++
			if req.PageToken = r.NextPageToken; req.PageToken == "" {
				return got, count
			}
		}
	}
	got, count := pages(leader, &pb.ListInstancesRequest{PageSize: 5})
	require.Equal(t, ids(all), got)
	require.Equal(t, 3, count)
	for _, n := range c.Nodes() {
		got, _ := pages(n, &pb.ListInstancesRequest{PageSize: 4, Consistent: true})
		require.Equal(t, ids(all), got, "on %s", n.ID)
	}
	got, _ = pages(leader, &pb.ListInstancesRequest{PageSize: 2, Pool: "web"})
	require.Equal(t, ids(all[6:]), got)

	var onN1 []string
	for _, in := range all {
		if in.Node == "n1" {
			onN1 = append(onN1, in.Id)
		}
	}
	require.NotEmpty(t, onN1)
	got, _ = pages(leader, &pb.ListInstancesRequest{PageSize: 1, Node: "n1"})
	require.Equal(t, onN1, got)
	r, err := leader.Pools().ListInstances(ctx, &pb.ListInstancesRequest{Node: "n1"})
	require.NoError(t, err)
	require.Equal(t, onN1, ids(r.Instances), "without a page size, all of them")

	// A page starts after the token's instance whether or not it still
	// exists: the token of a removed api-99 goes on with web.
	r, err = leader.Pools().ListInstances(ctx, &pb.ListInstancesRequest{PageSize: 3,
		PageToken: base64.RawURLEncoding.EncodeToString([]byte("api-99"))})
	require.NoError(t, err)
	require.Equal(t, []string{"web-1", "web-2", "web-3"}, ids(r.Instances))

	for name, req := range map[string]*pb.ListInstancesRequest{
		"page_size":  {PageSize: -1},
		"page_token": {PageSize: 2, PageToken: "!!"},
	} {
		_, err := leader.Pools().ListInstances(ctx, req)
		require.Equal(t, codes.InvalidArgument, status.Code(err), name)
		require.Contains(t, err.Error(), name)
	}
}

// GetUnplaced, from any node, says which pools the leader's scheduler
// found no node for, how many instances and why, until it places them.
func TestPools_getUnplacedSaysWhyFromAnyNode(t *testing.T) {
	c := startAgentCluster(t)
	leader := waitLeader(t, c)
	f := follower(c, leader)
	ctx := ctxT(t)
	began := time.Now()
	send := liveAgent(t, ctx, leader.Conn(), helloUnder("n1", diskPressure(began.Add(-time.Minute))))
	_, err := leader.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{
		Name: "web", PathPrefix: "/", Template: &pb.InstanceTemplate{Command: "app"}, Max: 50, Desired: 3}})
	require.NoError(t, err)

	var got *pb.GetUnplacedResponse
	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
		got, err = f.Pools().GetUnplaced(ctx, &pb.GetUnplacedRequest{})
		if err != nil {
			return err
		}
		if len(got.Pools) != 1 {
			return fmt.Errorf("unplaced: %v", got.Pools)
		}
		return nil
	}))
	u := got.Pools[0]
	require.Equal(t, "web", u.Pool)
	require.EqualValues(t, 3, u.Instances)
	require.Equal(t, "nodes 1 under a condition: n1 (disk_pressure)", u.Why)
	require.WithinRange(t, u.Since.AsTime(), began.Add(-time.Second), time.Now())
	one, err := leader.Pools().GetUnplaced(ctx, &pb.GetUnplacedRequest{Pool: "web"})
	require.NoError(t, err)
	require.Len(t, one.Pools, 1)
	require.True(t, one.Pools[0].Since.AsTime().Equal(u.Since.AsTime()), "the pool is short since its first round")

	for name, tc := range map[string]struct {
		pool  string
		code  codes.Code
		field string
	}{
		"unknown pool":  {"nope", codes.NotFound, "nope"},
		"bad pool name": {"No_Pool", codes.InvalidArgument, "pool"},
	} {
		for _, n := range []*testcluster.Node{leader, f} {
			_, err := n.Pools().GetUnplaced(ctx, &pb.GetUnplacedRequest{Pool: tc.pool})
			require.Equal(t, tc.code, status.Code(err), "%s: %v", name, err)
			require.Contains(t, err.Error(), tc.field, name)
		}
	}

	send(conditions()) // the pressure ends: the instances are placed
	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
		got, err := f.Pools().GetUnplaced(ctx, &pb.GetUnplacedRequest{})
		if err != nil {
			return err
		}
		if len(got.Pools) != 0 {
			return fmt.Errorf("still unplaced: %v", got.Pools)
		}
		return nil
	}))
	r, err := leader.Pools().ListInstances(ctx, &pb.ListInstancesRequest{Pool: "web", Consistent: true})
	require.NoError(t, err)
	require.Len(t, r.Instances, 3)
}
