package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/hostscale/hostscale/agent/internal/controllertest"
	"github.com/hostscale/hostscale/agent/internal/node"
)

// binary is the hostscale-agent built for these tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hostscale-agent-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "hostscale-agent")
	out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build hostscale-agent: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// proc is a running hostscale-agent.
type proc struct {
	cmd      *exec.Cmd
	done     chan struct{}
	mu       sync.Mutex
	logs     strings.Builder
	httpAddr string
}

var httpAddrRe = regexp.MustCompile(`http_addr=(\S+)`)

func start(t *testing.T, args ...string) *proc {
	t.Helper()
	return startCmd(t, exec.Command(binary, args...))
}

// startCmd starts the agent command cmd (exec.Command(binary, ...), or
// the same in a testcluster.Net host).
func startCmd(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{cmd: cmd, done: make(chan struct{})}
	stderr, err := p.cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, p.cmd.Start())
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.logs.WriteString(line + "\n")
			if m := httpAddrRe.FindStringSubmatch(line); m != nil && p.httpAddr == "" {
				p.httpAddr = m[1]
			}
			p.mu.Unlock()
		}
		_ = p.cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("agent log:\n%s", p.log())
		}
	})
	return p
}

func (p *proc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

func (p *proc) addr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.httpAddr
}

// stop sends SIGTERM and returns the exit code.
func (p *proc) stop(t *testing.T) int {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatal("agent did not stop on SIGTERM")
	}
	return p.cmd.ProcessState.ExitCode()
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// rssKiB reads a process's resident set size.
func rssKiB(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "unknown"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			return strings.TrimSpace(strings.TrimPrefix(l, "VmRSS:"))
		}
	}
	return "unknown"
}

func TestAgent_streamsRealSamplesAndKeepsNodeID(t *testing.T) {
	c := controllertest.Start(t, "c1")
	dataDir := filepath.Join(t.TempDir(), "data") // created by the agent
	args := []string{"-controllers", c.Addr(), "-interval", "100ms", "-data-dir", dataDir,
		"-http-addr", "127.0.0.1:0", "-labels", "zone=a,tier=web", "-log-level", "debug"}
	p := start(t, args...)

	require.Eventually(t, func() bool { return len(c.Samples()) >= 10 }, 15*time.Second, 20*time.Millisecond)
	stored, err := os.ReadFile(filepath.Join(dataDir, node.IDFile))
	require.NoError(t, err)
	id := strings.TrimSpace(string(stored))
	require.NoError(t, node.ValidateID(id))

	hellos := c.Hellos()
	require.NotEmpty(t, hellos)
	h := hellos[0]
	require.Equal(t, id, h.GetNode())
	require.Equal(t, map[string]string{"zone": "a", "tier": "web"}, h.GetLabels())
	require.Equal(t, 100*time.Millisecond, h.GetInterval().AsDuration())
	require.NotEmpty(t, h.GetFacts().GetHostname())
	require.Greater(t, h.GetFacts().GetCpuCount(), uint32(0))
	require.Greater(t, h.GetFacts().GetMemoryBytes(), uint64(0))
	require.NotEmpty(t, h.GetFacts().GetAgentVersion())

	var prev time.Time
	for i, s := range c.Samples() {
		require.GreaterOrEqual(t, s.GetCpuPercent(), 0.0, "sample %d", i)
		require.LessOrEqual(t, s.GetCpuPercent(), 100.0, "sample %d", i)
		require.Greater(t, s.GetMemoryUsedBytes(), uint64(0))
		require.Greater(t, s.GetMemoryUsedPercent(), 0.0)
		require.NotEmpty(t, s.GetDisks())
		require.Greater(t, s.GetProcesses(), uint32(0))
		require.True(t, s.GetTime().AsTime().After(prev), "samples in time order")
		prev = s.GetTime().AsTime()
	}

	require.Eventually(t, func() bool { return p.addr() != "" }, 5*time.Second, 10*time.Millisecond)
	code, _ := get(t, "http://"+p.addr()+"/readyz")
	require.Equal(t, http.StatusOK, code)
	code, _ = get(t, "http://"+p.addr()+"/healthz")
	require.Equal(t, http.StatusOK, code)
	code, _ = get(t, "http://"+p.addr()+"/debug/pprof/")
	require.Equal(t, http.StatusNotFound, code, "pprof only with -pprof")
	code, metrics := get(t, "http://"+p.addr()+"/metrics")
	require.Equal(t, http.StatusOK, code)
	for _, want := range []string{"hostscale_agent_connected 1", "hostscale_agent_samples_total ",
		"hostscale_agent_sample_seconds_bucket", "hostscale_host_cpu_percent ", "hostscale_host_memory_used_percent ",
		"hostscale_host_disk_used_percent{mount=", "hostscale_agent_info{node=\"" + id + "\""} {
		require.Contains(t, metrics, want)
	}
	t.Logf("agent RSS after %d samples at 100ms: %s", len(c.Samples()), rssKiB(p.cmd.Process.Pid))
	require.Equal(t, 0, p.stop(t))

	// Restarted without -node-id, the agent keeps its id.
	p = start(t, args...)
	require.Eventually(t, func() bool { return len(c.Hellos()) >= 2 }, 15*time.Second, 20*time.Millisecond)
	require.Equal(t, id, c.Hellos()[1].GetNode())
	require.Equal(t, 0, p.stop(t))

	// A different -node-id than the stored one is refused.
	p = start(t, append(args, "-node-id", "some-other-id")...)
	<-p.done
	require.Equal(t, 2, p.cmd.ProcessState.ExitCode())
	require.Contains(t, p.log(), "-node-id")
}

func TestAgent_readyOnlyWithLeader(t *testing.T) {
	c := controllertest.Start(t, "c1")
	c.Stop()
	p := start(t, "-controllers", c.Addr(), "-interval", "100ms", "-data-dir", t.TempDir(),
		"-http-addr", "127.0.0.1:0", "-node-id", "n1", "-pprof")
	require.Eventually(t, func() bool { return p.addr() != "" }, 5*time.Second, 10*time.Millisecond)
	code, body := get(t, "http://"+p.addr()+"/readyz")
	require.Equal(t, http.StatusServiceUnavailable, code, body)
	code, body = get(t, "http://"+p.addr()+"/debug/pprof/")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, "goroutine")
	// Sampling goes on without a controller.
	require.Eventually(t, func() bool {
		_, m := get(t, "http://"+p.addr()+"/metrics")
		return regexp.MustCompile(`(?m)^hostscale_agent_samples_buffered [1-9]`).MatchString(m)
	}, 10*time.Second, 50*time.Millisecond)
	c.Restart()
	require.Eventually(t, func() bool {
		code, _ := get(t, "http://"+p.addr()+"/readyz")
		return code == http.StatusOK
	}, 15*time.Second, 50*time.Millisecond)
	require.Eventually(t, func() bool {
		s := c.Samples()
		return len(s) > 0 && s[0].GetLate()
	}, 10*time.Second, 20*time.Millisecond, "samples buffered while down arrive late")
	require.Equal(t, 0, p.stop(t))
}

func TestAgent_badFlagsExit2NamingTheFlag(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "agent.conf")
	require.NoError(t, os.WriteFile(conf, []byte("interval = 1s\nno-such-key = 1\n"), 0o644))
	conf2 := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(conf2, []byte("two words\n"), 0o600))
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"labelsWithSpace", []string{"-labels", "a b"}, "-labels"},
		{"badLabelValue", []string{"-labels", "zone=-a"}, "-labels"},
		{"intervalTooShort", []string{"-interval", "1ms"}, "-interval"},
		{"noControllers", []string{"-controllers", ""}, "-controllers"},
		{"controllerWithoutPort", []string{"-controllers", "c1"}, "-controllers"},
		{"badNodeID", []string{"-node-id", "Not_A_Label"}, "-node-id"},
		{"bufferBelowInterval", []string{"-buffer", "500ms"}, "-buffer"},
		{"relativeMount", []string{"-mounts", "var"}, "-mounts"},
		{"cpusNotANumber", []string{"-cpus", "a-b"}, "-cpus"},
		{"cpusBackwards", []string{"-cpus", "3-1"}, "-cpus"},
		{"cpusBeyondTheMachine", []string{"-cpus", "4096"}, "-cpus"},
		{"advertiseNotAnIP", []string{"-advertise-addr", "host.example"}, "-advertise-addr"},
		{"badLogLevel", []string{"-log-level", "loud"}, "-log-level"},
		{"zeroDirRetention", []string{"-instance-dir-retention", "0s"}, "-instance-dir-retention"},
		{"noDirsKept", []string{"-instance-dirs-kept", "0"}, "-instance-dirs-kept"},
		{"badCgroups", []string{"-cgroups", "maybe"}, "-cgroups"},
		{"absoluteCgroupParent", []string{"-cgroup-parent", "/sys/fs/cgroup/x"}, "-cgroup-parent"},
		{"escapingCgroupParent", []string{"-cgroup-parent", "a/../.."}, "-cgroup-parent"},
		{"diskFreeAll", []string{"-disk-pressure-free", "100"}, "-disk-pressure-free"},
		{"diskFreeNaN", []string{"-disk-pressure-free", "NaN"}, "-disk-pressure-free"},
		{"memoryFreeNegative", []string{"-memory-pressure-free", "-1"}, "-memory-pressure-free"},
		{"negativeTransition", []string{"-pressure-transition", "-1s"}, "-pressure-transition"},
		{"relativeAllowedCommand", []string{"-allow-commands", "/usr/bin/*,bin/app"}, `-allow-commands: "bin/app": not an absolute path`},
		{"allowedCommandsInTheMiddle", []string{"-allow-commands", "/opt/**/bin"}, "-allow-commands: \"/opt/**/bin\": `**` is allowed only as the last element"},
		{"badAllowedPattern", []string{"-allow-commands", "/opt/[a-"}, "-allow-commands"},
		{"unknownFlag", []string{"-no-such-flag"}, "-no-such-flag"},
		{"missingTokenFile", []string{"-token-file", "/nonexistent/token"}, "-token-file: token file: open /nonexistent/token"},
		{"tokenFileWithTwoWords", []string{"-token-file", conf2}, "-token-file: token file " + conf2 + ": the token holds a space"},
		{"unknownConfigKey", []string{"-config", conf}, `agent.conf:2: unknown key "no-such-key"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"-data-dir", t.TempDir(), "-http-addr", ""}, tt.args...)
			out, err := exec.Command(binary, args...).CombinedOutput()
			var ee *exec.ExitError
			require.ErrorAs(t, err, &ee, "output: %s", out)
			require.Equal(t, 2, ee.ExitCode(), "output: %s", out)
			require.Contains(t, string(out), tt.want)
		})
	}
}

func TestAgent_version(t *testing.T) {
	out, err := exec.Command(binary, "-version").CombinedOutput()
	require.NoError(t, err)
	require.Contains(t, string(out), "hostscale-agent")
}

// cpuTicks reads a process's user+system CPU time in clock ticks.
func cpuTicks(t *testing.T, pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	require.NoError(t, err)
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	var utime, stime int64
	_, err = fmt.Sscan(f[11], &utime)
	require.NoError(t, err)
	_, err = fmt.Sscan(f[12], &stime)
	require.NoError(t, err)
	return utime + stime
}

// TestAgent_cost measures the agent's CPU share and RSS at the default 1 s
// interval while streaming to a controller. It runs only when
// HOSTSCALE_AGENT_COST is set to a duration (e.g. 60s).
func TestAgent_cost(t *testing.T) {
	d, err := time.ParseDuration(os.Getenv("HOSTSCALE_AGENT_COST"))
	if err != nil {
		t.Skip("set HOSTSCALE_AGENT_COST=60s to measure the agent's cost")
	}
	c := controllertest.Start(t, "c1")
	p := start(t, "-controllers", c.Addr(), "-data-dir", t.TempDir(), "-http-addr", "127.0.0.1:0", "-node-id", "cost")
	require.Eventually(t, func() bool { return len(c.Samples()) >= 2 }, 15*time.Second, 50*time.Millisecond)
	pid := p.cmd.Process.Pid
	t0, ticks0 := time.Now(), cpuTicks(t, pid)
	time.Sleep(d) // the measurement window itself
	ticks := cpuTicks(t, pid) - ticks0
	elapsed := time.Since(t0)
	const hz = 100 // USER_HZ on Linux
	share := float64(ticks) / hz / elapsed.Seconds() * 100
	t.Logf("over %s: %d samples sent, CPU %.3f%% of one core, RSS %s", elapsed.Round(time.Second), len(c.Samples()), share, rssKiB(pid))
	require.Equal(t, 0, p.stop(t))
}

func TestParseFlags_shippedExampleConfigIsValid(t *testing.T) {
	var stderr bytes.Buffer
	o, err := parseFlags([]string{"-config", "../../../deployments/config/agent.conf"}, &stderr)
	require.NoError(t, err, stderr.String())
	require.Len(t, o.controllers, 3)
	require.Equal(t, map[string]string{"zone": "a", "tier": "web"}, o.labels)
	require.Equal(t, "10.0.1.11", o.advertise)
	require.Equal(t, 10.0, o.diskFree)
	require.Equal(t, 5.0, o.memoryFree)
}
