package agents

import (
	"context"
	"log/slog"
	"time"

	"github.com/hostscale/hostscale/internal/logging"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// Liveness is the leader loop that marks a node down when nothing was
// heard from it for TTL. Its clocks start when the loop starts, that is
// when this node became leader: a node is never declared down because the
// old leader heard from it and this one has not had the time to.
type Liveness struct {
	Hub *Hub
	TTL time.Duration
	// Tick is how often nodes are checked (default TTL/40, at least 50ms).
	Tick time.Duration
	// Nodes lists the nodes and their status from the replicated state.
	Nodes func() map[string]pb.NodeStatus
	// SetStatus writes a status change through Raft.
	SetStatus func(ctx context.Context, node string, status pb.NodeStatus) error
	Logger    *slog.Logger
	Now       func() time.Time
}

func (l *Liveness) Name() string { return "liveness" }

// Run checks nodes until ctx is cancelled (leadership lost), then forgets
// the live data it was based on.
func (l *Liveness) Run(ctx context.Context) error {
	defer l.Hub.Reset()
	now := l.Now
	if now == nil {
		now = time.Now
	}
	tick := l.Tick
	if tick <= 0 {
		tick = max(l.TTL/40, 50*time.Millisecond)
	}
	logger := logging.OrDiscard(l.Logger)
	start := now()
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		for name, st := range l.Nodes() {
			if st == pb.NodeStatus_NODE_STATUS_DOWN {
				continue
			}
			seen := l.Hub.LastSeen(name)
			if seen.Before(start) {
				seen = start
			}
			if silent := now().Sub(seen); silent > l.TTL {
				if err := l.SetStatus(ctx, name, pb.NodeStatus_NODE_STATUS_DOWN); err != nil {
					if ctx.Err() != nil {
						return nil
					}
					logger.Warn("mark node down", "node", name, "err", err)
					continue
				}
				logger.Info("node down", "node", name, "silent", silent.Round(time.Millisecond), "ttl", l.TTL)
			}
		}
	}
}
