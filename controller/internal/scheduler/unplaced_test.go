package scheduler

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestUnplaced_keepsSinceWhileShortAndForgetsPlacedPools(t *testing.T) {
	var u Unplaced
	require.Empty(t, u.Pools(""))
	short := func(n map[string]int, why map[string]string) *Plan { return &Plan{Unplaced: n, UnplacedWhy: why} }

	u.set(short(map[string]int{"web": 2, "api": 1}, map[string]string{"web": "no node", "api": "nodes 1 down or draining"}), t0)
	got := u.Pools("")
	require.Len(t, got, 2)
	require.Equal(t, "api", got[0].Pool, "by name")
	require.Equal(t, "nodes 1 down or draining", got[0].Why)
	require.True(t, got[1].Since.AsTime().Equal(t0))

	// web still short (fewer, another reason), api placed, db new.
	later := t0.Add(time.Minute)
	u.set(short(map[string]int{"web": 1, "db": 3}, map[string]string{"web": "nodes 2 without room for the reservation", "db": "no node"}), later)
	got = u.Pools("")
	require.Len(t, got, 2)
	require.Equal(t, "db", got[0].Pool)
	require.True(t, got[0].Since.AsTime().Equal(later))
	require.EqualValues(t, 1, got[1].Instances)
	require.Equal(t, "nodes 2 without room for the reservation", got[1].Why)
	require.True(t, got[1].Since.AsTime().Equal(t0), "web has been short since the first round")

	one := u.Pools("web")
	require.Len(t, one, 1)
	one[0].Why = "changed by the caller"
	require.NotEqual(t, "changed by the caller", u.Pools("web")[0].Why, "Pools returns copies")
	require.Empty(t, u.Pools("api"))

	u.clear()
	require.Empty(t, u.Pools(""))
}
