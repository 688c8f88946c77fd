package watch_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hostscale/hostscale/balancer"
	"github.com/hostscale/hostscale/balancer/watch"
	"github.com/hostscale/hostscale/controller/server"
	"github.com/hostscale/hostscale/controller/server/servertest"
	"github.com/hostscale/hostscale/internal/testcluster"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// launcher starts in-process controllers and keeps the latest process of
// each node, to read what balancers acknowledged to it. The controllers use
// the boltdb log store: raft-wal v0.4.0 does not close its meta database on
// Close, so an in-process restart on the same data directory would wait
// forever for its file lock.
type launcher struct {
	servertest.Launcher
	mu    sync.Mutex
	procs map[string]testcluster.Process
}

func (l *launcher) Launch(spec testcluster.Spec) (testcluster.Process, error) {
	p, err := l.Launcher.Launch(spec)
	if err == nil {
		l.mu.Lock()
		if l.procs == nil {
			l.procs = map[string]testcluster.Process{}
		}
		l.procs[spec.ID] = p
		l.mu.Unlock()
	}
	return p, err
}

// tableAck returns the version balancer last acknowledged to node.
func (l *launcher) tableAck(node, balancer string) *pb.TableVersion {
	l.mu.Lock()
	p := l.procs[node]
	l.mu.Unlock()
	v, _ := p.(interface {
		TableAck(string) (*pb.TableVersion, bool)
	}).TableAck(balancer)
	return v
}

func startCluster(t *testing.T) (*testcluster.Cluster, *launcher, *testcluster.Node) {
	t.Helper()
	l := &launcher{Launcher: servertest.Launcher{Configure: func(c *server.Config) { c.Raft.LogStore = "boltdb" }}}
	c := testcluster.Start(t, testcluster.Options{
		Nodes: 3, Launcher: l,
		HeartbeatTimeout: 500 * time.Millisecond, ElectionTimeout: 500 * time.Millisecond,
	})
	leader, took, err := c.WaitLeader(context.Background(), 10*time.Second)
	require.NoError(t, err)
	t.Logf("leader %s after %v", leader.ID, took)
	return c, l, leader
}

func logger() *slog.Logger {
	if os.Getenv("HOSTSCALE_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// startBackend serves body on a loopback port until the test ends.
func startBackend(t *testing.T, body string) string {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) }))
	t.Cleanup(s.Close)
	return s.Listener.Addr().String()
}

func newBalancer(t *testing.T, dataDir string) *balancer.Balancer {
	cfg := balancer.DefaultConfig()
	cfg.Logger, cfg.DataDir, cfg.SlowStart, cfg.ShutdownTimeout = logger(), dataDir, 0, 2*time.Second
	b, err := balancer.New(cfg)
	require.NoError(t, err)
	return b
}

// serve runs b on a loopback port; stop (also run at cleanup) returns once
// it has shut down.
func serve(t *testing.T, b *balancer.Balancer) (addr string, stop func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	return ln.Addr().String(), goRun(t, "balancer", func(ctx context.Context) error { return b.Serve(ctx, ln) })
}

func startWatcher(t *testing.T, b *balancer.Balancer, controllers ...string) (*watch.Watcher, func()) {
	t.Helper()
	cfg := watch.DefaultConfig()
	cfg.Controllers, cfg.Name, cfg.Balancer, cfg.Logger = controllers, "edge-1", b, logger()
	cfg.BackoffMin, cfg.BackoffMax = 20*time.Millisecond, 300*time.Millisecond
	w, err := watch.New(cfg)
	require.NoError(t, err)
	return w, goRun(t, "watcher", w.Run)
}

// goRun runs f until stop is called or the test ends and checks that it
// returns nil soon after its context is cancelled.
func goRun(t *testing.T, what string, f func(context.Context) error) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				require.NoError(t, err, what)
			case <-time.After(10 * time.Second):
				t.Errorf("%s did not stop", what)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

var client = &http.Client{Timeout: 5 * time.Second}

func get(addr string) (string, error) {
	resp, err := client.Get("http://" + addr + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return string(b), nil
}

// eventuallyServes waits until addr answers with body.
func eventuallyServes(t *testing.T, addr, body string) {
	t.Helper()
	var got string
	var err error
	require.Eventually(t, func() bool {
		got, err = get(addr)
		return err == nil && got == body
	}, 15*time.Second, 10*time.Millisecond, "want %q, last answer %q, %v", body, got, err)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestCluster_tableCommittedOnLeaderReachesBalancerWatchingFollower(t *testing.T) {
	t.Cleanup(client.CloseIdleConnections)
	c, l, leader := startCluster(t)
	var f *testcluster.Node
	for _, n := range c.Running() {
		if n != leader {
			f = n
			break
		}
	}
	ctx := ctxT(t)
	a, b := startBackend(t, "a"), startBackend(t, "b")
	bal := newBalancer(t, "")
	addr, _ := serve(t, bal)
	w, _ := startWatcher(t, bal, f.GRPCAddr)

	// A cluster without pools has an empty table: in force at once.
	require.Eventually(t, bal.Ready, 10*time.Second, 10*time.Millisecond)

	created, err := leader.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{
		Name: "web", Backends: []*pb.Backend{{Address: a}}}})
	require.NoError(t, err)
	eventuallyServes(t, addr, "a")
	require.GreaterOrEqual(t, bal.Table().Version.Index, created.Index)
	require.Eventually(t, func() bool { return l.tableAck(f.ID, "edge-1").GetIndex() >= created.Index },
		5*time.Second, 10*time.Millisecond, "the follower got the acknowledgement")

	_, err = leader.Pools().AddBackend(ctx, &pb.AddBackendRequest{Pool: "web", Backend: &pb.Backend{Address: b}})
	require.NoError(t, err)
	removed, err := leader.Pools().RemoveBackend(ctx, &pb.RemoveBackendRequest{Pool: "web", Address: a})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return bal.Table().Version.Index >= removed.Index }, 10*time.Second, 10*time.Millisecond)
	for range 20 {
		got, err := get(addr)
		require.NoError(t, err)
		require.Equal(t, "b", got)
	}
	require.Eventually(t, func() bool { return l.tableAck(f.ID, "edge-1").GetIndex() == removed.Index },
		5*time.Second, 10*time.Millisecond)

	// Stats reports go to the follower, which passes them on to the leader.
	require.Eventually(t, func() bool { return w.Status().StatsReports >= 1 }, 5*time.Second, 10*time.Millisecond)

	st := w.Status()
	require.Equal(t, f.GRPCAddr, st.Controller)
	require.Equal(t, f.ID, st.ControllerID)
	require.Zero(t, st.Refused)
	require.Zero(t, st.AckFailures)
	require.Zero(t, st.Failures)
	require.Zero(t, st.StatsFailures, "the controllers take the reports")
}

func TestCluster_everyControllerKilledUnderLoad(t *testing.T) {
	t.Cleanup(client.CloseIdleConnections)
	c, _, leader := startCluster(t)
	ctx := ctxT(t)
	a, b := startBackend(t, "a"), startBackend(t, "b")
	var controllers []string
	for _, n := range c.Nodes() {
		controllers = append(controllers, n.GRPCAddr)
	}
	dataDir := t.TempDir()
	bal := newBalancer(t, dataDir)
	addr, stopBal := serve(t, bal)
	w, stopW := startWatcher(t, bal, controllers...)
	created, err := leader.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{
		Name: "web", Backends: []*pb.Backend{{Address: a}}}})
	require.NoError(t, err)
	eventuallyServes(t, addr, "a")
	require.GreaterOrEqual(t, bal.Table().Version.Index, created.Index)
	before := bal.Table().Version

	// Steady load while every controller goes away.
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	loadCtx, stopLoad := context.WithCancel(ctx)
	var load sync.WaitGroup
	for range 8 {
		load.Go(func() {
			for loadCtx.Err() == nil {
				got, err := get(addr)
				if err == nil && got != "a" {
					err = fmt.Errorf("answer %q", got)
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				ok.Add(1)
			}
		})
	}
	require.Eventually(t, func() bool { return ok.Load() >= 200 }, 10*time.Second, 5*time.Millisecond)
	var kill sync.WaitGroup
	for _, n := range c.Nodes() {
		kill.Go(n.Kill)
	}
	kill.Wait()
	require.Empty(t, c.Running())
	require.Eventually(t, func() bool { return w.Status().Controller == "" && w.Status().Failures >= 3 },
		10*time.Second, 5*time.Millisecond, "the watcher noticed")
	afterKill := ok.Load()
	require.Eventually(t, func() bool { return ok.Load() >= afterKill+300 }, 10*time.Second, 5*time.Millisecond)
	stopLoad()
	load.Wait()
	require.Zero(t, failed.Load(), "first failure: %v", firstErr.Load())
	t.Logf("%d requests, %d after the last controller stopped", ok.Load(), ok.Load()-afterKill)
	require.Equal(t, before, bal.Table().Version)

	// A balancer restarted while no controller answers serves the saved table.
	stopW()
	stopBal()
	bal = newBalancer(t, dataDir)
	loaded, err := bal.LoadDataDir()
	require.NoError(t, err)
	require.True(t, loaded)
	addr, _ = serve(t, bal)
	w, _ = startWatcher(t, bal, controllers...)
	got, err := get(addr)
	require.NoError(t, err)
	require.Equal(t, "a", got)
	require.Eventually(t, func() bool { return w.Status().Failures >= 6 }, 10*time.Second, 5*time.Millisecond,
		"two rounds through every controller")
	got, err = get(addr)
	require.NoError(t, err)
	require.Equal(t, "a", got)
	require.Equal(t, before, bal.Table().Version)

	// The controllers come back: the watcher reconnects, asks from the saved
	// version (nothing is re-applied), and applies the next change.
	for _, n := range c.Nodes() {
		n.Restart()
	}
	leader, _, err = c.WaitLeader(ctx, 15*time.Second)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return w.Status().Controller != "" }, 10*time.Second, 5*time.Millisecond)
	require.Zero(t, w.Status().Applied, "the saved table is current")
	var added *pb.AddBackendResponse
	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
		added, err = leader.Pools().AddBackend(ctx, &pb.AddBackendRequest{RequestId: "add-b", Pool: "web", Backend: &pb.Backend{Address: b}})
		return err
	}))
	removed, err := leader.Pools().RemoveBackend(ctx, &pb.RemoveBackendRequest{Pool: "web", Address: a})
	require.NoError(t, err)
	require.Greater(t, removed.Index, added.Index)
	eventuallyServes(t, addr, "b")
	require.Eventually(t, func() bool { return bal.Table().Version.Index == removed.Index }, 10*time.Second, 5*time.Millisecond)
	require.GreaterOrEqual(t, w.Status().Applied, uint64(1))
}
