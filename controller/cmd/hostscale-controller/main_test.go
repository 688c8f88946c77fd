package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hostscale/hostscale/internal/testcluster"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hostscale-controller-test")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "hostscale-controller")
	out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build controller: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func TestRun_badFlagsAndConfigStopWithAMessage(t *testing.T) {
	dir := t.TempDir()
	files := 0
	conf := func(text string) string {
		files++
		p := filepath.Join(dir, fmt.Sprintf("c%d.conf", files))
		require.NoError(t, os.WriteFile(p, []byte(text), 0o600))
		return p
	}
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"unknown flag":           {[]string{"-bogus"}, "-bogus"},
		"missing id":             {[]string{"-data-dir", dir}, "-id"},
		"missing data dir":       {[]string{"-id", "c1"}, "-data-dir"},
		"bad duration":           {[]string{"-id", "c1", "-data-dir", dir, "-heartbeat-timeout", "soon"}, "heartbeat-timeout"},
		"bad peers":              {[]string{"-id", "c1", "-data-dir", dir, "-peers", "c1"}, "-peers"},
		"peers without self":     {[]string{"-id", "c1", "-data-dir", dir, "-peers", "c2=127.0.0.1:1"}, `does not list this node's -id "c1"`},
		"bad log store":          {[]string{"-id", "c1", "-data-dir", dir, "-log-store", "tape"}, "-log-store"},
		"bad log level":          {[]string{"-id", "c1", "-data-dir", dir, "-log-level", "loud"}, "-log-level"},
		"stray argument":         {[]string{"-id", "c1", "extra"}, `unexpected argument "extra"`},
		"unknown config key":     {[]string{"-config", conf("id = c1\ndata-dir = /tmp/x\nraft-adr = 1\n")}, ".conf:3: unknown key \"raft-adr\""},
		"bad config value":       {[]string{"-config", conf("id = c1\nelection-timeout = forever\n")}, ".conf:2: election-timeout"},
		"missing config":         {[]string{"-config", filepath.Join(dir, "none.conf")}, "config file"},
		"bad alert config":       {[]string{"-id", "c1", "-data-dir", dir, "-alert-config", conf(`{"route": {"receiver": "nobody"}, "receivers": []}`)}, "route.receiver"},
		"tiny heartbeat ttl":     {[]string{"-id", "c1", "-data-dir", dir, "-heartbeat-ttl", "1ms"}, "-heartbeat-ttl"},
		"huge metrics window":    {[]string{"-id", "c1", "-data-dir", dir, "-metrics-window", "48h"}, "-metrics-window"},
		"negative commit hold":   {[]string{"-id", "c1", "-data-dir", dir, "-commit-hold", "-1ms"}, "-commit-hold"},
		"long commit hold":       {[]string{"-id", "c1", "-data-dir", dir, "-commit-hold", "2s"}, "-commit-hold"},
		"short lost balancer":    {[]string{"-id", "c1", "-data-dir", dir, "-balancer-lost-after", "5s"}, "-balancer-lost-after: between 10s and 11m0s"},
		"short dead server":      {[]string{"-id", "c1", "-data-dir", dir, "-dead-server-after", "1s"}, "-dead-server-after: 0 (never) or between 10s and 24h"},
		"negative stabilization": {[]string{"-id", "c1", "-data-dir", dir, "-server-stabilization-time", "-1s"}, "-server-stabilization-time"},
		"long lost balancer":     {[]string{"-id", "c1", "-data-dir", dir, "-balancer-lost-after", "12m"}, "-balancer-lost-after"},
		"short log stall exit":   {[]string{"-id", "c1", "-data-dir", dir, "-log-stall-exit", "100ms"}, "-log-stall-exit"},
		"bad log stall exit":     {[]string{"-id", "c1", "-data-dir", dir, "-log-stall-exit", "soon"}, "-log-stall-exit"},
		"bad webhook":            {[]string{"-id", "c1", "-data-dir", dir, "-alert-webhook", "ftp://x"}, "-alert-webhook"},
		"bad alertmanager":       {[]string{"-id", "c1", "-data-dir", dir, "-alertmanager", "localhost"}, "-alertmanager"},
		"plaintext without tls":  {[]string{"-id", "c1", "-data-dir", dir, "-tls-accept-plaintext"}, "-tls-accept-plaintext: needs -tls-cert and -tls-key"},
		"dial plaintext alone":   {[]string{"-id", "c1", "-data-dir", dir, "-tls-dial-plaintext"}, "-tls-dial-plaintext: needs -tls-accept-plaintext"},
		"bad http tls":           {[]string{"-id", "c1", "-data-dir", dir, "-http-tls", "maybe"}, `-http-tls: "maybe"`},
		"bad acl file":           {[]string{"-id", "c1", "-data-dir", dir, "-acl-file", conf("ops root 0123456789abcdef0123\n")}, `.conf:1: unknown role "root"`},
		"missing acl file":       {[]string{"-id", "c1", "-data-dir", dir, "-acl-file", filepath.Join(dir, "none.acl")}, "-acl-file: ACL file: open"},
		"acl without own token":  {[]string{"-id", "c1", "-data-dir", dir, "-acl-file", conf("ops operator 0123456789abcdef01\n")}, "-acl-file: needs -token-file"},
		"own token not operator": {[]string{"-id", "c1", "-data-dir", dir, "-acl-file", conf("ro read 0123456789abcdef0123456789\n"), "-token-file", conf("0123456789abcdef0123456789")}, `token "ro" of -acl-file`},
		"empty token file":       {[]string{"-id", "c1", "-data-dir", dir, "-token-file", conf("\n\n")}, "-token-file: token file"},
	} {
		t.Run(name, func(t *testing.T) {
			var stderr bytes.Buffer
			code := run(tc.args, &stderr)
			require.Equal(t, 2, code, stderr.String())
			require.Contains(t, stderr.String(), tc.want)
		})
	}
}

func TestBinary_badConfigKeyExitsNonZero(t *testing.T) {
	p := filepath.Join(t.TempDir(), "controller.conf")
	require.NoError(t, os.WriteFile(p, []byte("# c\nid = c1\ngrpc-address = 127.0.0.1:1\n"), 0o600))
	out, err := exec.Command(binary, "-config", p).CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee)
	require.Equal(t, 2, ee.ExitCode())
	require.Contains(t, string(out), p+":3: unknown key \"grpc-address\"")

	out, err = exec.Command(binary, "-id", "c1", "-data-dir", t.TempDir(), "-grpc-addr", "nonsense").CombinedOutput()
	require.ErrorAs(t, err, &ee)
	require.NotZero(t, ee.ExitCode())
	require.Contains(t, string(out), "-grpc-addr")
}

// The cluster tests run the real binary with the default Raft timings.
func TestBinaryCluster_electsFailsOverAndSurvivesFullRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := testcluster.Start(t, testcluster.Options{Nodes: 3, Launcher: testcluster.BinaryLauncher{Path: binary}, Args: []string{"-pprof"}})

	leader, took, err := c.WaitLeader(ctx, 10*time.Second)
	require.NoError(t, err)
	t.Logf("first leader %s after %v", leader.ID, took)
	require.Less(t, took, 3*time.Second, "one leader within 3s of start")
	resp, err := http.Get("http://" + leader.HTTPAddr + "/debug/pprof/")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "-pprof serves /debug/pprof/")

	// Writes through a follower land.
	var via *testcluster.Node
	for _, n := range c.Running() {
		if n != leader {
			via = n
		}
	}
	for i := range 5 {
		_, err := via.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{
			Name: fmt.Sprintf("before-%d", i), PathPrefix: fmt.Sprintf("/b%d", i),
			Backends: []*pb.Backend{{Address: "127.0.0.1:8000"}},
		}})
		require.NoError(t, err)
	}

	// kill -9 the leader: a new one within 3s.
	leader.Kill()
	killedAt := time.Now()
	newLeader, _, err := c.WaitLeader(ctx, 10*time.Second)
	require.NoError(t, err)
	failover := time.Since(killedAt)
	t.Logf("new leader %s %v after the old one was killed", newLeader.ID, failover)
	require.NotEqual(t, leader.ID, newLeader.ID)
	require.Less(t, failover, 3*time.Second, "new leader within 3s of the kill")

	for _, n := range c.Running() {
		_, err := n.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "after-" + n.ID, PathPrefix: "/a-" + n.ID}})
		require.NoError(t, err, "write through %s", n.ID)
	}
	leader.Restart()

	// Stop all three, start them again: the state is all there.
	want, err := newLeader.Pools().ListPools(ctx, &pb.ListPoolsRequest{Consistent: true})
	require.NoError(t, err)
	require.Len(t, want.Pools, 7)
	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
		got, err := leader.Pools().ListPools(ctx, &pb.ListPoolsRequest{})
		if err == nil && len(got.Pools) != 7 {
			err = fmt.Errorf("restarted node has %d pools", len(got.Pools))
		}
		return err
	}))
	for _, n := range c.Nodes() {
		n.Stop()
	}
	for _, n := range c.Nodes() {
		n.Restart()
	}
	_, took, err = c.WaitLeader(ctx, 10*time.Second)
	require.NoError(t, err)
	t.Logf("leader after a full restart in %v", took)
	for _, n := range c.Nodes() {
		got, err := n.Pools().ListPools(ctx, &pb.ListPoolsRequest{Consistent: true})
		require.NoError(t, err)
		require.Len(t, got.Pools, 7, n.ID)
		for i := range got.Pools {
			require.Equal(t, want.Pools[i].String(), got.Pools[i].String())
		}
	}
	// The restarted cluster serves grpcurl's first call.
	st, err := c.Nodes()[0].Status(ctx)
	require.NoError(t, err)
	require.Len(t, st.Members, 3)
	for _, m := range st.Members {
		require.NotEmpty(t, m.ApiAddress, m.Id)
		require.True(t, strings.HasPrefix(m.RaftAddress, "127.0.0.1:"), m.RaftAddress)
	}
}

func TestParseFlags_shippedExampleConfigIsValid(t *testing.T) {
	var stderr bytes.Buffer
	cfg, _, _, err := parseFlags([]string{"-config", "../../../deployments/config/controller.conf"}, &stderr)
	require.NoError(t, err, stderr.String())
	require.Equal(t, "c1", cfg.ID)
	require.Len(t, cfg.Peers, 3)
	require.Equal(t, "10.0.0.1:7700", cfg.GRPCAdvertise)
	require.Equal(t, 10*time.Second, cfg.HeartbeatTTL)
}

func TestRun_badAlertIntervalStopsWithAMessage(t *testing.T) {
	var stderr bytes.Buffer
	code := run([]string{"-id", "c1", "-data-dir", t.TempDir(), "-alert-interval", "1ms",
		"-grpc-addr", "127.0.0.1:0", "-raft-addr", "127.0.0.1:0", "-http-addr", "127.0.0.1:0"}, &stderr)
	require.NotZero(t, code)
	require.Contains(t, stderr.String(), "-alert-interval")
}

// metricValue is the value of the sample series (name with its labels, as
// printed) in a /metrics page, and whether it is there.
func metricValue(page, series string) (float64, bool) {
	for _, line := range strings.Split(page, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err == nil {
				return f, true
			}
		}
	}
	return 0, false
}

// Each process exports its Raft's timers: the leader its commits, log
// writes and round trips to each follower; the followers their log writes.
func TestBinaryCluster_exportsRaftTimers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := testcluster.Start(t, testcluster.Options{Nodes: 3, Launcher: testcluster.BinaryLauncher{Path: binary}})
	leader, _, err := c.WaitLeader(ctx, 10*time.Second)
	require.NoError(t, err)
	for i := range 5 {
		_, err := leader.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: fmt.Sprintf("p%d", i), PathPrefix: fmt.Sprintf("/p%d", i)}})
		require.NoError(t, err)
	}
	page := func(n *testcluster.Node) string {
		_, body, err := fetch("http://" + n.HTTPAddr + "/metrics")
		require.NoError(t, err)
		return body
	}
	at := func(p, series string) float64 {
		t.Helper()
		v, ok := metricValue(p, series)
		require.True(t, ok, "%s missing", series)
		return v
	}
	lp := page(leader)
	require.GreaterOrEqual(t, at(lp, "hostscale_raft_commit_seconds_count"), 5.0)
	require.GreaterOrEqual(t, at(lp, "hostscale_raft_leader_log_write_seconds_count"), 5.0)
	require.Positive(t, at(lp, "hostscale_raft_fsm_apply_seconds_count"))
	require.Equal(t, 1.0, at(lp, `hostscale_raft_state_changes_total{state="leader"}`))
	for _, n := range c.Running() {
		if n == leader {
			continue
		}
		require.GreaterOrEqual(t, at(lp, fmt.Sprintf(`hostscale_raft_append_entries_seconds_count{peer="%s"}`, n.ID)), 1.0, n.ID)
		require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(context.Context) error {
			fp := page(n)
			if v, _ := metricValue(fp, "hostscale_raft_follower_log_write_seconds_count"); v < 1 {
				return fmt.Errorf("%s: %v follower log writes", n.ID, v)
			}
			return nil
		}))
	}
}
