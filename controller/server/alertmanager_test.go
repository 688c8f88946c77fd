package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/hostscale/hostscale/controller/server"
	"github.com/hostscale/hostscale/controller/server/servertest"
	"github.com/hostscale/hostscale/internal/testcluster"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// startAlertmanager runs Debian's prometheus-alertmanager on a loopback
// port and returns its base URL. Without the binary the test is skipped,
// except in CI, which installs it.
func startAlertmanager(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("prometheus-alertmanager")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("prometheus-alertmanager is not installed (.ci/run installs it)")
		}
		t.Skip("prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager)")
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "alertmanager.yml")
	require.NoError(t, os.WriteFile(conf, []byte("route:\n  receiver: none\nreceivers:\n  - name: none\n"), 0o600))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := lis.Addr().String()
	lis.Close()
	cmd := exec.Command(bin, "--config.file="+conf, "--storage.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--cluster.listen-address=")
	out, err := os.Create(filepath.Join(dir, "log"))
	require.NoError(t, err)
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "log"))
			t.Logf("alertmanager log:\n%s", b)
		}
	})
	url := "http://" + addr
	require.Eventually(t, func() bool {
		resp, err := http.Get(url + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, 15*time.Second, 50*time.Millisecond, "alertmanager did not become ready")
	return url
}

// amAlerts returns the active alerts an Alertmanager holds, by alertname.
func amAlerts(url string) (map[string]map[string]any, error) {
	resp, err := http.Get(url + "/api/v2/alerts?active=true&silenced=true&inhibited=true")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var list []map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return nil, err
	}
	out := map[string]map[string]any{}
	for _, a := range list {
		ls, _ := a["labels"].(map[string]any)
		name, _ := ls["alertname"].(string)
		out[name] = a
	}
	return out, nil
}

func TestAlerts_pushedToARealAlertmanagerThenResolved(t *testing.T) {
	am := startAlertmanager(t)
	c := testcluster.Start(t, testcluster.Options{
		Nodes: 3,
		Launcher: servertest.Launcher{Configure: func(c *server.Config) {
			c.AlertInterval = 100 * time.Millisecond
			c.AlertGroupWait = 100 * time.Millisecond
			c.AlertGroupInterval = 200 * time.Millisecond
			c.AlertmanagerURL = am
		}},
		HeartbeatTimeout: 500 * time.Millisecond,
		ElectionTimeout:  500 * time.Millisecond,
	})
	leader := waitLeader(t, c)
	ctx := ctxT(t)
	_, err := pb.NewAlertServiceClient(leader.Conn()).CreateRule(ctx, &pb.CreateRuleRequest{Rule: &pb.AlertRule{
		Name: "cpu-am", Metric: "cpu_percent", Op: ">", Threshold: 90, For: durationpb.New(500 * time.Millisecond),
		Annotations: map[string]string{"summary": "CPU on {{ .Node }} is {{ .Value }}"},
	}})
	require.NoError(t, err)
	var hot atomic.Bool
	hot.Store(true)
	fctx, stopFeed := context.WithCancel(ctx)
	defer stopFeed()
	feed(t, fctx, c, "am-1", func(int) float64 {
		if hot.Load() {
			return 96
		}
		return 5
	})
	require.NoError(t, testcluster.Eventually(ctx, 15*time.Second, func(context.Context) error {
		got, err := amAlerts(am)
		if err != nil {
			return err
		}
		a, ok := got["cpu-am"]
		if !ok {
			return fmt.Errorf("alertmanager holds %d alerts, not cpu-am", len(got))
		}
		ls := a["labels"].(map[string]any)
		if ls["node"] != "am-1" {
			return fmt.Errorf("labels %v", ls)
		}
		if ann := a["annotations"].(map[string]any); ann["summary"] != "CPU on am-1 is 96" {
			return fmt.Errorf("annotations %v", ann)
		}
		return nil
	}))
	hot.Store(false)
	require.NoError(t, testcluster.Eventually(ctx, 15*time.Second, func(context.Context) error {
		got, err := amAlerts(am)
		if err != nil {
			return err
		}
		if _, ok := got["cpu-am"]; ok {
			return fmt.Errorf("cpu-am is still active in alertmanager")
		}
		return nil
	}))
}
