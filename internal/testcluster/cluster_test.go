package testcluster

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if netHelper() {
		return
	}
	goleak.VerifyTestMain(m)
}

// fakeLauncher records the specs it was given and runs nothing: each
// process just holds its listeners until stopped.
type fakeLauncher struct {
	mu    sync.Mutex
	specs []Spec
}

type fakeProcess struct {
	spec Spec
	done chan struct{}
	once sync.Once
}

func (p *fakeProcess) stop() error {
	p.once.Do(func() {
		for _, l := range []net.Listener{p.spec.GRPC, p.spec.Raft, p.spec.HTTP} {
			l.Close()
		}
		close(p.done)
	})
	return nil
}
func (p *fakeProcess) Stop() error           { return p.stop() }
func (p *fakeProcess) Kill() error           { return p.stop() }
func (p *fakeProcess) Done() <-chan struct{} { return p.done }

func (f *fakeLauncher) Launch(s Spec) (Process, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.specs = append(f.specs, s)
	return &fakeProcess{spec: s, done: make(chan struct{})}, nil
}

func TestStart_givesEveryNodeItsOwnPortsAndTheSamePeers(t *testing.T) {
	l := &fakeLauncher{}
	c := Start(t, Options{Nodes: 3, Launcher: l})
	require.Len(t, l.specs, 3)
	seen := map[string]bool{}
	for i, s := range l.specs {
		require.Equal(t, l.specs[0].Peers, s.Peers)
		require.Contains(t, s.Peers, s.ID+"="+s.Raft.Addr().String())
		for _, a := range []string{s.GRPC.Addr().String(), s.Raft.Addr().String(), s.HTTP.Addr().String()} {
			require.True(t, strings.HasPrefix(a, "127.0.0.1:"), a)
			require.False(t, seen[a], "port reused: %s", a)
			seen[a] = true
		}
		require.Equal(t, c.Nodes()[i].DataDir, s.DataDir)
	}
	require.Len(t, c.Running(), 3)

	n := c.Nodes()[1]
	addr := n.RaftAddr
	n.Kill()
	require.False(t, n.Running())
	require.Len(t, c.Running(), 2)
	n.Restart()
	require.True(t, n.Running())
	require.Equal(t, addr, l.specs[3].Raft.Addr().String(), "a restarted node keeps its addresses")
	require.Empty(t, l.specs[3].Peers, "a restart does not bootstrap again")
}

func TestEventually_returnsTheLastErrorAtTheDeadline(t *testing.T) {
	calls := 0
	err := Eventually(context.Background(), 100*time.Millisecond, func(context.Context) error {
		calls++
		return errors.New("not yet")
	})
	require.ErrorContains(t, err, "not yet")
	require.Greater(t, calls, 1)
	calls = 0
	require.NoError(t, Eventually(context.Background(), time.Second, func(context.Context) error {
		calls++
		if calls < 3 {
			return errors.New("not yet")
		}
		return nil
	}))
	require.Equal(t, 3, calls)
}

func TestBinaryLauncher_missingBinaryIsAClearError(t *testing.T) {
	_, err := BinaryLauncher{Path: "/nonexistent/hostscale-controller"}.Launch(Spec{})
	require.ErrorContains(t, err, "make build")
}
