package agent

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/hostscale/hostscale/agent/internal/controllertest"
	"github.com/hostscale/hostscale/agent/internal/sample"
	"github.com/hostscale/hostscale/agent/internal/session"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// closedAddr returns a loopback address nobody listens on.
func closedAddr(t *testing.T) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := lis.Addr().String()
	require.NoError(t, lis.Close())
	return addr
}

func TestAgent_keepsSamplingWithoutControllers(t *testing.T) {
	fake := sample.NewFake()
	reg := prometheus.NewRegistry()
	sc := session.DefaultConfig()
	sc.Node = "n1"
	sc.Controllers = []string{closedAddr(t)}
	sc.Interval = 10 * time.Millisecond
	sc.BufferSize = 5
	sc.BackoffBase = 10 * time.Millisecond
	sc.BackoffMax = 50 * time.Millisecond
	a, err := New(Config{Sampler: fake, Session: sc, Registerer: reg})
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { require.NoError(t, a.Run(ctx)) })
	defer func() {
		cancel()
		wg.Wait()
	}()

	require.Eventually(t, func() bool { return fake.Taken() >= 12 }, 5*time.Second, 5*time.Millisecond)
	require.ErrorIs(t, a.Ready(), session.ErrNotConnected)
	require.Equal(t, 5, a.Session().Buffered())
	require.GreaterOrEqual(t, testutil.ToFloat64(a.samples), 12.0)

	// The latest sample is on /metrics.
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP hostscale_host_memory_used_percent Memory in use, percent of total.
# TYPE hostscale_host_memory_used_percent gauge
hostscale_host_memory_used_percent 50
# HELP hostscale_host_disk_used_percent Filesystem space in use, percent of total.
# TYPE hostscale_host_disk_used_percent gauge
hostscale_host_disk_used_percent{mount="/"} 40
`), "hostscale_host_memory_used_percent", "hostscale_host_disk_used_percent"))
	n, err := testutil.GatherAndCount(reg,
		"hostscale_agent_connected", "hostscale_agent_reconnects_total", "hostscale_agent_samples_total",
		"hostscale_agent_samples_dropped_total", "hostscale_agent_samples_buffered", "hostscale_agent_sample_seconds",
		"hostscale_host_cpu_percent", "hostscale_host_cpu_core_percent")
	require.NoError(t, err)
	require.Equal(t, 9, n)

	// Failures are counted and sampling goes on after them.
	fake.SetErr(errors.New("boom"))
	require.Eventually(t, func() bool { return testutil.ToFloat64(a.failures) >= 2 }, 5*time.Second, 5*time.Millisecond)
	fake.SetErr(nil)
	taken := fake.Taken()
	require.Eventually(t, func() bool { return fake.Taken() > taken }, 5*time.Second, 5*time.Millisecond)
}

func TestAgent_samplesCarryInstanceUsage(t *testing.T) {
	c := controllertest.Start(t, "c1")
	var calls atomic.Uint64
	usage := func() []*pb.InstanceUsage {
		n := calls.Add(1)
		return []*pb.InstanceUsage{
			{Id: "web-1", CpuPercent: float64(n), RssBytes: n << 20},
			{Id: "web-2", CpuPercent: 150, RssBytes: 1 << 30},
		}
	}
	sc := session.DefaultConfig()
	sc.Node = "n1"
	sc.Controllers = []string{c.Addr()}
	sc.Interval = 10 * time.Millisecond
	a, err := New(Config{Sampler: sample.NewFake(), Session: sc, Usage: usage})
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { require.NoError(t, a.Run(ctx)) })
	defer func() {
		cancel()
		wg.Wait()
	}()

	require.Eventually(t, func() bool { return len(c.Samples()) >= 5 }, 10*time.Second, 5*time.Millisecond)
	// Each sample has a reading of its own, taken as it was, in order.
	prev := 0.0
	for _, s := range c.Samples() {
		in := s.GetInstances()
		require.Len(t, in, 2, "sample %d", s.GetProcesses())
		require.Equal(t, "web-1", in[0].GetId())
		require.Greater(t, in[0].GetCpuPercent(), prev)
		prev = in[0].GetCpuPercent()
		require.EqualValues(t, uint64(prev)<<20, in[0].GetRssBytes())
		require.Equal(t, "web-2", in[1].GetId())
		require.InDelta(t, 150.0, in[1].GetCpuPercent(), 0)
		require.EqualValues(t, 1<<30, in[1].GetRssBytes())
	}
}

func TestConfig_Validate(t *testing.T) {
	require.Error(t, Config{}.Validate())
	sc := session.DefaultConfig()
	require.Error(t, Config{Sampler: sample.NewFake(), Session: sc}.Validate(), "session config is checked too")
}
