package endpoint

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

func TestTable_poolsThatScaleToZeroAreHeldWhenEmpty(t *testing.T) {
	policy := func(zero, activation time.Duration) *pb.ScalingPolicy {
		p := &pb.ScalingPolicy{Metric: pb.ScalingMetric_SCALING_METRIC_REQUESTS_PER_INSTANCE, Target: 20}
		if zero > 0 {
			p.ScaleToZeroAfter = durationpb.New(zero)
		}
		if activation > 0 {
			p.ActivationTimeout = durationpb.New(activation)
		}
		return p
	}
	st := &pb.State{PoolsIndex: 7, PoolsTerm: 2, Pools: map[string]*pb.Pool{
		"a-default": {Name: "a-default", Scaling: policy(time.Minute, 0)},
		"b-set":     {Name: "b-set", Scaling: policy(time.Minute, 5*time.Second)},
		"c-never":   {Name: "c-never", Scaling: policy(0, 0)},
		"d-static":  {Name: "d-static", Backends: []*pb.Backend{{Address: "127.0.0.1:9001"}}},
	}}
	tb := Table(st)
	require.Len(t, tb.Pools, 4)
	hold := map[string]time.Duration{}
	for _, p := range tb.Pools {
		if p.HoldWhenEmpty != nil {
			hold[p.Name] = p.HoldWhenEmpty.AsDuration()
		}
	}
	require.Equal(t, map[string]time.Duration{"a-default": 30 * time.Second, "b-set": 5 * time.Second}, hold)
}

func TestTable_httpsRedirectReachesTheTable(t *testing.T) {
	st := &pb.State{Pools: map[string]*pb.Pool{
		"a": {Name: "a", HttpsRedirect: true},
		"b": {Name: "b"},
	}}
	tb := Table(st)
	require.Len(t, tb.Pools, 2)
	require.True(t, tb.Pools[0].HttpsRedirect)
	require.False(t, tb.Pools[1].HttpsRedirect)
}

// A node whose Raft log writes have been stuck or failing past the limit
// ends its watches, leader or not: it can store no entry, so its table
// cannot change.
func TestStaleness_logTroubleEndsWatches(t *testing.T) {
	trouble := func(d time.Duration) func() (time.Duration, string) {
		return func() (time.Duration, string) {
			return d, "writes to the Raft log store have failed for 6s: read-only file system"
		}
	}
	c := &Core{ID: "c2", LogTrouble: trouble(6 * time.Second)}
	err := c.staleness(5 * time.Second)
	require.Equal(t, codes.Unavailable, status.Code(err))
	require.ErrorContains(t, err, "controller c2: writes to the Raft log store have failed for 6s: read-only file system")
}

// TestTableAcks_forgetALeavingBalancer: AllAcked waits for a balancer heard
// from within the TTL until it is forgotten, and waiters learn of it.
func TestTableAcks_forgetALeavingBalancer(t *testing.T) {
	a := NewTableAcks()
	a.Record("lb1", &pb.TableVersion{Index: 10}, "")
	a.Record("lb2", &pb.TableVersion{Index: 5}, "")
	now := time.Now()
	require.False(t, a.AllAcked(10, now, time.Minute), "lb2 has not acknowledged index 10")
	changed := a.Changed()
	a.Forget("lb2")
	select {
	case <-changed:
	default:
		t.Fatal("Changed not signalled by Forget")
	}
	require.True(t, a.AllAcked(10, now, time.Minute))
	_, ok := a.Get("lb2")
	require.False(t, ok)
	changed = a.Changed()
	a.Forget("lb2")
	select {
	case <-changed:
		t.Fatal("forgetting an unknown balancer signalled Changed")
	default:
	}
}
