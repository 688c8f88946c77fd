package agents

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

func TestLiveness_marksDownOnlyNodesSilentPastTheTTL(t *testing.T) {
	hub := NewHub(10)
	var (
		mu     sync.Mutex
		now    = time.Unix(1000, 0)
		down   = map[string]int{}
		rounds int // the loop's checks so far
	)
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	advance := func(d time.Duration) {
		mu.Lock()
		now = now.Add(d)
		mu.Unlock()
	}
	l := &Liveness{
		Hub: hub, TTL: 10 * time.Second, Tick: time.Millisecond, Now: clock,
		Nodes: func() map[string]pb.NodeStatus {
			mu.Lock()
			rounds++
			mu.Unlock()
			return map[string]pb.NodeStatus{
				"talking": pb.NodeStatus_NODE_STATUS_UP,
				"silent":  pb.NodeStatus_NODE_STATUS_UP,
				"never":   pb.NodeStatus_NODE_STATUS_UP,
				"gone":    pb.NodeStatus_NODE_STATUS_DOWN,
			}
		},
		SetStatus: func(_ context.Context, node string, st pb.NodeStatus) error {
			require.Equal(t, pb.NodeStatus_NODE_STATUS_DOWN, st)
			mu.Lock()
			down[node]++
			mu.Unlock()
			return nil
		},
	}
	marked := func() map[string]int {
		mu.Lock()
		defer mu.Unlock()
		out := map[string]int{}
		for k, v := range down {
			out[k] = v
		}
		return out
	}
	require.True(t, hub.LastSeen("silent").IsZero(), "never heard from")
	hub.Seen("silent", clock().Add(-time.Hour)) // heard by an earlier leader's time
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		require.NoError(t, l.Run(ctx))
	}()
	defer func() { cancel(); <-done }()
	// checked waits for a few more of the loop's rounds.
	checked := func() {
		mu.Lock()
		want := rounds + 3
		mu.Unlock()
		require.Eventually(t, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return rounds >= want
		}, 5*time.Second, time.Millisecond)
	}
	checked() // the loop has started, and taken the time it started

	// Within the TTL of the loop's start nothing is down, whatever was
	// seen before it.
	advance(9 * time.Second)
	hub.Seen("talking", clock())
	require.Equal(t, clock(), hub.LastSeen("talking"))
	checked()
	require.Empty(t, marked())

	advance(2 * time.Second)
	require.Eventually(t, func() bool {
		m := marked()
		return m["silent"] > 0 && m["never"] > 0
	}, 5*time.Second, time.Millisecond)
	m := marked()
	require.Zero(t, m["talking"], "heard from 2s ago")
	require.Zero(t, m["gone"], "already down")
}
