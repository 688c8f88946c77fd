package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A run where the client's calls took 1000 µs on average: the leader ran a
// third of them directly in 700 µs, 600 of which were Raft; the followers
// ran the other two thirds in 900 µs, 800 of which they waited for the
// leader, which spent 650 µs on each.
func TestSplit_stagesAddUpToTheClientsCall(t *testing.T) {
	const create = `{grpc_method="/hostscale.v1.PoolService/CreatePool"}`
	const del = `{grpc_method="/hostscale.v1.PoolService/DeletePool"}`
	leader := map[string]float64{
		"grpc_server_handling_seconds_sum" + create:                    50 * 700e-6,
		"grpc_server_handling_seconds_count" + create:                  50,
		"grpc_server_handling_seconds_sum" + del:                       50 * 700e-6,
		"grpc_server_handling_seconds_count" + del:                     50,
		`hostscale_controller_apply_seconds_sum{result="ok"}`:          300 * 600e-6,
		`hostscale_controller_apply_seconds_count{result="ok"}`:        300,
		"hostscale_controller_forward_serve_seconds_sum":               200 * 650e-6,
		"hostscale_controller_forward_serve_seconds_count":             200,
		`hostscale_controller_apply_seconds_sum{result="error"}`:       1,
		`hostscale_controller_forward_wait_seconds_count{x="ignored"}`: 7,
	}
	follower := func(transport string) map[string]float64 {
		return map[string]float64{
			"grpc_server_handling_seconds_sum" + create:                                      100 * 900e-6,
			"grpc_server_handling_seconds_count" + create:                                    100,
			`hostscale_controller_forward_wait_seconds_sum{transport="` + transport + `"}`:   100 * 800e-6,
			`hostscale_controller_forward_wait_seconds_count{transport="` + transport + `"}`: 100,
		}
	}
	st := split([]map[string]float64{follower("raft"), leader, follower("api")}, 1, 1000*time.Microsecond)
	require.NotNil(t, st)
	us := func(f float64) time.Duration { return time.Duration(f * float64(time.Microsecond)) }
	near := func(want, got time.Duration) {
		t.Helper()
		require.InDelta(t, float64(want), float64(got), float64(time.Microsecond), "want %v, got %v", want, got)
	}
	require.InDelta(t, 2.0/3, st.forwardedShare, 1e-9)
	near(600*time.Microsecond, st.raft)
	near(150*time.Microsecond, st.perForward)
	near(100*time.Microsecond, st.forwarding)
	// Direct: 700-600 on the leader; forwarded: 650-600 on the leader
	// and 900-800 on the follower.
	near(us(100.0/3+150.0*2/3), st.handlers)
	// 1000 less the mean handling on the node called: 700/3 + 900*2/3.
	near(us(1000-(700.0/3+1800.0/3)), st.grpc)
	near(1000*time.Microsecond, st.grpc+st.forwarding+st.handlers+st.raft)

	require.Nil(t, split([]map[string]float64{{}, {}, {}}, 0, time.Millisecond), "no calls, no split")
}

func TestScrape_readsSamplesAndSkipsTheRest(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, strings.Join([]string{
			"# HELP a_seconds A.",
			"# TYPE a_seconds histogram",
			`a_seconds_sum{result="ok"} 0.25`,
			"b_total 3",
			"not a sample",
			"",
			"c_value NaN",
		}, "\n"))
	}))
	defer srv.Close()
	m := scrape(strings.TrimPrefix(srv.URL, "http://"))
	require.Equal(t, 0.25, m[`a_seconds_sum{result="ok"}`])
	require.Equal(t, 3.0, m["b_total"])
	require.NotContains(t, m, "not a")
	require.Len(t, m, 3)
	require.Empty(t, scrape("127.0.0.1:1"), "nothing listening: no samples")

	d := delta(map[string]float64{"x": 5, "y": 1}, map[string]float64{"x": 2})
	require.Equal(t, map[string]float64{"x": 3, "y": 1}, d)
	require.Equal(t, 250*time.Millisecond, meanOf(map[string]float64{"a_sum": 1, "a_count": 4}, "a", ""))
	require.Zero(t, meanOf(map[string]float64{}, "a", ""))
}

// Raft's stages come from its own metrics, over the measured seconds only,
// in each measurement of a cluster that is measured again (-reuse).
func TestRaftStages_bareRunReportsEachStage(t *testing.T) {
	b := newBare("wal", 100)
	defer b.close()
	first := b.measure(1, 0, 200*time.Millisecond, 500*time.Millisecond)
	r := b.measure(1, 0, 200*time.Millisecond, 500*time.Millisecond)
	require.Positive(t, first.writes)
	require.Positive(t, r.writes)
	require.InDelta(t, r.writes, r.raft.commit.n, float64(r.writes)/5+2, "the second measurement counts its own entries only")
	st := r.raft
	require.NotNil(t, st)
	for name, s := range map[string]raftStage{"dispatch": st.dispatch, "follower write": st.followerWrite, "AppendEntries": st.appendRPC, "commit": st.commit} {
		require.Positive(t, s.n, name)
		require.Positive(t, s.mean, name)
		require.Less(t, s.mean, 10*time.Second, name)
	}
	// One writer: every entry is one write, and the warm-up's are not
	// counted.
	require.InDelta(t, r.writes, st.commit.n, float64(r.writes)/5+2)
	require.Less(t, st.commit.mean, r.p99+time.Millisecond, "an Apply waits for its commit")

	var out strings.Builder
	reportRaftStages(&out, []result{r})
	require.Contains(t, out.String(), "leader log write")
	require.Contains(t, out.String(), "bare raft")
}

// The test binary, run again by the wake mode's other process, is that
// process.
func TestMain(m *testing.M) {
	if os.Getenv(wakePeerEnv) != "" {
		servePeer()
		return
	}
	os.Exit(m.Run())
}

// The wake mode prints, for the raw round trip, the gRPC call (grpcx's and
// grpc-go's defaults) and the gRPC call to another process, one row per idle time with the idle it
// measured and the calls' times; it returns once the other process has
// exited.
func TestRunWake_timesEachHopAfterEachIdle(t *testing.T) {
	var out strings.Builder
	runWake(&out, 20)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	hops := []string{"loopback round trip", "gRPC unary call", "gRPC unary call, grpc-go's defaults", "gRPC unary call to another process"}
	require.Len(t, lines, 1+len(hops)*len(wakeIdles), out.String())
	for i, hop := range hops {
		for j, idle := range wakeIdles {
			f := strings.Fields(lines[1+i*len(wakeIdles)+j])
			require.Equal(t, hop, strings.Join(f[:len(f)-5], " "))
			require.Equal(t, idle.String(), f[len(f)-5])
			measured, err := time.ParseDuration(strings.Trim(f[len(f)-4], "()"))
			require.NoError(t, err)
			require.GreaterOrEqual(t, measured, idle.Round(time.Microsecond), "slept at least the idle time")
			p50, err := time.ParseDuration(f[len(f)-3])
			require.NoError(t, err)
			require.Positive(t, p50)
		}
	}
}

// A cluster measured again (-reuse) goes on where its writers left off: a
// writer whose pool exists deletes it first, so no call fails.
func TestAPICluster_measuredTwiceWithoutErrors(t *testing.T) {
	a := newAPI("wal", "all", 1)
	defer a.close()
	for i := range 2 {
		r := a.measure(3, 100*time.Millisecond, 400*time.Millisecond, false)
		require.Positive(t, r.writes, "measurement %d", i)
		require.Zero(t, r.errors, "measurement %d", i)
		require.NotNil(t, r.stages, "measurement %d", i)
	}
	// Warm-ups included: every node's calls all succeeded.
	for _, s := range a.servers {
		for k, v := range scrape(s.HTTPAddr()) {
			if strings.HasPrefix(k, "grpc_server_handled_total{") && strings.Contains(k, "PoolService/") && !strings.Contains(k, `grpc_code="OK"`) {
				require.Zero(t, v, k)
			}
		}
	}
}
