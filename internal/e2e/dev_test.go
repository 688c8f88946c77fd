package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hostscale/hostscale/internal/grpcx"
	"github.com/hostscale/hostscale/internal/testcluster"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// TestDevMode_makeDevServesTheDemoPoolAndCtrlCStopsAll runs the README's
// first command as a newcomer would, from the repository root: `make dev`
// builds everything and starts it; a request to 127.0.0.1:8080 is answered
// by an instance of the demo pool; killing the leading controller leaves
// the balancer answering and writes landing; Ctrl-C (SIGINT to the
// foreground process group) stops every process it started, the instances
// included.
func TestDevMode_makeDevServesTheDemoPoolAndCtrlCStopsAll(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	root, err := filepath.Abs("../..")
	require.NoError(t, err)
	p := &proc{name: "make dev", cmd: exec.Command("make", "dev"), done: make(chan struct{})}
	p.cmd.Dir = root
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := p.cmd.StdoutPipe()
	require.NoError(t, err)
	p.cmd.Stderr = p.cmd.Stdout
	require.NoError(t, p.cmd.Start())
	go func() {
		defer close(p.done)
		buf := make([]byte, 4096)
		for {
			n, err := out.Read(buf)
			p.mu.Lock()
			p.logs.Write(buf[:n])
			p.mu.Unlock()
			if err != nil {
				break
			}
		}
		_ = p.cmd.Wait()
	}()
	t.Cleanup(func() {
		// Ctrl-C first, so that the agent stops the instances; SIGKILL
		// if that does not end it.
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGINT)
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
		for pid := range instanceProcs() {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if t.Failed() {
			t.Logf("make dev output:\n%s", tail(p.log(), 60))
		}
	})

	var answer string
	require.NoError(t, testcluster.Eventually(ctx, 6*time.Minute, func(context.Context) error {
		select {
		case <-p.done:
			return fmt.Errorf("make dev exited")
		default:
		}
		if !strings.Contains(p.log(), "Ctrl-C stops everything") {
			return fmt.Errorf("no banner yet")
		}
		resp, err := http.Get("http://127.0.0.1:8080/")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		answer = string(body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", resp.Status, body)
		}
		return nil
	}), "make dev output:\n%s", p.log())
	require.True(t, strings.HasPrefix(answer, "served by demo-"), answer)

	// The sleepy pool starts with no instance: a request is held while the
	// controller starts one, then answered by it.
	woke := time.Now()
	resp, err := (&http.Client{Timeout: 40 * time.Second}).Get("http://127.0.0.1:8080/sleepy/")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	require.True(t, strings.HasPrefix(string(body), "served by sleepy-"), "%s", body)
	t.Logf("the sleepy pool answered its first request after %v", time.Since(woke).Round(time.Millisecond))
	require.Contains(t, p.log(), "grpcurl -plaintext 127.0.0.1:7700")
	require.NotEmpty(t, instanceProcs(), "the demo pool's instances run")

	// Kill the leading controller, as the README shows: the balancer
	// answers throughout, and writes go on through the other two.
	conn, err := grpcx.DialAny([]string{"127.0.0.1:7700", "127.0.0.1:7710", "127.0.0.1:7720"})
	require.NoError(t, err)
	defer conn.Close()
	cluster, pools := pb.NewClusterServiceClient(conn), pb.NewPoolServiceClient(conn)
	// The README's alert rule is installed.
	rules, err := pb.NewAlertServiceClient(conn).ListRules(ctx, &pb.ListRulesRequest{Consistent: true})
	require.NoError(t, err)
	require.True(t, slices.ContainsFunc(rules.Rules, func(r *pb.AlertRule) bool {
		return r.Name == "demo-errors" && r.Kind == pb.AlertRuleKind_ALERT_RULE_KIND_POOL_THRESHOLD
	}), "rules: %v", rules.Rules)
	st, err := cluster.GetStatus(ctx, &pb.GetStatusRequest{})
	require.NoError(t, err)
	old := st.GetLeader().GetId()
	require.NotEmpty(t, old, "a leader")
	pidText, err := os.ReadFile(filepath.Join(root, ".dev", old+".pid"))
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(pidText)))
	require.NoError(t, err)
	served, failed := make(chan int, 1), make(chan string, 1)
	stopLoop := make(chan struct{})
	go func() {
		n := 0
		defer func() { served <- n }()
		for {
			select {
			case <-stopLoop:
				return
			default:
			}
			resp, err := http.Get("http://127.0.0.1:8080/")
			if err != nil {
				failed <- err.Error()
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				failed <- resp.Status
				return
			}
			n++
		}
	}()
	killed := time.Now()
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	require.NoError(t, testcluster.Eventually(ctx, 15*time.Second, func(ctx context.Context) error {
		st, err := cluster.GetStatus(ctx, &pb.GetStatusRequest{})
		if err != nil {
			return err
		}
		if l := st.GetLeader().GetId(); l == "" || l == old {
			return fmt.Errorf("leader %q", l)
		}
		_, err = pools.ScalePool(ctx, &pb.ScalePoolRequest{Pool: "demo", Desired: 2})
		return err
	}))
	t.Logf("killed leader %s; a write through the others landed %v later", old, time.Since(killed).Round(time.Millisecond))
	close(stopLoop)
	n := <-served
	select {
	case f := <-failed:
		t.Fatalf("the balancer failed a request while the leader was replaced, after %d answers: %s", n, f)
	default:
	}
	require.Positive(t, n)
	t.Logf("the balancer answered %d requests meanwhile", n)

	// Ctrl-C: the terminal sends SIGINT to the whole foreground group.
	require.NoError(t, syscall.Kill(-p.cmd.Process.Pid, syscall.SIGINT))
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatal("make dev did not stop within 30s of Ctrl-C")
	}
	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(context.Context) error {
		if n := len(instanceProcs()); n != 0 {
			return fmt.Errorf("%d instances still run", n)
		}
		if err := syscall.Kill(-p.cmd.Process.Pid, 0); err != syscall.ESRCH {
			return fmt.Errorf("a process of make dev's group still runs (%v)", err)
		}
		return nil
	}))
	_, err = http.Get("http://127.0.0.1:8080/")
	require.Error(t, err, "the balancer is gone")
}
