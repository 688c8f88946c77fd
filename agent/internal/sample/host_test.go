package sample

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestHost_Sample_reportsPlausibleValues(t *testing.T) {
	h, err := New(DefaultConfig())
	require.NoError(t, err)
	ctx := context.Background()
	_, err = h.Sample(ctx)
	require.NoError(t, err)
	s, err := h.Sample(ctx)
	require.NoError(t, err)
	t.Logf("sample: %v", s)
	require.WithinDuration(t, time.Now(), s.GetTime().AsTime(), 5*time.Second)
	require.GreaterOrEqual(t, s.GetCpuPercent(), 0.0)
	require.LessOrEqual(t, s.GetCpuPercent(), 100.0)
	require.NotEmpty(t, s.GetCpuCorePercent())
	for _, c := range s.GetCpuCorePercent() {
		require.GreaterOrEqual(t, c, 0.0)
		require.LessOrEqual(t, c, 100.0)
	}
	require.Greater(t, s.GetMemoryUsedBytes(), uint64(0))
	require.Greater(t, s.GetMemoryUsedPercent(), 0.0)
	require.NotEmpty(t, s.GetDisks())
	for _, d := range s.GetDisks() {
		require.NotEmpty(t, d.GetMount())
		require.Greater(t, d.GetTotalBytes(), uint64(0))
	}
	require.GreaterOrEqual(t, s.GetDiskReadBytesPerSecond(), 0.0)
	require.GreaterOrEqual(t, s.GetNetRxBytesPerSecond(), 0.0)
	require.Greater(t, s.GetProcesses(), uint32(0))
}

func TestHost_Facts(t *testing.T) {
	h, err := New(DefaultConfig())
	require.NoError(t, err)
	f, err := h.Facts(context.Background())
	require.NoError(t, err)
	t.Logf("facts: %v", f)
	require.NotEmpty(t, f.GetHostname())
	require.Greater(t, f.GetCpuCount(), uint32(0))
	require.Greater(t, f.GetMemoryBytes(), uint64(0))
	require.NotEmpty(t, f.GetOs())
	require.NotEmpty(t, f.GetKernel())
	require.NotEmpty(t, f.GetAgentVersion())
	require.True(t, f.GetBootTime().AsTime().Before(time.Now()))
}

func TestHost_Facts_cpusetCountsItsCores(t *testing.T) {
	cfg := DefaultConfig()
	cfg.CPUs = []int{0}
	h, err := New(cfg)
	require.NoError(t, err)
	f, err := h.Facts(context.Background())
	require.NoError(t, err)
	require.EqualValues(t, 1, f.GetCpuCount(), "an agent of one core reports one")
}
