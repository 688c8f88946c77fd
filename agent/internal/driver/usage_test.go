package driver

import (
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// usageByID returns d.Usage() by instance id.
func usageByID(d *Driver) map[string]*pb.InstanceUsage {
	m := make(map[string]*pb.InstanceUsage)
	for _, u := range d.Usage() {
		m[u.GetId()] = u
	}
	return m
}

// usageOver returns d's usage over a window of at least window: it calls
// Usage, waits until window has passed, and calls it again.
func usageOver(t *testing.T, d *Driver, window time.Duration) map[string]*pb.InstanceUsage {
	t.Helper()
	d.Usage()
	start := time.Now()
	eventually(t, window+5*time.Second, func() bool { return time.Since(start) >= window })
	return usageByID(d)
}

func TestDriver_Usage_reportsCPUAndMemoryOfEachRunningInstance(t *testing.T) {
	t.Parallel()
	d := newDriver(t, testConfig(t, t.TempDir()))
	run(t, d)
	require.Empty(t, d.Usage(), "nothing runs yet")
	require.True(t, d.Assign(stamp(1, 1,
		assignment("busy", "web", app(t, "spin")),
		assignment("idle", "web", app(t, "serve")),
	)))
	waitHealthy(t, d, "busy")
	waitHealthy(t, d, "idle")

	// A loaded machine may take a few windows to give the busy one its
	// core.
	var got map[string]*pb.InstanceUsage
	for deadline := time.Now().Add(20 * time.Second); ; {
		got = usageOver(t, d, 500*time.Millisecond)
		if got["busy"].GetCpuPercent() > 50 && got["idle"].GetCpuPercent() < 20 {
			break
		}
		require.True(t, time.Now().Before(deadline), "busy at %.1f%% and idle at %.1f%% of a core",
			got["busy"].GetCpuPercent(), got["idle"].GetCpuPercent())
	}
	require.Len(t, got, 2)
	for id, u := range got {
		require.Positive(t, u.GetRssBytes(), id)
		require.LessOrEqual(t, u.GetCpuPercent(), 100*float64(runtime.NumCPU()), id)
	}
	require.True(t, slices.IsSortedFunc(d.Usage(), func(a, b *pb.InstanceUsage) int {
		return strings.Compare(a.GetId(), b.GetId())
	}))

	// A stopped instance is no longer measured, nor remembered.
	require.True(t, d.Assign(stamp(1, 2, assignment("idle", "web", app(t, "serve")))))
	eventually(t, 10*time.Second, func() bool { return status(d, "busy") == nil }, "busy never stopped")
	got = usageByID(d)
	require.NotContains(t, got, "busy")
	require.Contains(t, got, "idle")
	d.usageMu.Lock()
	require.NotContains(t, d.usage, "busy")
	d.usageMu.Unlock()
}

func TestDriver_Usage_newProcessIsMeasuredFromItsStart(t *testing.T) {
	t.Parallel()
	d := newDriver(t, testConfig(t, t.TempDir()))
	run(t, d)
	require.True(t, d.Assign(stamp(1, 1, assignment("busy", "web", app(t, "spin")))))
	waitHealthy(t, d, "busy")

	// The last reading was of another process (the instance restarted) an
	// hour ago with no CPU: taken as the baseline, it would make the busy
	// one look idle. A loaded machine may take a while to give it its core.
	eventually(t, 20*time.Second, func() bool {
		d.usageMu.Lock()
		d.usage = map[string]usageMark{"busy": {pid: -1, at: time.Now().Add(-time.Hour)}}
		d.usageMu.Unlock()
		return usageByID(d)["busy"].GetCpuPercent() > 50
	}, "the busy one's CPU over its life is not above half a core")
}

func TestParseStatUsage_sumsOwnAndChildrenCPU(t *testing.T) {
	t.Parallel()
	// utime 1, stime 2, cutime 3, cstime 4, starttime 4242; the command
	// name holds ") (" and spaces.
	stat := "123 (a) (b c) S 1 123 123 0 -1 4194304 100 0 0 0 1 2 3 4 20 0 1 0 4242 1000 10 18446744073709551615\n"
	st, err := parseStatUsage([]byte(stat))
	require.NoError(t, err)
	require.Equal(t, statUsage{state: 'S', cpu: 10, start: 4242}, st)

	st, err = parseStatUsage([]byte(strings.Replace(stat, " 3 4 20 ", " -3 4 20 ", 1)))
	require.NoError(t, err)
	require.EqualValues(t, 7, st.cpu, "a negative child time counts as nothing")

	for _, bad := range []string{"", "123 (x", "123 (x) S 1 2",
		"123 (x) S 1 2 3 4 5 6 7 8 9 10 x 12 13 14 15 16 17 18 19",
		"123 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 nope"} {
		_, err := parseStatUsage([]byte(bad))
		require.Error(t, err, bad)
	}
}

func TestParseStatm_readsResidentPages(t *testing.T) {
	t.Parallel()
	n, err := parseStatm([]byte("5000 1234 300 10 0 900 0\n"))
	require.NoError(t, err)
	require.EqualValues(t, 1234, n)
	for _, bad := range []string{"", "5000", "5000 -1 3", "5000 x"} {
		_, err := parseStatm([]byte(bad))
		require.Error(t, err, bad)
	}
}

func TestParseUptime(t *testing.T) {
	t.Parallel()
	v, err := parseUptime([]byte("350735.47 234388.90\n"))
	require.NoError(t, err)
	require.InDelta(t, 350735.47, v, 1e-9)
	for _, bad := range []string{"", "x 1", "-1 2", "NaN 1", "Inf 1"} {
		_, err := parseUptime([]byte(bad))
		require.Error(t, err, bad)
	}
	v, err = readUptime()
	require.NoError(t, err)
	require.Positive(t, v)
}

func TestCPUPercent(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name    string
		ticks   uint64
		seconds float64
		want    float64
	}{
		{"one core busy", 100, 1, 100},
		{"two cores busy", 100, 0.5, 200},
		{"idle", 0, 1, 0},
		{"capped", 1000, 1, 400},
		{"no time passed", 5, 0, 0},
		{"clock went back", 5, -1, 0},
	} {
		require.InDelta(t, c.want, cpuPercent(c.ticks, c.seconds, 400), 1e-9, c.name)
	}
}

func TestDriver_Usage_readsOwnProcessFiles(t *testing.T) {
	t.Parallel()
	// The files Usage reads parse on this kernel.
	b, err := os.ReadFile("/proc/self/stat")
	require.NoError(t, err)
	st, err := parseStatUsage(b)
	require.NoError(t, err)
	ticks, _, err := readStat(os.Getpid())
	require.NoError(t, err)
	require.Equal(t, ticks, st.start)
	b, err = os.ReadFile("/proc/self/statm")
	require.NoError(t, err)
	n, err := parseStatm(b)
	require.NoError(t, err)
	require.Positive(t, n)
}

func FuzzParseStatUsage(f *testing.F) {
	f.Add([]byte("1 (init) S 0 1 1 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 10 1 2 3\n"))
	f.Add([]byte("2 ()) R"))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := parseStatUsage(b)
		if err != nil {
			return
		}
		ticks, state, err := parseStat(b)
		require.NoError(t, err, "parseStat refuses what parseStatUsage reads")
		require.Equal(t, ticks, st.start)
		require.Equal(t, state, st.state)
	})
}

func FuzzParseStatm(f *testing.F) {
	f.Add([]byte("5000 1234 300 10 0 900 0\n"))
	f.Add([]byte("1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = parseStatm(b)
	})
}

func FuzzParseUptime(f *testing.F) {
	f.Add([]byte("350735.47 234388.90\n"))
	f.Add([]byte("1e400"))
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := parseUptime(b)
		if err != nil {
			return
		}
		require.False(t, math.IsNaN(v) || math.IsInf(v, 0) || v < 0, "%v", v)
	})
}
