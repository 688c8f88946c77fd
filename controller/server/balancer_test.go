package server_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

func TestBalancer_watchThroughFollowerGetsEveryCommittedTable(t *testing.T) {
	c := startCluster(t, 3)
	leader := waitLeader(t, c)
	f := follower(c, leader)
	ctx := ctxT(t)

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := pb.NewBalancerServiceClient(f.Conn()).WatchTable(wctx, &pb.WatchTableRequest{Balancer: "edge-1"})
	require.NoError(t, err)
	first, err := w.Recv()
	require.NoError(t, err)
	require.Empty(t, first.Table.Pools, "the full (empty) table at once")
	require.Equal(t, f.ID, first.Controller)

	var last uint64
	for i := range 3 {
		resp, err := leader.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: pool(fmt.Sprintf("p%d", i), fmt.Sprintf("10.0.0.%d:80", i+1))})
		require.NoError(t, err)
		last = resp.Index
	}
	// Each newer version arrives, in order, ending with all three pools.
	prev := first.Table.Version.GetIndex()
	for {
		got, err := w.Recv()
		require.NoError(t, err)
		require.Greater(t, got.Table.Version.Index, prev, "versions only grow")
		prev = got.Table.Version.Index
		if got.Table.Version.Index == last {
			require.Len(t, got.Table.Pools, 3)
			require.Equal(t, "10.0.0.3:80", got.Table.Pools[2].Backends[0].Address)
			require.EqualValues(t, 100, got.Table.Pools[2].Backends[0].Weight)
			require.NotZero(t, got.Table.Version.Term)
			break
		}
	}
	// A watcher that has the current version gets nothing until a change.
	w2, err := pb.NewBalancerServiceClient(leader.Conn()).WatchTable(wctx, &pb.WatchTableRequest{Balancer: "edge-2", Have: &pb.TableVersion{Index: last}})
	require.NoError(t, err)
	_, err = leader.Pools().DeletePool(ctx, &pb.DeletePoolRequest{Pool: "p0"})
	require.NoError(t, err)
	got, err := w2.Recv()
	require.NoError(t, err)
	require.Len(t, got.Table.Pools, 2)
	require.Greater(t, got.Table.Version.Index, last)

	_, err = pb.NewBalancerServiceClient(f.Conn()).AckTable(ctx, &pb.AckTableRequest{Balancer: "edge-1", Version: got.Table.Version})
	require.NoError(t, err)
	_, err = pb.NewBalancerServiceClient(f.Conn()).AckTable(ctx, &pb.AckTableRequest{Balancer: "Edge 1", Version: got.Table.Version})
	require.Equal(t, codes.InvalidArgument, status.Code(err))
	require.Contains(t, err.Error(), "balancer")
	_, err = pb.NewBalancerServiceClient(f.Conn()).AckTable(ctx, &pb.AckTableRequest{Balancer: "edge-1"})
	require.Equal(t, codes.InvalidArgument, status.Code(err))
	require.Contains(t, err.Error(), "version")
	bad, err := pb.NewBalancerServiceClient(f.Conn()).WatchTable(ctx, &pb.WatchTableRequest{})
	require.NoError(t, err)
	_, err = bad.Recv()
	require.Equal(t, codes.InvalidArgument, status.Code(err))
}
