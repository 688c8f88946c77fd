package driver

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/hostscale/hostscale/internal/syncbuf"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// eventually fails t unless cond holds within timeout, checking it every
// 10ms.
func eventually(t *testing.T, timeout time.Duration, cond func() bool, msgAndArgs ...any) {
	t.Helper()
	require.Eventually(t, cond, timeout, 10*time.Millisecond, msgAndArgs...)
}

// testConfig is a fast Config on dataDir: short back-off, 127.0.0.1.
func testConfig(t *testing.T, dataDir string) Config {
	t.Helper()
	logs := &syncbuf.Buffer{}
	t.Cleanup(func() {
		require.Empty(t, appProcesses(t.Name()), "apps of this test left running")
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("driver log:\n%s", logs.String())
		}
	})
	return Config{
		DataDir:        dataDir,
		AdvertiseAddr:  "127.0.0.1",
		Node:           "node-a",
		Logger:         slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		RestartBase:    50 * time.Millisecond,
		RestartMax:     time.Second,
		UnhealthyAfter: 2,
	}
}

// newDriver returns a Driver on cfg that stops every instance when the
// test ends, and checks then that none of the test's apps is left.
func newDriver(t *testing.T, cfg Config) *Driver {
	t.Helper()
	d, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		d.StopAll(ctx)
		require.Empty(t, d.Report().GetInstances(), "instances left after StopAll")
	})
	return d
}

// run runs d until the returned function is called (or the test ends),
// which waits for Run to return and checks it returned nil.
func run(t *testing.T, d *Driver) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- d.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			require.NoError(t, <-errc)
		})
	}
	t.Cleanup(stop)
	return stop
}

// app returns a template that runs this test binary as the app mode
// (see TestMain), tagged with the test's name.
func app(t *testing.T, mode string, env ...string) *pb.InstanceTemplate {
	t.Helper()
	exe, err := os.Executable()
	require.NoError(t, err)
	m := map[string]string{envApp: mode, envTest: t.Name()}
	for i := 0; i+1 < len(env); i += 2 {
		m[env[i]] = env[i+1]
	}
	return &pb.InstanceTemplate{
		Command:        exe,
		Env:            m,
		HealthPath:     "/health",
		HealthInterval: durationpb.New(100 * time.Millisecond),
		StopGrace:      durationpb.New(5 * time.Second),
	}
}

func assignment(id, pool string, tmpl *pb.InstanceTemplate) *pb.Assignment {
	return &pb.Assignment{Instance: id, Pool: pool, Template: tmpl}
}

func stamp(term, index uint64, as ...*pb.Assignment) *pb.Assignments {
	return &pb.Assignments{Term: term, Index: index, Instances: as}
}

// status returns id's status in d's report, or nil.
func status(d *Driver, id string) *pb.InstanceStatus {
	for _, s := range d.Report().GetInstances() {
		if s.GetId() == id {
			return s
		}
	}
	return nil
}

// inState reports whether id is in state.
func inState(d *Driver, id string, state pb.InstanceState) bool {
	return status(d, id).GetState() == state
}

// waitHealthy waits for id to be HEALTHY and returns its status.
func waitHealthy(t *testing.T, d *Driver, id string) *pb.InstanceStatus {
	t.Helper()
	eventually(t, 15*time.Second, func() bool { return inState(d, id, pb.InstanceState_INSTANCE_STATE_HEALTHY) },
		"%s never became healthy", id)
	return status(d, id)
}

// processGone reports whether pid no longer runs (gone, or a zombie).
func processGone(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return true
	}
	_, state, err := readStat(pid)
	return err != nil || state == 'Z'
}

// get returns the body of GET url.
func get(t *testing.T, url string) string {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	return string(b)
}

// recorder keeps every status a driver reported, one Report per change.
type recorder struct {
	mu   sync.Mutex
	seen []*pb.InstanceStatus
}

func record(t *testing.T, d *Driver) *recorder {
	r := &recorder{}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			ch := d.Changed()
			rep := d.Report()
			r.mu.Lock()
			r.seen = append(r.seen, rep.GetInstances()...)
			r.mu.Unlock()
			select {
			case <-ch:
			case <-stop:
				return
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-done
	})
	return r
}

// saw reports whether any recorded status satisfies f.
func (r *recorder) saw(f func(*pb.InstanceStatus) bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.seen {
		if f(s) {
			return true
		}
	}
	return false
}
