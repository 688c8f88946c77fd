// Package servertest runs hostscale controllers in-process for tests, as a
// testcluster.Launcher.
package servertest

import (
	"context"
	"errors"
	"log/slog"

	"github.com/hostscale/hostscale/controller/internal/raftnode"
	"github.com/hostscale/hostscale/controller/server"
	"github.com/hostscale/hostscale/internal/testcluster"
)

// Launcher starts controllers as server.Server values in this process.
// Kill and Stop both cancel the server's context: an in-process node
// cannot die abruptly; use testcluster.BinaryLauncher for that.
type Launcher struct {
	// Configure, when set, adjusts each node's config before it starts.
	Configure func(*server.Config)
}

var _ testcluster.Launcher = Launcher{}

// Launch starts one controller on the spec's listeners.
func (l Launcher) Launch(spec testcluster.Spec) (testcluster.Process, error) {
	if spec.Host != nil {
		return nil, errors.New("servertest: a controller on a testcluster.Net host runs in the host's namespace: use testcluster.BinaryLauncher")
	}
	cfg := server.DefaultConfig()
	cfg.ID, cfg.DataDir = spec.ID, spec.DataDir
	cfg.GRPCListener, cfg.RaftListener, cfg.HTTPListener = spec.GRPC, spec.Raft, spec.HTTP
	peers, err := raftnode.ParsePeers(spec.Peers)
	if err != nil {
		return nil, err
	}
	cfg.Peers = peers
	if spec.HeartbeatTimeout > 0 {
		cfg.Raft.HeartbeatTimeout = spec.HeartbeatTimeout
		cfg.Raft.LeaderLeaseTimeout = spec.HeartbeatTimeout / 2
	}
	if spec.ElectionTimeout > 0 {
		cfg.Raft.ElectionTimeout = spec.ElectionTimeout
	}
	if spec.Log != nil {
		cfg.Logger = slog.New(slog.NewTextHandler(spec.Log, &slog.HandlerOptions{Level: slog.LevelDebug})).With("member", spec.ID)
	}
	if l.Configure != nil {
		l.Configure(&cfg)
	}
	s, err := server.New(cfg)
	if err != nil {
		for _, lis := range []interface{ Close() error }{spec.GRPC, spec.Raft, spec.HTTP} {
			lis.Close()
		}
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &process{Server: s, cancel: cancel, done: make(chan struct{})}
	go func() {
		p.err = s.Run(ctx)
		close(p.done)
	}()
	return p, nil
}

type process struct {
	*server.Server
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

func (p *process) Done() <-chan struct{} { return p.done }

func (p *process) Stop() error {
	p.cancel()
	<-p.done
	return p.err
}

func (p *process) Kill() error { return p.Stop() }
