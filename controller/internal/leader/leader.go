// Package leader runs the controller's leader-only loops. A Manager watches
// Raft's leadership notifications; on gaining leadership it first runs a
// Barrier, so that the local state holds every committed command, then
// marks itself ready (consistent reads may be served) and starts the loops;
// on losing leadership it cancels them and waits for them to return.
package leader

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/hostscale/hostscale/internal/logging"
)

// Loop is one leader-only control loop. Run returns when ctx is cancelled;
// an error return restarts it after a pause while leadership lasts.
type Loop interface {
	Name() string
	Run(ctx context.Context) error
}

// LoopFunc adapts a function to Loop.
type LoopFunc struct {
	N string
	F func(ctx context.Context) error
}

func (l LoopFunc) Name() string                  { return l.N }
func (l LoopFunc) Run(ctx context.Context) error { return l.F(ctx) }

// Manager starts and stops the loops with leadership.
type Manager struct {
	raft   *raft.Raft
	notify <-chan bool
	loops  []Loop
	logger *slog.Logger
	ready  atomic.Bool
	term   atomic.Pointer[termContext]
	// RestartDelay is the pause before a failed loop runs again.
	RestartDelay time.Duration
}

// NewManager returns a manager fed by notify (raft's Config.NotifyCh).
func NewManager(r *raft.Raft, notify <-chan bool, logger *slog.Logger, loops ...Loop) *Manager {
	return &Manager{raft: r, notify: notify, loops: loops, logger: logging.OrDiscard(logger), RestartDelay: time.Second}
}

// Ready reports whether this node leads and has caught up.
func (m *Manager) Ready() bool { return m.ready.Load() && m.raft.State() == raft.Leader }

type termContext struct {
	ctx  context.Context
	term uint64
}

var doneCtx = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// Context returns a context that lives as long as this node's current
// leadership, and its term; when the node is not a ready leader it returns
// a cancelled context. Work done for the leader (an agent's stream) ends
// with it.
func (m *Manager) Context() (context.Context, uint64) {
	if tc := m.term.Load(); tc != nil && m.Ready() {
		return tc.ctx, tc.term
	}
	return doneCtx, 0
}

// Run follows leadership until ctx is cancelled; it returns after every
// loop has stopped.
func (m *Manager) Run(ctx context.Context) error {
	var stopLoops func()
	stop := func() {
		if stopLoops != nil {
			stopLoops()
			stopLoops = nil
			m.logger.Info("leader loops stopped")
		}
		m.ready.Store(false)
		m.term.Store(nil)
	}
	defer stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case isLeader := <-m.notify:
			stop()
			if isLeader {
				stopLoops = m.start(ctx)
			}
		}
	}
}

// start runs lead in the background and returns the function that stops it
// and waits for it.
func (m *Manager) start(ctx context.Context) func() {
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.lead(lctx)
	}()
	return func() {
		cancel()
		<-done
	}
}

func (m *Manager) lead(ctx context.Context) {
	start := time.Now()
	for {
		err := m.raft.Barrier(0).Error()
		if err == nil {
			break
		}
		m.logger.Warn("leader barrier failed", "err", err)
		if !sleep(ctx, 100*time.Millisecond) {
			return
		}
	}
	m.term.Store(&termContext{ctx: ctx, term: m.raft.CurrentTerm()})
	m.ready.Store(true)
	m.logger.Info("leadership established", "term", m.raft.CurrentTerm(), "index", m.raft.AppliedIndex(), "barrier", time.Since(start))
	var wg sync.WaitGroup
	for _, l := range m.loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				err := l.Run(ctx)
				if ctx.Err() != nil {
					return
				}
				m.logger.Error("leader loop failed", "loop", l.Name(), "err", err)
				sleep(ctx, m.RestartDelay)
			}
		}()
	}
	wg.Wait()
}

// sleep waits d or until ctx is done; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
