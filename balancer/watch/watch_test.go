package watch

import (
	"context"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hostscale/hostscale/balancer"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// grpc-go's resolver and balancer goroutines of closed client
		// connections exit asynchronously.
		goleak.IgnoreTopFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		// net/http's server (the test backends) lingers after closing a
		// connection whose request it did not read.
		goleak.IgnoreAnyFunction("net/http.(*conn).closeWriteAndWait"),
	)
}

func testLogger() *slog.Logger {
	if os.Getenv("HOSTSCALE_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// fakeController serves BalancerService on loopback: each watch stream
// sends what is put on send and ends with what is put on end.
type fakeController struct {
	pb.UnimplementedBalancerServiceServer
	addr string
	srv  *grpc.Server
	send chan *pb.WatchTableResponse
	end  chan error

	mu      sync.Mutex
	watches []*pb.WatchTableRequest
	acks    []*pb.AckTableRequest
	reports []*pb.ReportStatsRequest
	// reportErr, when set, answers every ReportStats call.
	reportErr error
}

func startFake(t *testing.T) *fakeController {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	f := &fakeController{addr: ln.Addr().String(), srv: grpc.NewServer(),
		send: make(chan *pb.WatchTableResponse), end: make(chan error)}
	pb.RegisterBalancerServiceServer(f.srv, f)
	done := make(chan struct{})
	go func() { defer close(done); _ = f.srv.Serve(ln) }()
	t.Cleanup(func() { f.srv.Stop(); <-done })
	return f
}

func (f *fakeController) WatchTable(req *pb.WatchTableRequest, stream pb.BalancerService_WatchTableServer) error {
	f.mu.Lock()
	f.watches = append(f.watches, proto.Clone(req).(*pb.WatchTableRequest))
	f.mu.Unlock()
	for {
		select {
		case r := <-f.send:
			if err := stream.Send(r); err != nil {
				return err
			}
		case err := <-f.end:
			return err
		case <-stream.Context().Done():
			return nil
		}
	}
}

func (f *fakeController) AckTable(_ context.Context, req *pb.AckTableRequest) (*pb.AckTableResponse, error) {
	f.mu.Lock()
	f.acks = append(f.acks, proto.Clone(req).(*pb.AckTableRequest))
	f.mu.Unlock()
	return &pb.AckTableResponse{}, nil
}

// ReportStats records every call, failed ones included.
func (f *fakeController) ReportStats(_ context.Context, req *pb.ReportStatsRequest) (*pb.ReportStatsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reports = append(f.reports, proto.Clone(req).(*pb.ReportStatsRequest))
	if f.reportErr != nil {
		return nil, f.reportErr
	}
	return &pb.ReportStatsResponse{}, nil
}

func (f *fakeController) setReportErr(err error) {
	f.mu.Lock()
	f.reportErr = err
	f.mu.Unlock()
}

func (f *fakeController) Reports() []*pb.ReportStatsRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*pb.ReportStatsRequest(nil), f.reports...)
}

// waitReports waits until the controller holds n stats reports and returns them.
func (f *fakeController) waitReports(t *testing.T, n int) []*pb.ReportStatsRequest {
	t.Helper()
	require.Eventually(t, func() bool { return len(f.Reports()) >= n }, 5*time.Second, 5*time.Millisecond,
		"waiting for %d stats reports, have %d", n, len(f.Reports()))
	return f.Reports()
}

func (f *fakeController) Watches() []*pb.WatchTableRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*pb.WatchTableRequest(nil), f.watches...)
}

func (f *fakeController) Acks() []*pb.AckTableRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*pb.AckTableRequest(nil), f.acks...)
}

// waitAcks waits until the controller holds n acknowledgements and returns them.
func (f *fakeController) waitAcks(t *testing.T, n int) []*pb.AckTableRequest {
	t.Helper()
	require.Eventually(t, func() bool { return len(f.Acks()) >= n }, 5*time.Second, 5*time.Millisecond,
		"waiting for %d acks, have %v", n, f.Acks())
	return f.Acks()
}

func (f *fakeController) sendTable(t *testing.T, tbl *pb.Table) {
	t.Helper()
	select {
	case f.send <- &pb.WatchTableResponse{Table: tbl, Controller: "fake"}:
	case <-time.After(5 * time.Second):
		t.Fatal("no watch stream took the table")
	}
}

func table(term, index uint64, backends ...string) *pb.Table {
	p := &pb.TablePool{Name: "web"}
	for _, b := range backends {
		p.Backends = append(p.Backends, &pb.TableBackend{Address: b})
	}
	return &pb.Table{Version: &pb.TableVersion{Term: term, Index: index}, Pools: []*pb.TablePool{p}}
}

func newBalancer(t *testing.T) *balancer.Balancer {
	cfg := balancer.DefaultConfig()
	cfg.Logger = testLogger()
	b, err := balancer.New(cfg)
	require.NoError(t, err)
	return b
}

func testConfig(b Target, controllers ...string) Config {
	cfg := DefaultConfig()
	cfg.Controllers, cfg.Name, cfg.Balancer, cfg.Logger = controllers, "edge-1", b, testLogger()
	cfg.BackoffMin, cfg.BackoffMax = 10*time.Millisecond, 50*time.Millisecond
	return cfg
}

// runWatcher runs a Watcher until the test ends and checks that it stops.
func runWatcher(t *testing.T, cfg Config) *Watcher {
	t.Helper()
	w, err := New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Error("watcher did not stop")
		}
	})
	return w
}

func version(b *balancer.Balancer) string {
	if t := b.Table(); t != nil {
		return t.Version.String()
	}
	return "none"
}

func TestWatcher_appliesAcksRefusesInvalidAndSkipsStale(t *testing.T) {
	f := startFake(t)
	b := newBalancer(t)
	w := runWatcher(t, testConfig(b, f.addr))
	require.Eventually(t, func() bool { return len(f.Watches()) == 1 }, 5*time.Second, 5*time.Millisecond)
	require.Equal(t, "edge-1", f.Watches()[0].Balancer)
	require.Nil(t, f.Watches()[0].Have, "a balancer without a table asks for the full one")
	require.Empty(t, f.Acks(), "nothing in force, nothing to report on connect")

	f.sendTable(t, table(1, 5, "10.0.0.1:80"))
	acks := f.waitAcks(t, 1)
	require.Equal(t, "1/5", version(b))
	require.Equal(t, "edge-1", acks[0].Balancer)
	require.True(t, proto.Equal(&pb.TableVersion{Term: 1, Index: 5}, acks[0].Version))
	require.Empty(t, acks[0].Error)
	require.Equal(t, DefaultWeight, b.Table().Pools[0].Backends[0].Weight)

	// An older table (a deposed leader's, a lagging controller's) is
	// skipped: not applied, not acknowledged, not an error.
	f.sendTable(t, table(7, 3, "10.0.0.9:80"))
	require.Eventually(t, func() bool { return w.Status().Stale == 1 }, 5*time.Second, 5*time.Millisecond)
	require.Equal(t, "1/5", version(b))
	require.Len(t, f.Acks(), 1)

	// An invalid table is refused with the reason; the table in force stays.
	f.sendTable(t, table(1, 6, "db.internal:5432"))
	acks = f.waitAcks(t, 2)
	require.Equal(t, uint64(6), acks[1].Version.Index)
	require.Contains(t, acks[1].Error, "pools[0].backends[0].address")
	f.sendTable(t, &pb.Table{Version: &pb.TableVersion{Term: 1, Index: 7}, Pools: []*pb.TablePool{{Name: "x", Policy: 42}}})
	acks = f.waitAcks(t, 3)
	require.Contains(t, acks[2].Error, "unknown policy 42")
	// Without a version there is nothing to acknowledge.
	f.sendTable(t, &pb.Table{})
	require.Eventually(t, func() bool { return w.Status().Refused == 3 }, 5*time.Second, 5*time.Millisecond)
	require.Len(t, f.Acks(), 3)
	require.Equal(t, "1/5", version(b))

	// The same stream keeps delivering.
	f.sendTable(t, table(2, 8, "10.0.0.2:80"))
	acks = f.waitAcks(t, 4)
	require.Equal(t, "2/8", version(b))
	require.Empty(t, acks[3].Error)
	st := w.Status()
	require.Equal(t, uint64(2), st.Applied)
	require.Equal(t, uint64(1), st.Streams)
	require.Equal(t, f.addr, st.Controller)
	require.Equal(t, "fake", st.ControllerID)
	require.Zero(t, st.Failures)
	require.Zero(t, st.AckFailures)
}

func TestWatcher_asksFromTableInForceAndMovesToNextController(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dead := ln.Addr().String()
	ln.Close()
	f := startFake(t)
	b := newBalancer(t)
	require.NoError(t, b.Apply(&balancer.Table{Version: balancer.Version{Term: 2, Index: 9}}))
	w := runWatcher(t, testConfig(b, dead, f.addr))

	// The dead controller fails; the next one is asked only for what is
	// newer than the table in force, and told which version that is.
	require.Eventually(t, func() bool { return len(f.Watches()) == 1 }, 5*time.Second, 5*time.Millisecond)
	require.True(t, proto.Equal(&pb.TableVersion{Term: 2, Index: 9}, f.Watches()[0].Have))
	acks := f.waitAcks(t, 1)
	require.Equal(t, uint64(9), acks[0].Version.Index)
	require.Eventually(t, func() bool { return w.Status().Controller == f.addr }, 5*time.Second, 5*time.Millisecond)
	require.GreaterOrEqual(t, w.Status().Failures, uint64(1))
	require.Equal(t, 2, testutil.CollectAndCount(w, "hostscale_balancer_controller_connected"))

	// A broken stream is followed by another attempt: the dead controller
	// first, then this one again.
	f.end <- status.Error(codes.Unavailable, "going away")
	require.Eventually(t, func() bool { return len(f.Watches()) == 2 }, 5*time.Second, 5*time.Millisecond)
	f.sendTable(t, table(2, 10, "10.0.0.1:80"))
	require.Eventually(t, func() bool { return version(b) == "2/10" }, 5*time.Second, 5*time.Millisecond)
	require.GreaterOrEqual(t, w.Status().Failures, uint64(3))
	require.Equal(t, uint64(2), w.Status().Streams)
}

func TestWatcher_leavesDrainingControllerAtOnce(t *testing.T) {
	f1, f2 := startFake(t), startFake(t)
	b := newBalancer(t)
	w := runWatcher(t, testConfig(b, f1.addr, f2.addr))
	require.Eventually(t, func() bool { return w.Status().Controller == f1.addr }, 5*time.Second, 5*time.Millisecond)

	// GracefulStop waits for open streams; the watcher sees the GOAWAY and
	// closes its stream instead of waiting for the controller to cut it.
	stopped := make(chan struct{})
	go func() { f1.srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		f1.srv.Stop()
		t.Fatal("the watcher kept its stream to a draining controller")
	}
	require.Eventually(t, func() bool { return w.Status().Controller == f2.addr }, 5*time.Second, 5*time.Millisecond)
	f2.sendTable(t, table(1, 1, "10.0.0.1:80"))
	require.Eventually(t, func() bool { return version(b) == "1/1" }, 5*time.Second, 5*time.Millisecond)
}

func TestWatcher_backoffDoublesWithJitterUpToMax(t *testing.T) {
	b := newBalancer(t)
	cfg := testConfig(b, "127.0.0.1:1")
	cfg.BackoffMin, cfg.BackoffMax = 100*time.Millisecond, 5*time.Second
	w, err := New(cfg)
	require.NoError(t, err)
	for _, tc := range []struct {
		n        int
		min, max time.Duration
	}{
		{0, 50 * time.Millisecond, 100 * time.Millisecond},
		{1, 100 * time.Millisecond, 200 * time.Millisecond},
		{4, 800 * time.Millisecond, 1600 * time.Millisecond},
		{6, 2500 * time.Millisecond, 5 * time.Second},
		{50, 2500 * time.Millisecond, 5 * time.Second},
	} {
		w.jitter = func(int64) int64 { return 0 }
		require.Equal(t, tc.min, w.backoff(tc.n), "n=%d", tc.n)
		w.jitter = func(n int64) int64 { return n - 1 }
		require.Equal(t, tc.max, w.backoff(tc.n), "n=%d", tc.n)
	}
}

func TestConfig_Validate(t *testing.T) {
	b := newBalancer(t)
	for _, tc := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.Controllers = nil }, "Controllers"},
		{func(c *Config) { c.Controllers = []string{"ctl"} }, `"ctl": expected host:port`},
		{func(c *Config) { c.Name = "Edge 1" }, `Name "Edge 1" is not a DNS label`},
		{func(c *Config) { c.Balancer = nil }, "Balancer"},
		{func(c *Config) { c.BackoffMax = c.BackoffMin / 2 }, "BackoffMin"},
		{func(c *Config) { c.AckTimeout = 0 }, "AckTimeout"},
		{func(c *Config) { c.StatsInterval = -time.Second }, "StatsInterval -1s must be 0 (no reports) or at least 100ms"},
		{func(c *Config) { c.StatsInterval = 50 * time.Millisecond }, "StatsInterval 50ms"},
	} {
		cfg := testConfig(b, "127.0.0.1:7800")
		require.NoError(t, cfg.Validate())
		tc.mod(&cfg)
		_, err := New(cfg)
		require.ErrorContains(t, err, tc.want)
	}
	cfg := testConfig(b, "127.0.0.1:7800")
	cfg.StatsInterval = 0
	require.NoError(t, cfg.Validate(), "0 turns stats reports off")
}
