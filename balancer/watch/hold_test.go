package watch

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// poolCounters returns the counters of pool in r, or nil.
func poolCounters(r *pb.ReportStatsRequest, pool string) *pb.PoolCounters {
	for _, p := range r.GetPools() {
		if p.GetPool() == pool {
			return p
		}
	}
	return nil
}

func TestWatcher_heldRequestIsReportedAtOnceAndBurstsCoalesce(t *testing.T) {
	f := startFake(t)
	b := newBalancer(t)
	proxy := serveBalancer(t, b)
	cfg := testConfig(b, f.addr)
	cfg.StatsInterval = time.Hour // no tick within the test
	w := runWatcher(t, cfg)
	require.Eventually(t, func() bool { return w.Status().Controller == f.addr }, 5*time.Second, 5*time.Millisecond)

	// "web" is scaled to zero and holds requests; "api" has no backend and
	// holds none.
	tbl := &pb.Table{Version: &pb.TableVersion{Term: 1, Index: 1}, Pools: []*pb.TablePool{
		{Name: "web", HoldWhenEmpty: durationpb.New(time.Minute)},
		{Name: "api", Hosts: []string{"api.example"}},
	}}
	f.sendTable(t, tbl)
	require.Eventually(t, func() bool { return version(b) == "1/1" }, 5*time.Second, 5*time.Millisecond)
	require.Empty(t, f.Reports())

	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{}}
	t.Cleanup(client.CloseIdleConnections)
	answers := make(chan int, 6)
	get := func() {
		resp, err := client.Get("http://" + proxy + "/")
		if err != nil {
			answers <- 0
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		answers <- resp.StatusCode
	}

	start := time.Now()
	go get()
	rs := f.waitReports(t, 1)
	require.Less(t, time.Since(start), 5*time.Second, "an hour before the next tick")
	web := poolCounters(rs[0], "web")
	require.NotNil(t, web, "report: %v", rs[0])
	require.Equal(t, uint32(1), web.Waiting)
	require.Equal(t, uint64(1), web.Unserved)
	api := poolCounters(rs[0], "api")
	require.NotNil(t, api, "a pool without backends is reported: %v", rs[0])
	require.Zero(t, api.Waiting)
	require.Empty(t, rs[0].Backends)

	// A burst of holds: reports follow, never two within PromptReportGap,
	// and one of them carries them all.
	for range 5 {
		go get()
	}
	require.Eventually(t, func() bool {
		rs := f.Reports()
		return poolCounters(rs[len(rs)-1], "web").GetWaiting() == 6
	}, 5*time.Second, 2*time.Millisecond)
	rs = f.Reports()
	for i := 1; i < len(rs); i++ {
		gap := rs[i].Time.AsTime().Sub(rs[i-1].Time.AsTime())
		require.GreaterOrEqual(t, gap, PromptReportGap, "report %d", i)
	}
	elapsed := rs[len(rs)-1].Time.AsTime().Sub(rs[0].Time.AsTime())
	require.LessOrEqual(t, len(rs), 1+int(elapsed/PromptReportGap))

	// A backend appears: every held request is served.
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	t.Cleanup(be.Close)
	tbl.Version.Index = 2
	tbl.Pools[0].Backends = []*pb.TableBackend{{Address: be.Listener.Addr().String()}}
	f.sendTable(t, tbl)
	for range 6 {
		select {
		case code := <-answers:
			require.Equal(t, 200, code)
		case <-time.After(10 * time.Second):
			t.Fatal("a held request was not served")
		}
	}
}
