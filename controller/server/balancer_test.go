package server_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

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

// TestBalancer_listBalancers: the leader lists the balancers it heard
// from, through any controller: the version each acknowledged, in sync
// or not, with a refusal's reason, and its last stats report; a balancer
// that leaves is no longer listed; pages follow the names.
func TestBalancer_listBalancers(t *testing.T) {
	c := startCluster(t, 3)
	leader := waitLeader(t, c)
	f := follower(c, leader)
	ctx := ctxT(t)
	created, err := leader.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: pool("web", "10.0.0.1:80")})
	require.NoError(t, err)
	lbs := pb.NewBalancerServiceClient(f.Conn())
	now := &pb.TableVersion{Term: 0, Index: created.Index}
	list := func() *pb.ListBalancersResponse {
		resp, err := lbs.ListBalancers(ctx, &pb.ListBalancersRequest{})
		require.NoError(t, err)
		return resp
	}
	require.Empty(t, list().Balancers)
	current := list().TableVersion
	require.Equal(t, created.Index, current.Index)
	now.Term = current.Term

	_, err = lbs.AckTable(ctx, &pb.AckTableRequest{Balancer: "lb-a", Version: now})
	require.NoError(t, err)
	_, err = lbs.AckTable(ctx, &pb.AckTableRequest{Balancer: "lb-b", Version: &pb.TableVersion{Term: now.Term, Index: now.Index - 1}, Error: "pools[0]: bad"})
	require.NoError(t, err)
	_, err = lbs.ReportStats(ctx, &pb.ReportStatsRequest{Balancer: "lb-c", Started: timestamppb.Now()})
	require.NoError(t, err)
	_, err = lbs.ReportStats(ctx, &pb.ReportStatsRequest{Balancer: "lb-a"})
	require.NoError(t, err)

	resp := list()
	require.Equal(t, leader.ID, resp.Leader)
	require.Len(t, resp.Balancers, 3)
	a, b, cc := resp.Balancers[0], resp.Balancers[1], resp.Balancers[2]
	require.Equal(t, "lb-a", a.Name)
	require.True(t, a.InSync)
	require.NotNil(t, a.AckedAt)
	require.NotNil(t, a.ReportedAt)
	require.Nil(t, a.Started, "an older balancer sends no start")
	require.Equal(t, "lb-b", b.Name)
	require.False(t, b.InSync)
	require.Equal(t, "pools[0]: bad", b.AckError)
	require.Nil(t, b.ReportedAt)
	require.Equal(t, "lb-c", cc.Name)
	require.Nil(t, cc.AckedVersion)
	require.False(t, cc.InSync)
	require.NotNil(t, cc.Started)

	// The leader's /metrics says which balancers applied the table in
	// force; one that only reports has no say.
	m := scrape(t, leader.HTTPAddr)
	require.Contains(t, m, `hostscale_controller_balancer_in_sync{balancer="lb-a"} 1`)
	require.Contains(t, m, `hostscale_controller_balancer_in_sync{balancer="lb-b"} 0`)
	require.NotContains(t, m, `hostscale_controller_balancer_in_sync{balancer="lb-c"}`)
	// And which still report.
	require.Contains(t, m, `hostscale_controller_balancer_up{balancer="lb-a"} 1`)
	require.Contains(t, m, `hostscale_controller_balancer_up{balancer="lb-c"} 1`)
	require.NotContains(t, m, `hostscale_controller_balancer_up{balancer="lb-b"}`, "lb-b sends no reports")
	require.False(t, a.Lost)
	require.NotContains(t, scrape(t, f.HTTPAddr), "hostscale_controller_balancer_in_sync", "a follower exports none")

	page, err := lbs.ListBalancers(ctx, &pb.ListBalancersRequest{PageSize: 2})
	require.NoError(t, err)
	require.Len(t, page.Balancers, 2)
	page, err = lbs.ListBalancers(ctx, &pb.ListBalancersRequest{PageSize: 2, PageToken: page.NextPageToken})
	require.NoError(t, err)
	require.Len(t, page.Balancers, 1)
	require.Equal(t, "lb-c", page.Balancers[0].Name)
	require.Empty(t, page.NextPageToken)
	_, err = lbs.ListBalancers(ctx, &pb.ListBalancersRequest{PageToken: "garbage!"})
	require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)

	_, err = lbs.ReportStats(ctx, &pb.ReportStatsRequest{Balancer: "lb-a", Leaving: true})
	require.NoError(t, err)
	var names []string
	for _, b := range list().Balancers {
		names = append(names, b.Name)
	}
	require.Equal(t, []string{"lb-b", "lb-c"}, names, "lb-a left")
}
