package server_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostscale/hostscale/internal/testcluster"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// Concurrent writes through every node share Raft entries on the leader;
// each keeps its own outcome, and every node applies all of them.
func TestCluster_concurrentWritesShareEntriesAndKeepTheirOwnResults(t *testing.T) {
	c := startCluster(t, 3)
	leader := waitLeader(t, c)
	ctx := ctxT(t)
	nodes := c.Running()
	// "dup" exists before: every writer's attempt to create it again must
	// fail alone, in whatever batch it lands.
	_, err := leader.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: pool("dup")})
	require.NoError(t, err)

	const writers, each = 48, 10
	var wg sync.WaitGroup
	errs := make(chan error, writers*each*2)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := nodes[w%len(nodes)]
			for i := range each {
				name := fmt.Sprintf("w%d-%d", w, i)
				resp, err := n.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: pool(name, "10.0.0.1:80")})
				if err != nil {
					errs <- fmt.Errorf("%s: %w", name, err)
					continue
				}
				if resp.Pool.Name != name || resp.Index == 0 {
					errs <- fmt.Errorf("%s: answered %v at %d", name, resp.Pool.Name, resp.Index)
				}
				_, err = n.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: pool("dup")})
				if status.Code(err) != codes.AlreadyExists {
					errs <- fmt.Errorf("dup from %s: want ALREADY_EXISTS, got %v", name, err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// Every node holds every pool.
	for _, n := range nodes {
		require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
			got, err := n.Pools().ListPools(ctx, &pb.ListPoolsRequest{PageSize: 1000})
			if err != nil {
				return err
			}
			if len(got.Pools) != writers*each+1 {
				return fmt.Errorf("%s holds %d pools", n.ID, len(got.Pools))
			}
			return nil
		}), n.ID)
	}

	// The leader proposed fewer entries than commands.
	entries, commands := entryCommands(t, leader.HTTPAddr)
	resp, err := http.Get("http://" + leader.HTTPAddr + "/debug/pprof/")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode, "pprof only when asked")
	t.Logf("leader proposed %.0f commands in %.0f entries", commands, entries)
	require.GreaterOrEqual(t, commands, float64(writers*each*2))
	require.Less(t, entries, commands, "concurrent writes went one entry each")
}

// scrape returns the text of a node's /metrics.
func scrape(t *testing.T, httpAddr string) string {
	t.Helper()
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(body)
}

// entryCommands reads hostscale_controller_entry_commands from a node's
// /metrics: the entries proposed and the commands they held.
func entryCommands(t *testing.T, httpAddr string) (entries, commands float64) {
	t.Helper()
	for _, line := range strings.Split(scrape(t, httpAddr), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "hostscale_controller_entry_commands_count":
			entries = v
		case "hostscale_controller_entry_commands_sum":
			commands = v
		}
	}
	return entries, commands
}
