package admin

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/hostscale/hostscale/balancer"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeSource is a hand-written Source.
type fakeSource struct {
	table *balancer.Table
	stats []balancer.BackendStats
	pools []balancer.PoolStats
}

var _ Source = (*fakeSource)(nil)

func (f *fakeSource) Ready() bool                     { return f.table != nil }
func (f *fakeSource) Table() *balancer.Table          { return f.table }
func (f *fakeSource) Stats() []balancer.BackendStats  { return f.stats }
func (f *fakeSource) PoolStats() []balancer.PoolStats { return f.pools }
func (f *fakeSource) Counters() balancer.Counters {
	return balancer.Counters{Requests: 9, LocalReplies: map[int]uint64{404: 2}}
}

func do(t *testing.T, h http.Handler, path string) (int, string) {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	return rec.Code, rec.Body.String()
}

func TestServer_endpoints(t *testing.T) {
	src := &fakeSource{}
	s, err := New(DefaultConfig(), src)
	require.NoError(t, err)
	h := s.Handler()

	code, _ := do(t, h, "/healthz")
	require.Equal(t, 200, code)
	code, _ = do(t, h, "/readyz")
	require.Equal(t, 503, code, "not ready before a table")

	src.table = &balancer.Table{Version: balancer.Version{Term: 2, Index: 5}}
	counts := make([]uint64, len(balancer.LatencyBuckets)+1)
	counts[0], counts[len(counts)-1] = 3, 1
	src.stats = []balancer.BackendStats{{Pool: "web", Address: "127.0.0.1:1", Requests: 4, Errors: 1,
		InFlight: 2, InFlightSeconds: 7.25, Ejected: true, LatencyEWMA: time.Millisecond, LatencySum: time.Second, LatencyCounts: counts}}
	src.pools = []balancer.PoolStats{{Pool: "web", Unserved: 6}, {Pool: "idle", Waiting: 2, Unserved: 9,
		Held: balancer.HeldCounts{Served: 3, TimedOut: 2, Closed: 1, Removed: 1, Gone: 4}}}
	code, body := do(t, h, "/readyz")
	require.Equal(t, 200, code)
	require.Contains(t, body, "2/5")

	code, body = do(t, h, "/metrics")
	require.Equal(t, 200, code)
	for _, want := range []string{
		`hostscale_balancer_backend_requests_total{backend="127.0.0.1:1",pool="web"} 4`,
		`hostscale_balancer_backend_errors_total{backend="127.0.0.1:1",pool="web"} 1`,
		`hostscale_balancer_backend_in_flight{backend="127.0.0.1:1",pool="web"} 2`,
		`hostscale_balancer_backend_in_flight_seconds_total{backend="127.0.0.1:1",pool="web"} 7.25`,
		`hostscale_balancer_backend_ejected{backend="127.0.0.1:1",pool="web"} 1`,
		`hostscale_balancer_backend_request_duration_seconds_bucket{backend="127.0.0.1:1",pool="web",le="0.0005"} 3`,
		`hostscale_balancer_backend_request_duration_seconds_count{backend="127.0.0.1:1",pool="web"} 4`,
		`hostscale_balancer_local_replies_total{code="404"} 2`,
		`hostscale_balancer_requests_total 9`,
		`hostscale_balancer_table_index 5`,
		`hostscale_balancer_waiting_requests{pool="idle"} 2`,
		`hostscale_balancer_waiting_requests{pool="web"} 0`,
		`hostscale_balancer_unserved_requests_total{pool="idle"} 9`,
		`hostscale_balancer_unserved_requests_total{pool="web"} 6`,
		`hostscale_balancer_held_requests_total{outcome="served",pool="idle"} 3`,
		`hostscale_balancer_held_requests_total{outcome="timeout",pool="idle"} 2`,
		`hostscale_balancer_held_requests_total{outcome="closed",pool="idle"} 1`,
		`hostscale_balancer_held_requests_total{outcome="removed",pool="idle"} 1`,
		`hostscale_balancer_held_requests_total{outcome="gone",pool="idle"} 4`,
		`hostscale_balancer_held_requests_total{outcome="served",pool="web"} 0`,
	} {
		require.Contains(t, body, want)
	}
}

func TestServer_runStopsOnCancel(t *testing.T) {
	s, err := New(Config{Addr: "127.0.0.1:0"}, &fakeSource{})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	resp, err := http.Get("http://" + ln.Addr().String() + "/healthz")
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, "ok\n", string(b))
	http.DefaultClient.CloseIdleConnections()
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("admin server did not stop")
	}
}
