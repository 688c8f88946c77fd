package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hostscale/hostscale/internal/testcluster"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// A host whose data directory's filesystem fills up takes no new instance
// and every controller shows why, from the agent's first Hello on; its
// instances stay. Once the space is back for the transition period, it
// takes instances again; when it fills up while running them, the
// condition reaches the leader on the open stream.
func TestInstances_diskPressureKeepsNewInstancesOff(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	disk := testcluster.NewSmallDisk(t, 64<<20)
	require.NoError(t, disk.Fill(16<<20)) // 25 % free, under the 40 % host-a keeps
	f := newFleetArgs(t, ctx, 2, func(i int) []string {
		if i == 0 {
			return []string{"-data-dir", disk.Dir, "-disk-pressure-free", "40", "-pressure-transition", "1s"}
		}
		return nil
	})

	conditions := func(node string) ([]*pb.NodeCondition, error) {
		// A follower: it asks the leader, which holds them.
		var n *testcluster.Node
		for _, c := range f.cl.Running() {
			if c != f.leader() {
				n = c
				break
			}
		}
		r, err := n.Nodes().GetNode(ctx, &pb.GetNodeRequest{Node: node})
		if err != nil {
			return nil, err
		}
		return r.Node.Conditions, nil
	}
	waitConditions := func(node string, want ...pb.NodeConditionType) []*pb.NodeCondition {
		t.Helper()
		var got []*pb.NodeCondition
		require.NoError(t, testcluster.Eventually(ctx, 15*time.Second, func(ctx context.Context) error {
			var err error
			if got, err = conditions(node); err != nil {
				return err
			}
			var types []pb.NodeConditionType
			for _, c := range got {
				types = append(types, c.Type)
			}
			if fmt.Sprint(types) != fmt.Sprint(want) {
				return fmt.Errorf("%s is under %v, want %v", node, types, want)
			}
			return nil
		}))
		return got
	}

	got := waitConditions("host-a", pb.NodeConditionType_NODE_CONDITION_TYPE_DISK_PRESSURE)
	require.Contains(t, got[0].Message, "free on the filesystem of "+disk.Dir)
	waitConditions("host-b")

	f.createPool("web", 4, nil)
	f.settledOn("web", 4, map[string]int{"host-b": 4}, 40*time.Second)

	require.NoError(t, disk.Free())
	waitConditions("host-a")
	_, err := f.pools().ScalePool(ctx, &pb.ScalePoolRequest{Pool: "web", Desired: 8})
	require.NoError(t, err)
	f.settledOn("web", 8, map[string]int{"host-a": 4, "host-b": 4}, 40*time.Second)

	// The disk fills up under running instances.
	require.NoError(t, disk.Fill(16<<20))
	got = waitConditions("host-a", pb.NodeConditionType_NODE_CONDITION_TYPE_DISK_PRESSURE)
	_, err = f.pools().ScalePool(ctx, &pb.ScalePoolRequest{Pool: "web", Desired: 10})
	require.NoError(t, err)
	f.settledOn("web", 10, map[string]int{"host-a": 4, "host-b": 6}, 40*time.Second)
	require.Contains(t, f.agents["host-a"].log(), "the host is under a condition")
}
