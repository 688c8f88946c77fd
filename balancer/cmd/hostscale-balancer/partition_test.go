package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hostscale/hostscale/internal/testcluster"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// TestBinary_followerCutOffFromTheLeaderStopsFeedingTables: the balancer,
// on a host of its own, watches a follower; that follower is then cut off
// from the other two controllers (the balancer still reaches all three).
// The follower's table can no longer change, so it ends the watch, and
// the balancer takes its tables from the majority: a pool created there
// serves through the balancer. The balancer serves the pools it has all
// along, without a failed request.
func TestBinary_followerCutOffFromTheLeaderStopsFeedingTables(t *testing.T) {
	ctrl := testcluster.BuildController(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	nt := testcluster.NewNet(t, 4) // three controllers, then the balancer's host
	c, leader := testcluster.StartLed(ctx, t, testcluster.Options{Launcher: testcluster.BinaryLauncher{Path: ctrl}, Net: nt}, 30*time.Second)
	var watched *testcluster.Node
	controllers := []string{}
	for _, n := range c.Nodes() {
		if n != leader && watched == nil {
			watched = n
			controllers = append([]string{n.GRPCAddr}, controllers...) // first: the one it watches
		} else {
			controllers = append(controllers, n.GRPCAddr)
		}
	}

	// The backend listens on the test process's own address on the Net.
	lis, err := net.Listen("tcp", nt.Addr()+":0")
	require.NoError(t, err)
	backend := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok "+r.URL.Path) })}
	go backend.Serve(lis)
	defer backend.Close()
	pool := func(name string) {
		t.Helper()
		_, err := leader.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{
			Name: name, PathPrefix: "/" + name, Backends: []*pb.Backend{{Address: lis.Addr().String()}}}})
		require.NoError(t, err)
	}
	pool("before")

	h := nt.Hosts()[3]
	p := startBinaryCmd(t, h.Command(binPath, "-listen", h.IP+":0", "-http-addr", h.IP+":0",
		"-controllers", strings.Join(controllers, ","), "-name", "edge"))
	client := &http.Client{Timeout: 2 * time.Second}
	serves := func(path string) error {
		resp, err := client.Get("http://" + p.proxy + path)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || string(body) != "ok "+path {
			return fmt.Errorf("%s: %d %q", path, resp.StatusCode, body)
		}
		return nil
	}
	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(context.Context) error { return serves("/before") }))
	watching := func(addr string) bool {
		_, body := get(t, "http://"+p.admin+"/metrics")
		return strings.Contains(body, `hostscale_balancer_controller_connected{controller="`+addr+`"} 1`)
	}
	require.True(t, watching(watched.GRPCAddr), "the balancer watches the follower listed first")

	var rest []*testcluster.Host
	for _, n := range c.Nodes() {
		if n != watched {
			rest = append(rest, n.Host)
		}
	}
	nt.Partition([]*testcluster.Host{watched.Host}, rest) // the balancer's host is in neither: it reaches all
	cut := time.Now()
	pool("during")
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		<-tick.C
		require.NoError(t, serves("/before"), "the pool it had, %v after the cut", time.Since(cut).Round(time.Millisecond))
		if serves("/during") == nil {
			break
		}
		require.Less(t, time.Since(cut), 20*time.Second, "the pool created on the majority never reached the balancer: %s", p.logs())
	}
	t.Logf("the majority's new pool serves through the balancer %v after the cut", time.Since(cut).Round(time.Millisecond))
	require.False(t, watching(watched.GRPCAddr), "the balancer left the cut-off follower")
}
