package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hostscale/hostscale/controller/server/servertest"
	"github.com/hostscale/hostscale/internal/acl"
	"github.com/hostscale/hostscale/internal/testcluster"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

func hostscale(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestCLI_againstACluster(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{Nodes: 3, Launcher: servertest.Launcher{}})
	leader, _, err := c.WaitLeader(context.Background(), 10*time.Second)
	require.NoError(t, err)
	addr := c.Nodes()[0].GRPCAddr

	code, out, errs := hostscale("-addr", addr, "status")
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "leader: "+leader.ID)
	require.Contains(t, out, "voter")

	_, err = leader.Pools().CreatePool(context.Background(), &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "web", Hosts: []string{"example.com"}}})
	require.NoError(t, err)
	code, out, errs = hostscale("-addr", addr, "pools")
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "web")
	require.Contains(t, out, "example.com")

	// A snapshot is of the serving node's own state: let it catch up.
	require.NoError(t, testcluster.Eventually(context.Background(), 5*time.Second, func(ctx context.Context) error {
		_, err := c.Nodes()[0].Pools().GetPool(ctx, &pb.GetPoolRequest{Pool: "web"})
		return err
	}))
	snap := filepath.Join(t.TempDir(), "state.snap")
	code, out, errs = hostscale("-addr", addr, "snapshot", "save", snap)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "saved snapshot")
	_, err = leader.Pools().DeletePool(context.Background(), &pb.DeletePoolRequest{Pool: "web"})
	require.NoError(t, err)
	code, out, errs = hostscale("-addr", addr, "snapshot", "restore", snap)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "restored")
	require.NoError(t, testcluster.Eventually(context.Background(), 5*time.Second, func(ctx context.Context) error {
		_, err := c.Nodes()[0].Pools().GetPool(ctx, &pb.GetPoolRequest{Pool: "web"})
		return err
	}))

	code, out, errs = hostscale("-addr", addr, "-json", "members")
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, `SUFFRAGE_VOTER`)
	code, out, errs = hostscale("-addr", addr, "nodes", "tier=web")
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "NAME")
	// Lists longer than a page are read to their end.
	for _, node := range []string{"web-1", "db-1"} {
		hello(t, leader, node, map[string]string{"tier": strings.TrimSuffix(node, "-1")})
	}
	hello(t, leader, "web-2", map[string]string{"tier": "web"},
		&pb.NodeCondition{Type: pb.NodeConditionType_NODE_CONDITION_TYPE_DISK_PRESSURE, Since: timestamppb.Now(),
			Message: "1.0 GiB of 20.0 GiB free on the filesystem of /var/lib/hostscale-agent (5.0 %, under 10 %)"},
		&pb.NodeCondition{Type: pb.NodeConditionType_NODE_CONDITION_TYPE_DISK_STALLED, Since: timestamppb.Now()})
	listPageSize = 1
	defer func() { listPageSize = 1000 }()
	code, out, errs = hostscale("-addr", leader.GRPCAddr, "nodes", "tier=web")
	require.Equal(t, 0, code, errs)
	require.Regexp(t, `(?m)^web-1 +up +- `, out)
	require.Regexp(t, `(?m)^web-2 +up +disk_pressure,disk_stalled `, out)
	require.NotContains(t, out, "db-1")
	code, out, errs = hostscale("-addr", leader.GRPCAddr, "node", "web-2")
	require.Equal(t, 0, code, errs)
	require.Regexp(t, `(?m)^status: +up since `, out)
	require.Regexp(t, `(?m)^labels: +tier=web$`, out)
	require.Regexp(t, `(?m)^capacity: +2 cores, 0 MiB$`, out)
	require.Regexp(t, `(?m)^commands: +every executable$`, out, "an agent without -allow-commands")
	require.Regexp(t, `(?m)^conditions: +disk_pressure since \S+ \(\d+s ago\): 1.0 GiB of 20.0 GiB free on the filesystem of /var/lib/hostscale-agent \(5.0 %, under 10 %\)$`, out)
	require.Regexp(t, `(?m)^ +disk_stalled since \S+ \(\d+s ago\)$`, out)
	code, out, errs = hostscale("-addr", leader.GRPCAddr, "node", "web-1")
	require.Equal(t, 0, code, errs)
	require.Regexp(t, `(?m)^conditions: +none$`, out)
	code, _, errs = hostscale("-addr", leader.GRPCAddr, "node", "web-9")
	require.Equal(t, 1, code)
	require.Contains(t, errs, "NotFound")
	code, _, errs = hostscale("-addr", leader.GRPCAddr, "node")
	require.Equal(t, 2, code)
	require.Contains(t, errs, "node: wrong number of arguments")
	code, out, errs = hostscale("-addr", leader.GRPCAddr, "-json", "nodes")
	require.Equal(t, 0, code, errs)
	require.Equal(t, 3, strings.Count(out, `"name"`), out)
	listPageSize = 1000

	code, out, errs = hostscale("-addr", addr, "rules")
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "node-down")
	require.Regexp(t, `node-disk-stalled +node under disk_stalled +1m0s`, out)
	ruleFile := filepath.Join(t.TempDir(), "rule.json")
	require.NoError(t, os.WriteFile(ruleFile, []byte(`{"name": "web-errors", "kind": "ALERT_RULE_KIND_POOL_THRESHOLD",
		"metric": "error_ratio", "op": ">", "threshold": 0.05, "for": "120s", "selector": "pool=web"}`), 0o600))
	code, out, errs = hostscale("-addr", addr, "create-rule", ruleFile)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "rule web-errors created")
	code, out, errs = hostscale("-addr", addr, "rules")
	require.Equal(t, 0, code, errs)
	require.Regexp(t, `web-errors +pool error_ratio > 0.05 over 1m0s +2m0s +pool=web +warning`, out)
	require.NoError(t, os.WriteFile(ruleFile, []byte(`{"name": "web-errors", "kind": "ALERT_RULE_KIND_POOL_THRESHOLD",
		"metric": "error_ratio", "op": ">", "threshold": 0.05, "window": "300s"}`), 0o600))
	code, out, errs = hostscale("-addr", addr, "update-rule", ruleFile)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "rule web-errors updated")
	code, out, _ = hostscale("-addr", addr, "rules")
	require.Regexp(t, `web-errors +pool error_ratio > 0.05 over 5m0s`, out)
	require.NoError(t, os.WriteFile(ruleFile, []byte(`{"name": "web-errors", "kind": "ALERT_RULE_KIND_POOL_THRESHOLD", "metric": "cpu"}`), 0o600))
	code, _, errs = hostscale("-addr", addr, "create-rule", ruleFile)
	require.Equal(t, 1, code)
	require.Contains(t, errs, "rule.metric")
	require.NoError(t, os.WriteFile(ruleFile, []byte(`{"name": `), 0o600))
	code, _, errs = hostscale("-addr", addr, "create-rule", ruleFile)
	require.Equal(t, 1, code)
	require.Contains(t, errs, "not an alerting rule")
	code, _, errs = hostscale("-addr", addr, "delete-rule", "web-errors")
	require.Equal(t, 0, code, errs)
	code, out, _ = hostscale("-addr", addr, "rules")
	require.NotContains(t, out, "web-errors")
	code, _, _ = hostscale("-addr", addr, "delete-rule")
	require.Equal(t, 2, code)
	code, out, errs = hostscale("-addr", addr, "silence", "1h", "alertname=host-cpu-high", "node=~web-.*")
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "silence s-")
	id := strings.Fields(out)[1]
	code, _, errs = hostscale("-addr", addr, "unsilence", id)
	require.Equal(t, 0, code, errs)
	code, _, errs = hostscale("-addr", addr, "alerts")
	require.Equal(t, 0, code, errs)
	code, _, _ = hostscale("-addr", addr, "silence", "soon", "a=b")
	require.Equal(t, 2, code)
	code, _, _ = hostscale("-addr", addr, "silence", "1h", "nomatcher")
	require.Equal(t, 2, code)

	// Pools with instances: create from JSON, scale, list, events, update.
	poolFile := filepath.Join(t.TempDir(), "pool.json")
	require.NoError(t, os.WriteFile(poolFile, []byte(`{"name": "app", "pathPrefix": "/app", "template": {"command": "true"}, "max": 5,
		"scaling": {"metric": "SCALING_METRIC_REQUESTS_PER_INSTANCE", "target": 10, "scaleToZeroAfter": "300s"}}`), 0o600))
	code, out, errs = hostscale("-addr", addr, "create-pool", poolFile)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "pool app created")
	code, out, errs = hostscale("-addr", addr, "scale", "app", "3")
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "3 instances wanted")
	require.Contains(t, out, "note: app is autoscaled (0-5, requests_per_instance 10; to 0 after 5m0s idle)")
	code, out, errs = hostscale("-addr", addr, "instances", "app")
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "ADDRESS")
	require.NoError(t, testcluster.Eventually(context.Background(), 10*time.Second, func(ctx context.Context) error {
		r, err := leader.Pools().ListInstances(ctx, &pb.ListInstancesRequest{Pool: "app", Consistent: true})
		if err == nil && len(r.Instances) != 3 {
			err = fmt.Errorf("%d instances placed", len(r.Instances))
		}
		return err
	}))
	listPageSize = 1
	code, out, errs = hostscale("-addr", addr, "instances", "app")
	listPageSize = 1000
	require.Equal(t, 0, code, errs)
	for _, id := range []string{"app-1", "app-2", "app-3"} {
		require.Regexp(t, `(?m)^`+id+` `, out, "page by page")
	}
	listPageSize = 1
	code, out, errs = hostscale("-addr", addr, "pools")
	listPageSize = 1000
	require.Equal(t, 0, code, errs)
	require.Regexp(t, `(?m)^app +- +/app +least_request +0 +3 \(0-5\) +requests_per_instance 10; to 0 after 5m0s idle$`, out)
	require.Regexp(t, `(?m)^web +example.com +.* +0 +- +-$`, out)
	code, out, errs = hostscale("-addr", addr, "unplaced")
	require.Equal(t, 0, code, errs)
	require.Equal(t, "every wanted instance has a node\n", out)
	nowhere := filepath.Join(t.TempDir(), "nowhere.json")
	require.NoError(t, os.WriteFile(nowhere, []byte(`{"name": "nowhere", "pathPrefix": "/nowhere", "template": {"command": "true"},
		"selector": "tier=none", "max": 5, "desired": 2}`), 0o600))
	code, _, errs = hostscale("-addr", addr, "create-pool", nowhere)
	require.Equal(t, 0, code, errs)
	require.NoError(t, testcluster.Eventually(context.Background(), 10*time.Second, func(context.Context) error {
		code, out, errs = hostscale("-addr", addr, "unplaced", "nowhere")
		if code != 0 || !strings.Contains(out, "nowhere") {
			return fmt.Errorf("exit %d: %s%s", code, out, errs)
		}
		return nil
	}))
	require.Regexp(t, `(?m)^POOL +UNPLACED +SINCE +WHY$`, out)
	require.Regexp(t, `(?m)^nowhere +2 +\d+s ago +nodes \d+ not matching the selector$`, out)
	code, _, errs = hostscale("-addr", addr, "unplaced", "no-such-pool")
	require.Equal(t, 1, code)
	require.Contains(t, errs, `pool "no-such-pool" not found`)
	code, _, errs = hostscale("-addr", addr, "delete-pool", "nowhere")
	require.Equal(t, 0, code, errs)
	// No balancer reports these pools: all zeros, marked as not covered.
	code, out, errs = hostscale("-addr", addr, "traffic")
	require.Equal(t, 0, code, errs)
	require.Regexp(t, `(?m)^POOL +REQ/S +ERR/S +ERR% +P50 +P95 +P99 +IN FLIGHT +WAITING$`, out)
	require.Regexp(t, `(?m)^app\* +0.0 +0.0 +0.0 +- +- +- +0.0 +0$`, out)
	require.Contains(t, out, "reports for less than the 1m0s window")
	code, out, errs = hostscale("-addr", addr, "traffic", "web", "-window", "10s")
	require.Equal(t, 0, code, errs)
	require.Regexp(t, `(?m)^web\* `, out)
	require.NotContains(t, out, "app")
	code, _, errs = hostscale("-addr", addr, "traffic", "nope")
	require.Equal(t, 1, code)
	require.Contains(t, errs, "NotFound")
	code, _, errs = hostscale("-addr", addr, "traffic", "-window", "1h")
	require.Equal(t, 1, code)
	require.Contains(t, errs, "InvalidArgument: window")
	code, _, _ = hostscale("-addr", addr, "traffic", "web", "extra")
	require.Equal(t, 2, code)
	code, _, _ = hostscale("-addr", addr, "traffic", "-window", "soon")
	require.Equal(t, 2, code)
	_, err = pb.NewBalancerServiceClient(leader.Conn()).AckTable(context.Background(), &pb.AckTableRequest{Balancer: "edge-1", Version: &pb.TableVersion{Index: 1}, Error: "refused"})
	require.NoError(t, err)
	code, out, errs = hostscale("-addr", addr, "balancers")
	require.Equal(t, 0, code, errs)
	require.Regexp(t, `(?m)^NAME +TABLE +IN SYNC +ACKED +REPORTED +ERROR$`, out)
	require.Regexp(t, `(?m)^edge-1 +0/1 +no +[0-9.]+m?s ago +- +refused$`, out)
	require.Regexp(t, `table in force \d+/\d+, from the leader `+leader.ID, out)
	code, _, _ = hostscale("-addr", addr, "balancers", "extra")
	require.Equal(t, 2, code)
	code, out, errs = hostscale("-addr", addr, "events", "app", "-acted")
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "LIMITED BY")
	code, out, errs = hostscale("-addr", addr, "update-pool", poolFile)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "pool app updated")
	code, _, errs = hostscale("-addr", addr, "scale", "app", "9")
	require.Equal(t, 1, code)
	require.Contains(t, errs, "InvalidArgument: desired")
	code, _, _ = hostscale("-addr", addr, "scale", "app", "many")
	require.Equal(t, 2, code)
	code, _, _ = hostscale("-addr", addr, "events")
	require.Equal(t, 2, code)
	code, _, _ = hostscale("-addr", addr, "load", "-rates", "fast")
	require.Equal(t, 2, code)
	require.NoError(t, os.WriteFile(poolFile, []byte(`{"name": "app", "bogus": 1}`), 0o600))
	code, _, errs = hostscale("-addr", addr, "create-pool", poolFile)
	require.Equal(t, 1, code)
	require.Contains(t, errs, "not a pool")
	code, _, errs = hostscale("-addr", addr, "drain", "nosuchnode")
	require.Equal(t, 1, code)
	require.Contains(t, errs, "NotFound")
	// load: steady rates against a web server, one line a second.
	var served atomic.Int64
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		served.Add(1)
		w.Header().Set("X-Instance", "app-1")
	}))
	defer web.Close()
	code, out, errs = hostscale("-addr", addr, "load", "-url", web.URL, "-rates", "40,0", "-step", "2s", "-pool", "app")
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "ANSWERED BY")
	require.Contains(t, out, "app-1:")
	require.InDelta(t, 80, served.Load(), 40, "40 requests a second for 2s")

	code, _, errs = hostscale("-addr", addr, "delete-pool", "app")
	require.Equal(t, 0, code, errs)

	// Failures: usage errors exit 2, failed calls exit 1 naming the code.
	code, _, errs = hostscale("-addr", addr, "nodes", "tier in web")
	require.Equal(t, 1, code)
	require.Contains(t, errs, "InvalidArgument")
	code, _, errs = hostscale("-addr", addr, "join", "Bad_ID", "127.0.0.1:1")
	require.Equal(t, 1, code)
	require.Contains(t, errs, "InvalidArgument: id")
	code, _, errs = hostscale("-addr", addr, "snapshot", "restore", "/nonexistent")
	require.Equal(t, 1, code)
	require.Contains(t, errs, "no such file")
	code, _, errs = hostscale("-addr", addr, "frobnicate")
	require.Equal(t, 2, code)
	require.Contains(t, errs, `unknown command "frobnicate"`)
	code, _, _ = hostscale("-addr", addr, "leave")
	require.Equal(t, 2, code)
	code, _, _ = hostscale()
	require.Equal(t, 2, code)

	// -addr may list several controllers: the first that answers serves.
	// With the one listed first stopped, the next does.
	var all []string
	for _, n := range c.Nodes() {
		all = append(all, n.GRPCAddr)
	}
	first := c.Nodes()[0]
	first.Stop()
	code, out, errs = hostscale("-addr", strings.Join(all, ", "), "status")
	require.Equal(t, 0, code, errs)
	require.True(t, strings.HasPrefix(out, "node "+c.Nodes()[1].ID+":"), out)
	code, _, errs = hostscale("-addr", all[1]+",nonsense", "status")
	require.Equal(t, 2, code)
	require.Contains(t, errs, `-addr`)
	require.Contains(t, errs, `"nonsense" is not host:port`)
}

// A command sent as the leader dies waits for the next leader instead of
// failing: the follower it reaches knows no leader for a while, and the
// CLI calls again, with the same request id, until one is elected.
func TestCLI_writeDuringAnElection(t *testing.T) {
	ctx := context.Background()
	c := testcluster.Start(t, testcluster.Options{Nodes: 3, Launcher: servertest.Launcher{}})
	leader, _, err := c.WaitLeader(ctx, 10*time.Second)
	require.NoError(t, err)
	_, err = leader.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "web", Hosts: []string{"example.com"}}})
	require.NoError(t, err)
	var follower *testcluster.Node
	for _, n := range c.Nodes() {
		if n != leader {
			follower = n
			break
		}
	}

	code, _, errs := hostscale("-retry", "-1s", "status")
	require.Equal(t, 2, code)
	require.Contains(t, errs, "-retry -1s: must not be negative")

	leader.Kill()
	killed := time.Now()
	code, _, errs = hostscale("-addr", follower.GRPCAddr, "delete-pool", "web")
	require.Equal(t, 0, code, errs)
	t.Logf("delete-pool answered %v after the leader was killed", time.Since(killed).Round(time.Millisecond))
	next, _, err := c.WaitNewLeader(ctx, leader, 10*time.Second)
	require.NoError(t, err)
	_, err = next.Pools().GetPool(ctx, &pb.GetPoolRequest{Pool: "web", Consistent: true})
	require.Equal(t, codes.NotFound, status.Code(err), "the pool is gone: %v", err)
}

// hello registers node with labels as its agent would, and keeps its stream
// open until the test ends.
func hello(t *testing.T, leader *testcluster.Node, node string, labels map[string]string, conds ...*pb.NodeCondition) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := pb.NewAgentServiceClient(leader.Conn()).Connect(ctx)
	require.NoError(t, err)
	require.NoError(t, st.Send(&pb.ConnectRequest{Message: &pb.ConnectRequest_Hello{Hello: &pb.Hello{
		Node: node, Labels: labels, Facts: &pb.NodeFacts{Hostname: node, CpuCount: 2}, Conditions: conds,
	}}}))
	m, err := st.Recv()
	require.NoError(t, err)
	require.NotNil(t, m.GetWelcome(), "%v", m)
}

// TestToken_new: the printed line, in an ACL file, admits the printed
// token with its roles; bad roles, names and token files are usage errors.
func TestToken_new(t *testing.T) {
	var out, errOut bytes.Buffer
	require.Zero(t, run([]string{"token", "new", "deploy", "write,read"}, &out, &errOut), errOut.String())
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 2, out.String())
	token, ok := strings.CutPrefix(lines[0], "token: ")
	require.True(t, ok, lines[0])
	require.Len(t, token, 64)
	line, ok := strings.CutPrefix(lines[1], "ACL file line: ")
	require.True(t, ok, lines[1])
	require.NotContains(t, line, token, "the line holds the digest, not the secret")
	p := filepath.Join(t.TempDir(), "acl")
	require.NoError(t, os.WriteFile(p, []byte(line+"\n"), 0o600))
	toks, err := acl.LoadFile(p)
	require.NoError(t, err)
	tok, ok := toks.Lookup(token)
	require.True(t, ok)
	require.Equal(t, acl.Token{Name: "deploy", Roles: acl.Read | acl.Write}, tok)

	out.Reset()
	require.Zero(t, run([]string{"token", "new", "shop", "write", "-pools", "shop-*,blog"}, &out, &errOut), errOut.String())
	require.Regexp(t, `ACL file line: shop write sha256:[0-9a-f]{64} pools=shop-\*,blog\n`, out.String())
	errOut.Reset()
	require.Equal(t, 2, run([]string{"token", "new", "x", "operator", "-pools", "web"}, &out, &errOut))
	require.Contains(t, errOut.String(), "-pools: only the read and write roles may be limited to pools")

	var second bytes.Buffer
	require.Zero(t, run([]string{"token", "new", "deploy", "write"}, &second, &errOut))
	require.NotEqual(t, out.String()[:70], second.String()[:70], "each token is new")

	bad := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(bad, []byte("a b"), 0o600))
	for args, want := range map[string]string{
		"token new x root":               `unknown role "root"`,
		"token new x":                    "usage: hostscale token new NAME ROLE",
		"token new a#b read":             `name "a#b": no spaces or #`,
		"-token-file " + bad + " status": "-token-file: token file " + bad + ": the token holds a space",
	} {
		errOut.Reset()
		require.Equal(t, 2, run(strings.Fields(args), &out, &errOut), args)
		require.Contains(t, errOut.String(), want, args)
	}
	t.Setenv("HOSTSCALE_TOKEN", "two words")
	errOut.Reset()
	require.Equal(t, 2, run([]string{"status"}, &out, &errOut))
	require.Contains(t, errOut.String(), "HOSTSCALE_TOKEN: the token holds a space")
}
