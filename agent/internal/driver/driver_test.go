package driver

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/hostscale/hostscale/internal/commands"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

const (
	starting  = pb.InstanceState_INSTANCE_STATE_STARTING
	healthy   = pb.InstanceState_INSTANCE_STATE_HEALTHY
	unhealthy = pb.InstanceState_INSTANCE_STATE_UNHEALTHY
	stopping  = pb.InstanceState_INSTANCE_STATE_STOPPING
	exited    = pb.InstanceState_INSTANCE_STATE_EXITED
)

func TestDriver_Assign_startsEachInstanceHealthyOnItsOwnPort(t *testing.T) {
	t.Parallel()
	d := newDriver(t, testConfig(t, t.TempDir()))
	run(t, d)
	tcp := app(t, "serve")
	tcp.HealthPath = "" // a TCP connect is the check
	require.True(t, d.Assign(stamp(1, 1,
		assignment("web-1", "web", app(t, "serve")),
		assignment("web-2", "web", tcp),
	)))

	s1, s2 := waitHealthy(t, d, "web-1"), waitHealthy(t, d, "web-2")
	require.NotEqual(t, s1.GetAddress(), s2.GetAddress())
	require.NotEqual(t, s1.GetPid(), s2.GetPid())
	for _, s := range []*pb.InstanceStatus{s1, s2} {
		require.True(t, strings.HasPrefix(s.GetAddress(), "127.0.0.1:"), s.GetAddress())
		require.NotZero(t, s.GetPid())
		require.Equal(t, "web", s.GetPool())
		require.Zero(t, s.GetRestarts())
		require.Equal(t, s.GetId()+" web node-a", get(t, "http://"+s.GetAddress()+"/"))
	}
	require.Len(t, d.Report().GetInstances(), 2)
}

func TestDriver_Assign_stopsUnassignedInstanceWithItsStopSignal(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	d := newDriver(t, testConfig(t, dataDir))
	run(t, d)
	rec := record(t, d)
	require.True(t, d.Assign(stamp(1, 1,
		assignment("web-1", "web", app(t, "serve")),
		// Lingers after SIGTERM, so that STOPPING is seen.
		assignment("web-2", "web", app(t, "serve", envStopDelay, "300ms")),
	)))
	keep, drop := waitHealthy(t, d, "web-1"), waitHealthy(t, d, "web-2")

	require.True(t, d.Assign(stamp(1, 2, assignment("web-1", "web", app(t, "serve")))))
	eventually(t, 10*time.Second, func() bool { return status(d, "web-2") == nil }, "web-2 still reported")

	require.True(t, processGone(int(drop.GetPid())))
	out, err := os.ReadFile(filepath.Join(dataDir, "instances", "web-2", "stdout.log"))
	require.NoError(t, err)
	require.Contains(t, string(out), "got signal terminated")
	require.True(t, rec.saw(func(s *pb.InstanceStatus) bool {
		return s.GetId() == "web-2" && s.GetState() == stopping && strings.Contains(s.GetMessage(), "SIGTERM")
	}), "web-2 was never reported STOPPING")
	// The other one is untouched.
	now := status(d, "web-1")
	require.Equal(t, healthy, now.GetState())
	require.Equal(t, keep.GetPid(), now.GetPid())
}

func TestDriver_restartsKilledInstance(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, t.TempDir())
	cfg.RestartBase = 300 * time.Millisecond // long enough for the recorder to see EXITED
	cfg.Registerer = prometheus.NewRegistry()
	d := newDriver(t, cfg)
	run(t, d)
	rec := record(t, d)
	require.True(t, d.Assign(stamp(1, 1, assignment("web-1", "web", app(t, "serve")))))
	before := waitHealthy(t, d, "web-1")

	require.NoError(t, syscall.Kill(int(before.GetPid()), syscall.SIGKILL))
	eventually(t, 15*time.Second, func() bool {
		s := status(d, "web-1")
		return s.GetState() == healthy && s.GetPid() != before.GetPid() && s.GetRestarts() == 1
	}, "web-1 not restarted")
	require.True(t, rec.saw(func(s *pb.InstanceStatus) bool {
		return s.GetState() == exited && s.GetExitCode() == -1 && s.GetPid() == 0 &&
			strings.Contains(s.GetMessage(), "killed by SIGKILL; restart 1 in")
	}), "the exit was never reported")
	require.Equal(t, 1.0, testutil.ToFloat64(d.exits.WithLabelValues("web", "signal")), "the kill is counted")
}

func TestDriver_restartAvoidsItsPortTakenOnAnotherAddress(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, t.TempDir())
	cfg.RestartBase = time.Second
	d := newDriver(t, cfg)
	run(t, d)
	require.True(t, d.Assign(stamp(1, 1, assignment("web-1", "web", app(t, "serve")))))
	before := waitHealthy(t, d, "web-1")
	_, port, err := net.SplitHostPort(before.GetAddress())
	require.NoError(t, err)

	// While the instance is down, something else takes its port on another
	// address of the host; an app binding ":$PORT" could not start there.
	require.NoError(t, syscall.Kill(int(before.GetPid()), syscall.SIGKILL))
	eventually(t, 5*time.Second, func() bool { return inState(d, "web-1", exited) })
	other, err := net.Listen("tcp", net.JoinHostPort("127.0.0.9", port))
	require.NoError(t, err)
	defer other.Close()
	eventually(t, 15*time.Second, func() bool {
		s := status(d, "web-1")
		return s.GetState() == healthy && s.GetPid() != before.GetPid()
	}, "web-1 not restarted")
	require.NotEqual(t, before.GetAddress(), status(d, "web-1").GetAddress())
}

func TestDriver_backsOffCommandThatAlwaysExits(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, t.TempDir())
	cfg.RestartBase, cfg.RestartMax = 100*time.Millisecond, 400*time.Millisecond
	cfg.Registerer = prometheus.NewRegistry()
	d := newDriver(t, cfg)
	run(t, d)
	began := time.Now()
	require.True(t, d.Assign(stamp(1, 1, assignment("bad-1", "bad", app(t, "exit1")))))

	eventually(t, 15*time.Second, func() bool { return status(d, "bad-1").GetRestarts() >= 5 })
	// Five restarts wait 100+200+400+400+400ms at least.
	require.GreaterOrEqual(t, time.Since(began), 1500*time.Millisecond)
	eventually(t, 5*time.Second, func() bool { return inState(d, "bad-1", exited) })
	s := status(d, "bad-1")
	require.EqualValues(t, 1, s.GetExitCode())
	require.Contains(t, s.GetMessage(), "exited with code 1; restart")
	require.Contains(t, s.GetMessage(), "in 400ms")
	require.GreaterOrEqual(t, testutil.ToFloat64(d.exits.WithLabelValues("bad", "code")), 5.0)
}

func TestDriver_killsInstanceThatOutlivesItsStopGrace(t *testing.T) {
	t.Parallel()
	d := newDriver(t, testConfig(t, t.TempDir()))
	run(t, d)
	rec := record(t, d)
	tmpl := app(t, "slowstop")
	tmpl.StopGrace = durationpb.New(300 * time.Millisecond)
	require.True(t, d.Assign(stamp(1, 1, assignment("slow-1", "slow", tmpl))))
	s := waitHealthy(t, d, "slow-1")

	began := time.Now()
	require.True(t, d.Assign(stamp(1, 2)))
	eventually(t, 10*time.Second, func() bool { return status(d, "slow-1") == nil })
	require.GreaterOrEqual(t, time.Since(began), 300*time.Millisecond)
	require.True(t, processGone(int(s.GetPid())))
	require.True(t, rec.saw(func(s *pb.InstanceStatus) bool {
		return s.GetState() == stopping && strings.Contains(s.GetMessage(), "sent SIGTERM; SIGKILL after 300ms")
	}), "the stop was never reported")
}

func TestDriver_Assign_refusesOlderStamp(t *testing.T) {
	t.Parallel()
	d := newDriver(t, testConfig(t, t.TempDir()))
	run(t, d)
	web := assignment("web-1", "web", app(t, "serve"))
	require.True(t, d.Assign(stamp(2, 5, web)))
	before := waitHealthy(t, d, "web-1")

	require.False(t, d.Assign(stamp(1, 9)), "older term")
	require.False(t, d.Assign(stamp(2, 4)), "same term, older index")
	require.True(t, d.Assign(stamp(2, 5, web)), "the same stamp again")
	require.True(t, d.Assign(stamp(3, 1, web)), "newer term, lower index")
	require.False(t, d.Assign(stamp(2, 6)), "older term, higher index")

	after := status(d, "web-1")
	require.Equal(t, healthy, after.GetState())
	require.Equal(t, before.GetPid(), after.GetPid())
	require.Len(t, d.Report().GetInstances(), 1)
}

func TestDriver_adoptsInstanceOfPreviousRun(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	d1 := newDriver(t, testConfig(t, dataDir))
	stop1 := run(t, d1)
	require.True(t, d1.Assign(stamp(1, 1, assignment("web-1", "web", app(t, "serve")))))
	first := waitHealthy(t, d1, "web-1")
	stop1()
	require.False(t, processGone(int(first.GetPid())), "Run's end stopped the instance")

	d2 := newDriver(t, testConfig(t, dataDir))
	adopted := status(d2, "web-1")
	require.Equal(t, starting, adopted.GetState())
	require.Equal(t, first.GetPid(), adopted.GetPid())
	require.Equal(t, first.GetAddress(), adopted.GetAddress())
	run(t, d2)
	waitHealthy(t, d2, "web-1")
	require.Equal(t, []int{int(first.GetPid())}, appProcesses(t.Name()))

	// Kept when assigned: still the same process.
	require.True(t, d2.Assign(stamp(1, 2, assignment("web-1", "web", app(t, "serve")))))
	require.Equal(t, "web-1 web node-a", get(t, "http://"+first.GetAddress()+"/"))
	s := status(d2, "web-1")
	require.Equal(t, first.GetPid(), s.GetPid())
	require.Zero(t, s.GetRestarts())
	require.Equal(t, []int{int(first.GetPid())}, appProcesses(t.Name()))

	// Stopped when not.
	require.True(t, d2.Assign(stamp(1, 3)))
	eventually(t, 10*time.Second, func() bool { return status(d2, "web-1") == nil })
	eventually(t, 5*time.Second, func() bool { return processGone(int(first.GetPid())) })
}

func TestDriver_adoptedInstanceThatExitsWaitsForAssignments(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	d1 := newDriver(t, testConfig(t, dataDir))
	stop1 := run(t, d1)
	require.True(t, d1.Assign(stamp(1, 1, assignment("web-1", "web", app(t, "serve")))))
	first := waitHealthy(t, d1, "web-1")
	stop1()

	d2 := newDriver(t, testConfig(t, dataDir))
	run(t, d2)
	waitHealthy(t, d2, "web-1")
	require.NoError(t, syscall.Kill(int(first.GetPid()), syscall.SIGKILL))
	eventually(t, 10*time.Second, func() bool { return inState(d2, "web-1", exited) })
	s := status(d2, "web-1")
	require.EqualValues(t, -1, s.GetExitCode())
	require.Zero(t, s.GetPid())
	require.Contains(t, s.GetMessage(), "exited while adopted; waiting for assignments")

	require.True(t, d2.Assign(stamp(1, 2, assignment("web-1", "web", app(t, "serve")))))
	eventually(t, 15*time.Second, func() bool {
		s := status(d2, "web-1")
		return s.GetState() == healthy && s.GetRestarts() == 1
	})
}

func TestNew_persistedStampRefusesOlderAssignAfterRestart(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	d1 := newDriver(t, testConfig(t, dataDir))
	require.True(t, d1.Assign(stamp(3, 10)))

	d2 := newDriver(t, testConfig(t, dataDir))
	require.False(t, d2.Assign(stamp(3, 9)))
	require.False(t, d2.Assign(stamp(2, 100)))
	require.True(t, d2.Assign(stamp(3, 10)))
	require.True(t, d2.Assign(stamp(4, 0)))
}

func TestNew_refusesUnusableStateFile(t *testing.T) {
	t.Parallel()
	for name, content := range map[string]string{
		"not json":      "{garbage",
		"other version": `{"version": 99}`,
		"bad pid":       `{"version": 1, "instances": [{"id": "a-1", "pid": 0, "port": 80}]}`,
		"bad id":        `{"version": 1, "instances": [{"id": "../x", "pid": 1, "port": 80}]}`,
	} {
		t.Run(name, func(t *testing.T) {
			dataDir := t.TempDir()
			path := filepath.Join(dataDir, "instances", "state.json")
			require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
			require.NoError(t, os.WriteFile(path, []byte(content), 0o644))
			_, err := New(testConfig(t, dataDir))
			require.ErrorContains(t, err, path)
		})
	}
}

func TestDriver_boundsLogFiles(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	cfg := testConfig(t, dataDir)
	cfg.LogMaxBytes = 4096
	d := newDriver(t, cfg)
	run(t, d)
	require.True(t, d.Assign(stamp(1, 1, assignment("log-1", "log", app(t, "serve", envSpam, "20000")))))
	waitHealthy(t, d, "log-1")

	dir := filepath.Join(dataDir, "instances", "log-1")
	size := func(name string) int64 {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			return -1
		}
		return fi.Size()
	}
	for _, name := range []string{"stdout.log", "stderr.log"} {
		eventually(t, 10*time.Second, func() bool {
			return size(name+".1") > 0 && size(name+".1") <= 4096 && size(name) >= 0 && size(name) <= 4096
		}, "%s not rotated: %d and %d bytes", name, size(name), size(name+".1"))
	}
}

func TestDriver_Assign_reportsUnstartableInstanceAsExited(t *testing.T) {
	t.Parallel()
	d := newDriver(t, testConfig(t, t.TempDir()))
	run(t, d)
	relative := app(t, "serve")
	relative.WorkingDir = "relative/dir"
	cases := map[string]struct {
		tmpl *pb.InstanceTemplate
		want string
	}{
		"no-template-1": {nil, "the assignment has no template"},
		"no-command-1":  {&pb.InstanceTemplate{}, "the template has no command"},
		"not-found-1":   {&pb.InstanceTemplate{Command: "hostscale-no-such-command"}, "executable file not found"},
		"relative-1":    {relative, "not absolute"},
	}
	var as []*pb.Assignment
	for id, c := range cases {
		as = append(as, assignment(id, "bad", c.tmpl))
	}
	require.True(t, d.Assign(stamp(1, 1, as...)))
	for id, c := range cases {
		eventually(t, 5*time.Second, func() bool { return inState(d, id, exited) }, id)
		s := status(d, id)
		require.EqualValues(t, -1, s.GetExitCode(), id)
		require.True(t, strings.HasPrefix(s.GetMessage(), "cannot start: "), s.GetMessage())
		require.Contains(t, s.GetMessage(), c.want, id)
		require.Contains(t, s.GetMessage(), "; restart", id)
	}
}

func TestDriver_turnsUnhealthyAfterFailedChecksAndBack(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	d := newDriver(t, testConfig(t, dataDir))
	run(t, d)
	require.True(t, d.Assign(stamp(1, 1, assignment("web-1", "web", app(t, "serve")))))
	waitHealthy(t, d, "web-1")

	marker := filepath.Join(dataDir, "instances", "web-1", "unhealthy")
	require.NoError(t, os.WriteFile(marker, nil, 0o644))
	eventually(t, 10*time.Second, func() bool { return inState(d, "web-1", unhealthy) })
	require.Contains(t, status(d, "web-1").GetMessage(), "503")
	require.NoError(t, os.Remove(marker))
	waitHealthy(t, d, "web-1")
}

func TestDriver_StopAll_stopsEveryInstance(t *testing.T) {
	t.Parallel()
	d := newDriver(t, testConfig(t, t.TempDir()))
	run(t, d)
	require.True(t, d.Assign(stamp(1, 1,
		assignment("web-1", "web", app(t, "serve")),
		assignment("web-2", "web", app(t, "serve")),
	)))
	s1, s2 := waitHealthy(t, d, "web-1"), waitHealthy(t, d, "web-2")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d.StopAll(ctx)
	require.Empty(t, d.Report().GetInstances())
	require.True(t, processGone(int(s1.GetPid())))
	require.True(t, processGone(int(s2.GetPid())))
	require.False(t, d.Assign(stamp(2, 1, assignment("web-1", "web", app(t, "serve")))), "Assign after StopAll")
}

func TestDriver_startsNothingBeforeRun(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, t.TempDir())
	epoch := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	cfg.Now = func() time.Time { return epoch }
	d := newDriver(t, cfg)
	require.True(t, d.Assign(stamp(1, 1, assignment("web-1", "web", app(t, "serve")))))
	s := status(d, "web-1")
	require.Equal(t, pb.InstanceState_INSTANCE_STATE_PENDING, s.GetState())
	require.Zero(t, s.GetPid())
	require.True(t, s.GetSince().AsTime().Equal(epoch), "since comes from Config.Now")
	run(t, d)
	waitHealthy(t, d, "web-1")
}

func TestDriver_Changed_closesOnChange(t *testing.T) {
	t.Parallel()
	d := newDriver(t, testConfig(t, t.TempDir()))
	ch := d.Changed()
	select {
	case <-ch:
		t.Fatal("closed before any change")
	default:
	}
	require.True(t, d.Assign(stamp(1, 1, assignment("web-1", "web", app(t, "serve")))))
	select {
	case <-ch:
	default:
		t.Fatal("not closed when an instance was added")
	}
}

func TestDriver_removesDirectoriesOfOldInstances(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	cfg := testConfig(t, dataDir)
	cfg.DirRetention, cfg.DirsKept = time.Hour, 1
	d := newDriver(t, cfg)
	require.True(t, d.Assign(stamp(1, 1, assignment("web-1", "web", app(t, "serve")))))

	inst := filepath.Join(dataDir, "instances")
	mkdir := func(name string, age time.Duration) string {
		dir := filepath.Join(inst, name)
		require.NoError(t, os.MkdirAll(dir, 0o755))
		log := filepath.Join(dir, "stdout.log")
		require.NoError(t, os.WriteFile(log, []byte("out\n"), 0o644))
		at := time.Now().Add(-age)
		require.NoError(t, os.Chtimes(log, at, at))
		require.NoError(t, os.Chtimes(dir, at, at))
		return dir
	}
	web1 := mkdir("web-1", 3*time.Hour)    // assigned: kept however old
	stale := mkdir("web-0", 2*time.Hour)   // past the retention
	older := mkdir("api-3", 2*time.Minute) // recent, but one more than DirsKept
	newest := mkdir("api-4", time.Minute)  // the one kept
	notID := mkdir("not an id", 3*time.Hour)
	require.NoError(t, os.WriteFile(filepath.Join(inst, "notes.txt"), []byte("x"), 0o644))

	run(t, d) // collects at start
	waitHealthy(t, d, "web-1")
	for _, path := range []string{web1, newest, notID, filepath.Join(inst, "notes.txt")} {
		_, err := os.Stat(path)
		require.NoError(t, err, "kept")
	}
	for _, dir := range []string{stale, older} {
		require.NoDirExists(t, dir, "removed")
	}

	// Once web-1 is unassigned and stopped, its directory is the newest
	// old one: it stays, and api-4 goes.
	require.True(t, d.Assign(stamp(1, 2)))
	eventually(t, 10*time.Second, func() bool { return status(d, "web-1") == nil }, "web-1 still reported")
	d.collectDirs()
	require.DirExists(t, web1)
	require.NoDirExists(t, newest)
	_, err := os.Stat(filepath.Join(inst, "state.json"))
	require.NoError(t, err, "the state file is not an instance's")
}

func TestDriver_runsOnlyAllowedCommands(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, t.TempDir())
	exe, err := os.Executable()
	require.NoError(t, err)
	cfg.AllowCommands, err = commands.New([]string{filepath.Dir(exe) + "/*"})
	require.NoError(t, err)
	cfg.Registerer = prometheus.NewRegistry()
	d := newDriver(t, cfg)
	run(t, d)

	preload := app(t, "serve", "LD_PRELOAD", "/tmp/evil.so")
	require.True(t, d.Assign(stamp(1, 1,
		assignment("web-1", "web", app(t, "serve")),
		assignment("sh-1", "shell", &pb.InstanceTemplate{Command: "sh", Args: []string{"-c", "sleep 60"}}),
		assignment("bin-1", "shell", &pb.InstanceTemplate{Command: "/bin/sleep", Args: []string{"60"}}),
		assignment("dots-1", "shell", &pb.InstanceTemplate{Command: filepath.Dir(exe) + "/../../../../../../../bin/sleep", Args: []string{"60"}}),
		assignment("preload-1", "preload", preload),
		assignment("gconv-1", "preload", app(t, "serve", "GCONV_PATH", "/tmp/gconv")),
	)))
	waitHealthy(t, d, "web-1")
	for id, want := range map[string]string{
		"sh-1":      "sh is not an allowed command on this host (-allow-commands " + filepath.Dir(exe) + "/*)",
		"bin-1":     "/bin/sleep is not an allowed command",
		"dots-1":    "/bin/sleep is not an allowed command",
		"preload-1": "env LD_PRELOAD: the dynamic loader's variables (LD_*, GCONV_PATH) are not allowed",
		"gconv-1":   "env GCONV_PATH: the dynamic loader's variables",
	} {
		eventually(t, 5*time.Second, func() bool { return inState(d, id, exited) }, id)
		s := status(d, id)
		require.Contains(t, s.GetMessage(), want, id)
		require.Zero(t, s.GetPid(), "%s never ran", id)
	}
	// Refused starts are retried with back-off, as any failed start, and
	// counted each time.
	eventually(t, 5*time.Second, func() bool {
		return testutil.ToFloat64(d.refused.WithLabelValues("shell")) >= 6
	})
	require.GreaterOrEqual(t, testutil.ToFloat64(d.refused.WithLabelValues("preload")), 1.0)
	require.Zero(t, testutil.ToFloat64(d.refused.WithLabelValues("web")))
}
