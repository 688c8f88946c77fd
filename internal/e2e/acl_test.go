package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hostscale/hostscale/internal/acl"
	"github.com/hostscale/hostscale/internal/testcluster"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// TestACL_everyBinary: three controllers with an ACL file; an agent and a
// balancer with a token of the agent and balancer roles register, run and
// route a pool; a write through a follower is forwarded; the CLI is
// refused without a token, reads but cannot write with a read token
// (environment), and writes with a write token (file); a token the
// operator removes from the file and SIGHUPs is refused at once, while a
// broken file on SIGHUP keeps the tokens in force.
func TestACL_everyBinary(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	const (
		opsToken     = "ops-0123456789abcdef0123"
		ctlToken     = "controllers-0123456789abcdef"
		edgeToken    = "edge-0123456789abcdef0123"
		deployToken  = "deploy-0123456789abcdef01"
		grafanaToken = "grafana-0123456789abcdef01"
	)
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(text), 0o600))
		return p
	}
	aclText := fmt.Sprintf(`# hostscale ACL tokens
ops          operator          %s
controllers  operator          %s
edge         agent,balancer    %s
deploy       write             %s
grafana      read              %s
`, opsToken, ctlToken, edgeToken, acl.Hash(deployToken), acl.Hash(grafanaToken))
	aclFile := write("acl", aclText)
	ctlFile, edgeFile, deployFile := write("ctl.token", ctlToken+"\n"), write("edge.token", edgeToken), write("deploy.token", deployToken)

	f := newFleetClients(t, ctx, 1, nil, func(o *testcluster.Options) {
		o.Args = append(o.Args, "-acl-file", aclFile, "-token-file", ctlFile)
		o.ClientToken = opsToken
	}, []string{"-token-file", edgeFile})
	f.createPool("web", 2, nil)
	f.waitRouted(f.settled("web", 2, 30*time.Second), 10*time.Second)
	resp, err := http.Get("http://" + f.lbAddr + "/")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)

	cli := func(env []string, args ...string) (string, int) {
		cmd := exec.CommandContext(ctx, filepath.Join(f.bin, "hostscale"), append([]string{"-addr", f.controllers, "-retry", "0", "-timeout", "10s"}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return string(out), exit.ExitCode()
		}
		require.NoError(t, err)
		return string(out), 0
	}
	out, code := cli(nil, "pools")
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "Unauthenticated")
	require.Contains(t, out, "no ACL token")
	grafana := []string{"HOSTSCALE_TOKEN=" + grafanaToken}
	out, code = cli(grafana, "instances", "web")
	require.Zero(t, code, out)
	require.Contains(t, out, "web-1")
	out, code = cli(grafana, "scale", "web", "3")
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "PermissionDenied")
	require.Contains(t, out, `token "grafana" (roles read) may not call /hostscale.v1.PoolService/ScalePool`)
	// A write token through a follower: forwarded to the leader.
	out, code = cli(nil, "-addr", followerOf(f.cl, f.leader()).GRPCAddr, "-token-file", deployFile, "scale", "web", "3")
	require.Zero(t, code, out)
	f.settled("web", 3, 30*time.Second)
	out, code = cli(nil, "-token-file", deployFile, "leave", "c3")
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "it needs the operator role")
	// The Raft port wants a controller's token too: Raft's AppendEntries
	// without one is closed unread, and the leader says so.
	leader := f.leader()
	require.NoError(t, testcluster.RaftPortRefusesTokenless(leader.RaftAddr, 15*time.Second))
	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(context.Context) error {
		if !strings.Contains(leader.Log(), "raft port: refused a connection without a controller's token") {
			return errors.New("the leader has not logged the refusal")
		}
		return nil
	}))

	// The operator revokes grafana: a SIGHUP, and its next call fails.
	write("acl", strings.Replace(aclText, "grafana", "# grafana", 1))
	for _, n := range f.cl.Running() {
		n.Signal(syscall.SIGHUP)
	}
	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
		for _, n := range f.cl.Running() {
			if !strings.Contains(n.Log(), "ACL file reloaded") {
				return fmt.Errorf("%s has not reloaded", n.ID)
			}
		}
		return nil
	}))
	out, code = cli(grafana, "pools")
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "not one this controller knows")
	// Tokens stored in the cluster: created by an operator through the
	// CLI, admitted by every controller, deleted, refused.
	ops := []string{"HOSTSCALE_TOKEN=" + opsToken}
	out, code = cli(ops, "token", "create", "ci", "write", "the deploy pipeline", "-ttl", "1h", "-pools", "web")
	require.Zero(t, code, out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	ciSecret := lines[len(lines)-1]
	require.Len(t, ciSecret, 64, out)
	out, code = cli(ops, "token", "list")
	require.Zero(t, code, out)
	require.Regexp(t, `ci\s+write\s+web\s+\S+\s+ops\s+\S+\s+the deploy pipeline`, out)
	require.NotContains(t, out, "expired")
	for _, n := range f.cl.Running() {
		require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(context.Context) error {
			if out, code := cli([]string{"HOSTSCALE_TOKEN=" + ciSecret}, "-addr", n.GRPCAddr, "pools"); code != 0 {
				return errors.New(out)
			}
			return nil
		}), n.ID)
	}
	out, code = cli([]string{"HOSTSCALE_TOKEN=" + ciSecret}, "token", "list")
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "PermissionDenied")
	out, code = cli([]string{"HOSTSCALE_TOKEN=" + ciSecret}, "nodes")
	require.Equal(t, 1, code, out)
	require.Contains(t, out, `token "ci" is limited to the pools web`)
	out, code = cli(ops, "token", "delete", "ci")
	require.Zero(t, code, out)
	for _, n := range f.cl.Running() {
		require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(context.Context) error {
			if out, _ := cli([]string{"HOSTSCALE_TOKEN=" + ciSecret}, "-addr", n.GRPCAddr, "pools"); !strings.Contains(out, "Unauthenticated") {
				return errors.New(out)
			}
			return nil
		}), n.ID)
	}

	// A broken file on SIGHUP keeps the tokens in force.
	write("acl", "ops superuser "+opsToken+"\n")
	leader = f.leader()
	leader.Signal(syscall.SIGHUP)
	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
		if !strings.Contains(leader.Log(), `reload the ACL file; its tokens stay as they were`) {
			return errors.New("no reload error logged")
		}
		return nil
	}))
	require.Contains(t, leader.Log(), `unknown role \"superuser\"`)
	out, code = cli([]string{"HOSTSCALE_TOKEN=" + deployToken}, "-addr", leader.GRPCAddr, "scale", "web", "2")
	require.Zero(t, code, out)
	f.settled("web", 2, 30*time.Second)
	// The agent and the balancer kept working throughout: the leader
	// still hears from both.
	lbs, err := pb.NewBalancerServiceClient(leader.Conn()).ListBalancers(ctx, &pb.ListBalancersRequest{})
	require.NoError(t, err)
	require.Len(t, lbs.Balancers, 1)
	require.False(t, lbs.Balancers[0].Lost)
}
