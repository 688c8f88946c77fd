package watch

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostscale/hostscale/balancer"
	"github.com/hostscale/hostscale/internal/promtest"
	"github.com/hostscale/hostscale/internal/syncbuf"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// logBuffer collects a Watcher's log lines, to count messages.
type logBuffer struct{ syncbuf.Buffer }

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// count returns how many times msg was logged.
func (l *logBuffer) count(msg string) int { return strings.Count(l.String(), msg) }

// serveBalancer serves b on a loopback port until the test ends.
func serveBalancer(t *testing.T, b *balancer.Balancer) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Error("balancer did not stop")
		}
	})
	return ln.Addr().String()
}

// metricValue returns the value of a Watcher metric.
func metricValue(t *testing.T, w *Watcher, name string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(w))
	return promtest.Get(t, reg, name, nil)
}

func TestWatcher_reportsBackendCountersPeriodicallyOnTheOpenStream(t *testing.T) {
	f1, f2 := startFake(t), startFake(t)
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	t.Cleanup(be.Close)
	backend := be.Listener.Addr().String()
	b := newBalancer(t)
	proxy := serveBalancer(t, b)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{}}
	t.Cleanup(client.CloseIdleConnections)
	cfg := testConfig(b, f1.addr, f2.addr)
	cfg.StatsInterval = MinStatsInterval
	w := runWatcher(t, cfg)

	require.Eventually(t, func() bool { return w.Status().Controller == f1.addr }, 5*time.Second, 5*time.Millisecond)
	f1.sendTable(t, table(1, 1, backend))
	require.Eventually(t, func() bool { return version(b) == "1/1" }, 5*time.Second, 5*time.Millisecond)
	for range 5 {
		resp, err := client.Get("http://" + proxy + "/")
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		require.Equal(t, "ok", string(body))
	}

	// The next reports carry the requests, counted once the proxy finished
	// each (which may be just after the client read the answer).
	var last *pb.ReportStatsRequest
	require.Eventually(t, func() bool {
		rs := f1.Reports()
		if len(rs) == 0 {
			return false
		}
		last = rs[len(rs)-1]
		return len(last.Backends) == 1 && last.Backends[0].Requests == 5
	}, 5*time.Second, 5*time.Millisecond, "last report: %v", last)
	require.Equal(t, "edge-1", last.Balancer)
	require.True(t, last.Started.AsTime().Before(last.Time.AsTime()), "counters started %v, before the report at %v", last.Started.AsTime(), last.Time.AsTime())
	require.WithinDuration(t, time.Now(), last.Time.AsTime(), 5*time.Second)
	require.Len(t, last.BucketBounds, len(balancer.LatencyBuckets))
	require.Equal(t, 0.0005, last.BucketBounds[0], "bounds are in seconds")
	require.Equal(t, 10.0, last.BucketBounds[len(last.BucketBounds)-1])
	require.IsIncreasing(t, last.BucketBounds)
	c := last.Backends[0]
	require.Equal(t, "web", c.Pool)
	require.Equal(t, backend, c.Address)
	require.Zero(t, c.Errors)
	require.Zero(t, c.InFlight)
	require.Len(t, c.LatencyCounts, len(balancer.LatencyBuckets)+1, "one bucket more than bounds: the rest")
	var inBuckets uint64
	for _, n := range c.LatencyCounts {
		inBuckets += n
	}
	require.Equal(t, uint64(5), inBuckets)

	// They keep coming, each taken later than the one before.
	n := len(f1.Reports())
	rs := f1.waitReports(t, n+3)
	for i := 1; i < len(rs); i++ {
		require.False(t, rs[i].Time.AsTime().Before(rs[i-1].Time.AsTime()), "report %d", i)
	}

	// The stream ends: its reports stop with it, and the next stream, to the
	// next controller, reports the same cumulative counters.
	f1.end <- status.Error(codes.Unavailable, "going away")
	require.Eventually(t, func() bool { return w.Status().Controller == f2.addr }, 5*time.Second, 5*time.Millisecond)
	n1 := len(f1.Reports())
	rs = f2.waitReports(t, 3)
	require.Len(t, f1.Reports(), n1, "no report after its stream ended")
	require.Len(t, rs[2].Backends, 1)
	require.Equal(t, uint64(5), rs[2].Backends[0].Requests)

	// The watcher counts a report once its answer is back; the last call f1
	// recorded may have been cut short by the end of its stream.
	require.Eventually(t, func() bool { return w.Status().StatsReports >= uint64(n1+2) }, 5*time.Second, 5*time.Millisecond)
	require.Zero(t, w.Status().StatsFailures)
	require.GreaterOrEqual(t, metricValue(t, w, "hostscale_balancer_controller_stats_reports_total"), float64(n1+2))
	require.Zero(t, metricValue(t, w, "hostscale_balancer_controller_stats_failures_total"))
}

func TestWatcher_statsReportFailuresAreCountedLoggedOncePerStreakAndNotRetried(t *testing.T) {
	f := startFake(t)
	f.setReportErr(status.Error(codes.Unavailable, "busy"))
	b := newBalancer(t)
	logs := &logBuffer{}
	cfg := testConfig(b, f.addr)
	cfg.StatsInterval, cfg.Logger = MinStatsInterval, logs.logger()
	w := runWatcher(t, cfg)

	require.Eventually(t, func() bool { return w.Status().StatsFailures >= 3 }, 5*time.Second, 5*time.Millisecond)
	require.Equal(t, 1, logs.count("report stats failed"), "one log line per streak")
	// One call per tick: the controller saw no call the watcher did not
	// count (but perhaps the one in flight).
	before := w.Status().StatsReports
	calls := uint64(len(f.Reports()))
	after := w.Status().StatsReports
	require.GreaterOrEqual(t, calls, before)
	require.LessOrEqual(t, calls, after+1)

	// The streak ends with the first report that goes through.
	f.setReportErr(nil)
	require.Eventually(t, func() bool { return logs.count("stats reports go through again") == 1 },
		5*time.Second, 5*time.Millisecond)
	failed := w.Status().StatsFailures
	require.Equal(t, float64(failed), metricValue(t, w, "hostscale_balancer_controller_stats_failures_total"))

	// A new streak is logged again.
	f.setReportErr(status.Error(codes.DeadlineExceeded, "slow"))
	require.Eventually(t, func() bool { return logs.count("report stats failed") == 2 }, 5*time.Second, 5*time.Millisecond)
	require.Greater(t, w.Status().StatsFailures, failed)

	// Failed reports never cost the stream.
	st := w.Status()
	require.Equal(t, uint64(1), st.Streams)
	require.Zero(t, st.Failures)
	require.Equal(t, f.addr, st.Controller)
	require.Empty(t, st.LastError)
}

func TestWatcher_unimplementedStatsStopReportsOnThatStreamOnly(t *testing.T) {
	f := startFake(t)
	f.setReportErr(status.Error(codes.Unimplemented, "unknown method ReportStats for service hostscale.v1.BalancerService"))
	b := newBalancer(t)
	logs := &logBuffer{}
	cfg := testConfig(b, f.addr)
	cfg.StatsInterval, cfg.AckInterval, cfg.Logger = MinStatsInterval, MinStatsInterval, logs.logger()
	w := runWatcher(t, cfg)
	f.sendTable(t, table(1, 1, "10.0.0.1:80"))
	f.waitReports(t, 1)

	// Acknowledgements tick at the stats interval: five more of them mean
	// about five stats ticks went by without a report.
	acks := len(f.waitAcks(t, 1))
	f.waitAcks(t, acks+5)
	require.Len(t, f.Reports(), 1)
	require.Equal(t, 1, logs.count("controller takes no stats reports"))
	require.Contains(t, logs.String(), "level=INFO msg=\"controller takes no stats reports")
	st := w.Status()
	require.Equal(t, uint64(1), st.StatsReports)
	require.Equal(t, uint64(1), st.StatsFailures)
	require.Equal(t, uint64(1), st.Streams)

	// The next stream (an upgraded controller, perhaps) reports again.
	f.setReportErr(nil)
	f.end <- status.Error(codes.Unavailable, "restarting")
	rs := f.waitReports(t, 3)
	require.Len(t, rs[2].Backends, 1)
	require.Equal(t, uint64(2), w.Status().Streams)
	require.Equal(t, 1, logs.count("controller takes no stats reports"))
}

// TestWatcher_leaveSendsALastReportMarkedLeaving: Leave sends the final
// counters, marked leaving, to the controller last watched, then to the
// others in turn when it fails; with no stats reports configured it sends
// nothing.
func TestWatcher_leaveSendsALastReportMarkedLeaving(t *testing.T) {
	f1, f2 := startFake(t), startFake(t)
	b := newBalancer(t)
	cfg := testConfig(b, f1.addr, f2.addr)
	cfg.StatsInterval = time.Hour // no periodic report gets in the way
	w, err := New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	require.Eventually(t, func() bool { return w.Status().Controller == f1.addr }, 5*time.Second, 5*time.Millisecond)
	f1.end <- status.Error(codes.Unavailable, "going away")
	require.Eventually(t, func() bool { return w.Status().Controller == f2.addr }, 5*time.Second, 5*time.Millisecond)
	cancel()
	require.NoError(t, <-done)

	lctx, lcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer lcancel()
	require.NoError(t, w.Leave(lctx))
	rs := f2.Reports()
	require.Len(t, rs, 1, "the last controller watched gets it")
	require.True(t, rs[0].Leaving)
	require.Equal(t, "edge-1", rs[0].Balancer)
	require.NotNil(t, rs[0].Started)
	require.Empty(t, f1.Reports())

	f2.setReportErr(status.Error(codes.Unavailable, "no leader"))
	require.NoError(t, w.Leave(lctx))
	require.Len(t, f1.Reports(), 1, "the next controller, when the last one fails")
	require.True(t, f1.Reports()[0].Leaving)

	f1.setReportErr(status.Error(codes.Unavailable, "no leader"))
	require.ErrorContains(t, w.Leave(lctx), "no leader", "every controller failed")

	cfg.StatsInterval = 0
	quiet, err := New(cfg)
	require.NoError(t, err)
	n1, n2 := len(f1.Reports()), len(f2.Reports())
	require.NoError(t, quiet.Leave(lctx))
	require.Len(t, f1.Reports(), n1)
	require.Len(t, f2.Reports(), n2)
}
