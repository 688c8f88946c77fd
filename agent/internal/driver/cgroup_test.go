package driver

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// touch makes the control files the kernel would make in a group.
func touch(t *testing.T, dir string, files ...string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(dir, 0o755))
	for _, f := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, f), nil, 0o644))
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return string(b)
}

// On a unified hierarchy (v2): the controllers are enabled down to the
// parent, an instance's group gets cpu.max and memory.max (and no swap),
// its process is moved in, and the kernel's OOM kills are read back.
func TestCgroups_v2Layout(t *testing.T) {
	root := t.TempDir()
	touch(t, root, "cgroup.controllers", "cgroup.subtree_control")
	touch(t, filepath.Join(root, "hostscale"), "cgroup.subtree_control")
	touch(t, filepath.Join(root, "hostscale", "web-1"), "cpu.max", "memory.max", "memory.swap.max", "cgroup.procs", "memory.events")
	cg, err := openCgroups(root, "hostscale")
	require.NoError(t, err)
	require.True(t, cg.v2)
	require.Equal(t, "+cpu +memory", readFile(t, filepath.Join(root, "cgroup.subtree_control")))
	require.Equal(t, "+cpu +memory", readFile(t, filepath.Join(root, "hostscale", "cgroup.subtree_control")))

	require.NoError(t, cg.prepare("web-1", &pb.InstanceResources{CpuMillicores: 500, MemoryBytes: 64 << 20}))
	dir := filepath.Join(root, "hostscale", "web-1")
	require.Equal(t, "50000 100000", readFile(t, filepath.Join(dir, "cpu.max")))
	require.Equal(t, "67108864", readFile(t, filepath.Join(dir, "memory.max")))
	require.Equal(t, "0", readFile(t, filepath.Join(dir, "memory.swap.max")))
	require.NoError(t, cg.join("web-1", 4242))
	require.Equal(t, "4242", readFile(t, filepath.Join(dir, "cgroup.procs")))
	require.Equal(t, []string{"web-1"}, cg.groups())

	require.Zero(t, cg.oomKills("web-1"))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "memory.events"), []byte("low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n"), 0o644))
	require.Equal(t, 1, cg.oomKills("web-1"))

	// Cores only: memory unbounded; the smallest quota the kernel takes.
	require.NoError(t, cg.prepare("web-1", &pb.InstanceResources{CpuMillicores: 1}))
	require.Equal(t, "1000 100000", readFile(t, filepath.Join(dir, "cpu.max")))
	require.Equal(t, "max", readFile(t, filepath.Join(dir, "memory.max")))
	require.Equal(t, "max", readFile(t, filepath.Join(dir, "memory.swap.max")))
}

// On v1: the cpu and memory controllers' groups get the CFS quota and the
// memory limit (memory+swap too, where the kernel accounts it).
func TestCgroups_v1Layout(t *testing.T) {
	root := t.TempDir()
	touch(t, filepath.Join(root, "cpu"), "cgroup.procs")
	touch(t, filepath.Join(root, "memory"), "cgroup.procs")
	cpu, mem := filepath.Join(root, "cpu", "hs", "web-2"), filepath.Join(root, "memory", "hs", "web-2")
	touch(t, cpu, "cpu.cfs_period_us", "cpu.cfs_quota_us", "cgroup.procs")
	touch(t, mem, "memory.limit_in_bytes", "memory.oom_control", "cgroup.procs")
	cg, err := openCgroups(root, "hs")
	require.NoError(t, err)
	require.False(t, cg.v2)

	require.NoError(t, cg.prepare("web-2", &pb.InstanceResources{CpuMillicores: 250}))
	require.Equal(t, "100000", readFile(t, filepath.Join(cpu, "cpu.cfs_period_us")))
	require.Equal(t, "25000", readFile(t, filepath.Join(cpu, "cpu.cfs_quota_us")))
	require.Equal(t, "-1", readFile(t, filepath.Join(mem, "memory.limit_in_bytes")))
	_, err = os.Stat(filepath.Join(mem, "memory.memsw.limit_in_bytes"))
	require.ErrorIs(t, err, os.ErrNotExist, "no swap accounting: the file is not made")

	touch(t, mem, "memory.memsw.limit_in_bytes")
	require.NoError(t, cg.prepare("web-2", &pb.InstanceResources{MemoryBytes: 32 << 20}))
	require.Equal(t, "-1", readFile(t, filepath.Join(cpu, "cpu.cfs_quota_us")))
	require.Equal(t, "33554432", readFile(t, filepath.Join(mem, "memory.limit_in_bytes")))
	require.Equal(t, "33554432", readFile(t, filepath.Join(mem, "memory.memsw.limit_in_bytes")))

	require.NoError(t, cg.join("web-2", 77))
	require.Equal(t, "77", readFile(t, filepath.Join(cpu, "cgroup.procs")))
	require.Equal(t, "77", readFile(t, filepath.Join(mem, "cgroup.procs")))
	require.NoError(t, os.WriteFile(filepath.Join(mem, "memory.oom_control"), []byte("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"), 0o644))
	require.Equal(t, 2, cg.oomKills("web-2"))
	require.Equal(t, []string{"web-2"}, cg.groups())
}

// Without a cgroup file system: an error under auto is a warning and
// instances run unlimited; under on the driver does not start. Bad modes
// and parents are refused by name.
func TestCgroups_absentOrMisconfigured(t *testing.T) {
	_, err := openCgroups(t.TempDir(), "hostscale")
	require.ErrorContains(t, err, "no cgroup v2 nor a v1 cpu controller")

	cfg := testConfig(t, t.TempDir())
	cfg.CgroupRoot = t.TempDir()
	cfg.Cgroups = CgroupsOn
	_, err = New(cfg)
	require.ErrorContains(t, err, "cgroups")

	cfg.Cgroups = CgroupsAuto
	d := newDriver(t, cfg)
	require.Nil(t, d.cg)

	for _, bad := range []struct{ mode, parent, want string }{
		{"maybe", "hostscale", `Cgroups is "maybe"`},
		{CgroupsAuto, "/sys/fs/cgroup/x", "CgroupParent"},
		{CgroupsAuto, "a/../../b", "CgroupParent"},
	} {
		c := cfg
		c.Cgroups, c.CgroupParent = bad.mode, bad.parent
		require.ErrorContains(t, c.Validate(), bad.want)
	}
}

// realCgroups returns a driver config whose instances are held in real
// cgroups under a parent of this test's own, or skips the test where the
// machine has none the agent may write.
func realCgroups(t *testing.T) Config {
	t.Helper()
	parent := fmt.Sprintf("hostscale-test-%d", os.Getpid())
	cg, err := openCgroups("/sys/fs/cgroup", parent)
	if err != nil {
		t.Skipf("no writable cgroups here: %v", err)
	}
	t.Cleanup(func() {
		for _, dir := range cg.dirs() {
			_ = os.Remove(dir)
		}
	})
	cfg := testConfig(t, t.TempDir())
	cfg.Cgroups, cfg.CgroupParent = CgroupsOn, parent
	t.Cleanup(func() {
		for _, dir := range cg.dirs() {
			_ = os.Remove(filepath.Join(dir, cfg.Node))
		}
	})
	return cfg
}

// Real cgroups: an instance that spins a core is held to its 200
// millicores; one that keeps taking memory is killed at its 64 MiB and
// says so; their groups are gone once they are.
func TestDriver_enforcesReservationsInCgroups(t *testing.T) {
	cfg := realCgroups(t)
	cfg.Registerer = prometheus.NewRegistry()
	d := newDriver(t, cfg)
	run(t, d)
	spin := app(t, "spin")
	spin.Resources = &pb.InstanceResources{CpuMillicores: 200}
	hog := app(t, "hog")
	hog.Resources = &pb.InstanceResources{MemoryBytes: 64 << 20}
	require.True(t, d.Assign(stamp(1, 1, assignment("spin-1", "spin", spin), assignment("hog-1", "hog", hog))))
	st := waitHealthy(t, d, "spin-1")

	cgroupOf, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", st.GetPid()))
	require.NoError(t, err)
	require.Contains(t, string(cgroupOf), cfg.CgroupParent+"/"+cfg.Node+"/spin-1")

	// CPU over two seconds of samples, after a first reading.
	usage := func() float64 {
		for _, u := range d.Usage() {
			if u.GetId() == "spin-1" {
				return u.GetCpuPercent()
			}
		}
		return -1
	}
	usage()
	var samples []float64
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for range 8 {
		<-tick.C
		samples = append(samples, usage())
	}
	mean := 0.0
	for _, s := range samples {
		mean += s
	}
	mean /= float64(len(samples))
	t.Logf("spin-1 at 200 millicores: %.1f%% of a core (samples %v)", mean, samples)
	require.Less(t, mean, 30.0, "a 200-millicore instance took more than its share")
	require.Greater(t, mean, 10.0, "the spinning instance hardly ran")

	eventually(t, 30*time.Second, func() bool {
		return strings.Contains(status(d, "hog-1").GetMessage(), "out of memory at its reservation of 64 MiB")
	}, "hog-1 was not killed for its memory: %v", status(d, "hog-1"))
	t.Logf("hog-1: %s", status(d, "hog-1").GetMessage())
	require.GreaterOrEqual(t, testutil.ToFloat64(d.exits.WithLabelValues("hog", "oom")), 1.0, "the OOM kill is counted")
	require.Zero(t, testutil.ToFloat64(d.exits.WithLabelValues("hog", "signal")), "as an OOM kill, not a signal")

	require.True(t, d.Assign(stamp(1, 2)))
	eventually(t, 20*time.Second, func() bool { return len(d.Report().GetInstances()) == 0 })
	cg, err := openCgroups("/sys/fs/cgroup", filepath.Join(cfg.CgroupParent, cfg.Node))
	require.NoError(t, err)
	eventually(t, 10*time.Second, func() bool {
		d.collectDirs()
		return !slices.Contains(cg.groups(), "spin-1") && !slices.Contains(cg.groups(), "hog-1")
	}, "groups left: %v", cg.groups())
}
