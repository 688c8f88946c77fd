package sample

import (
	"testing"
	"time"

	"github.com/shirou/gopsutil/v3/cpu"
	"github.com/shirou/gopsutil/v3/disk"
	"github.com/stretchr/testify/require"
)

func TestCounterDelta(t *testing.T) {
	tests := []struct {
		name           string
		prev, cur, out uint64
	}{
		{"grows", 100, 150, 50},
		{"unchanged", 7, 7, 0},
		{"resetCountsFromZero", 1000, 30, 30},
		{"resetToZero", 1000, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.out, counterDelta(tt.prev, tt.cur))
		})
	}
}

func TestRates_sumsKnownNamesAndSurvivesResets(t *testing.T) {
	prev := counters{"eth0": {1000, 2000}, "eth1": {500, 500}, "gone": {9, 9}}
	cur := counters{"eth0": {3000, 2500}, "eth1": {100, 700}, "new0": {1 << 40, 1 << 40}}
	in, out := rates(prev, cur, 2*time.Second)
	// eth0 +2000/+500, eth1 reset: +100/+200, new0 unknown history: nothing.
	require.InDelta(t, 1050.0, in, 1e-9)
	require.InDelta(t, 350.0, out, 1e-9)

	in, out = rates(prev, cur, 0)
	require.Zero(t, in)
	require.Zero(t, out)
}

func TestCPUPercent(t *testing.T) {
	prev := cpu.TimesStat{User: 10, System: 10, Idle: 80}
	cur := cpu.TimesStat{User: 40, System: 20, Idle: 120, Iowait: 20}
	// total +100, idle+iowait +60: 40 % busy.
	require.InDelta(t, 40.0, cpuPercent(prev, cur), 1e-9)
	require.Zero(t, cpuPercent(cur, prev), "times going backwards give 0")
	require.Zero(t, cpuPercent(cur, cur))
	all := cpu.TimesStat{User: 1, System: 1}
	require.InDelta(t, 100.0, cpuPercent(cpu.TimesStat{}, all), 1e-9)

	sum := sumTimes([]cpu.TimesStat{prev, cur})
	require.InDelta(t, 50.0, sum.User, 1e-9)
	require.InDelta(t, 200.0, sum.Idle, 1e-9)
}

func TestRealMounts_skipsPseudoBindAndDuplicateDevices(t *testing.T) {
	parts := []disk.PartitionStat{
		{Device: "proc", Mountpoint: "/proc", Fstype: "proc"},
		{Device: "overlay", Mountpoint: "/", Fstype: "overlay"},
		{Device: "/dev/sda1", Mountpoint: "/", Fstype: "ext4"},
		{Device: "tmpfs", Mountpoint: "/run", Fstype: "tmpfs"},
		{Device: "/dev/sda1", Mountpoint: "/var/lib/docker", Fstype: "ext4"},
		{Device: "/dev/sdb1", Mountpoint: "/etc/hosts", Fstype: "ext4", Opts: []string{"rw", "bind"}},
		{Device: "/dev/sdb1", Mountpoint: "/var", Fstype: "xfs"},
		{Device: "/dev/loop0", Mountpoint: "/snap/core/1", Fstype: "squashfs"},
		{Device: "cgroup", Mountpoint: "/sys/fs/cgroup/cpu", Fstype: "cgroup"},
		{Device: "nfs1:/export", Mountpoint: "/mnt/nfs", Fstype: "nfs4"},
	}
	require.Equal(t, []string{"/", "/var", "/mnt/nfs"}, realMounts(parts))
}

func TestFake_isDeterministicAndOrdered(t *testing.T) {
	f := NewFake()
	ctx := t.Context()
	a, err := f.Sample(ctx)
	require.NoError(t, err)
	b, err := f.Sample(ctx)
	require.NoError(t, err)
	require.Equal(t, uint32(1), a.GetProcesses())
	require.Equal(t, uint32(2), b.GetProcesses())
	require.True(t, a.GetTime().AsTime().Before(b.GetTime().AsTime()))
	require.Equal(t, 2, f.Taken())
}
