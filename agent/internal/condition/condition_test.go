package condition

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// host is a fake host whose measures a test sets.
type host struct {
	mu            sync.Mutex
	now           time.Time
	space         Space
	diskErr       error
	avail, total  uint64
	stalled       time.Duration
	statfsBlocked chan struct{}
}

func (h *host) clock() time.Time { h.mu.Lock(); defer h.mu.Unlock(); return h.now }
func (h *host) advance(d time.Duration) {
	h.mu.Lock()
	h.now = h.now.Add(d)
	h.mu.Unlock()
}
func (h *host) set(f func(h *host)) { h.mu.Lock(); f(h); h.mu.Unlock() }

func (h *host) disk(string) (Space, error) {
	h.mu.Lock()
	block := h.statfsBlocked
	h.mu.Unlock()
	if block != nil {
		<-block
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.space, h.diskErr
}

func (h *host) memory() (uint64, uint64, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.avail, h.total, nil
}

func (h *host) stall() time.Duration { h.mu.Lock(); defer h.mu.Unlock(); return h.stalled }

const gib = 1 << 30

func newMonitor(t *testing.T, reg prometheus.Registerer) (*Monitor, *host) {
	h := &host{
		now:   time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC),
		space: Space{TotalBytes: 100 * gib, FreeBytes: 50 * gib, TotalInodes: 1000, FreeInodes: 900},
		avail: 8 * gib, total: 16 * gib,
	}
	cfg := DefaultConfig()
	cfg.DataDir = "/var/lib/hostscale-agent"
	cfg.Transition = time.Minute
	cfg.Disk, cfg.Memory, cfg.Stalled, cfg.Now = h.disk, h.memory, h.stall, h.clock
	cfg.Registerer = reg
	m, err := New(cfg)
	require.NoError(t, err)
	return m, h
}

// check runs one Check and waits for the statfs it starts, so that the
// next Check sees its result.
func check(t *testing.T, m *Monitor) {
	t.Helper()
	m.Check(context.Background())
	require.Eventually(t, func() bool {
		m.diskMu.Lock()
		defer m.diskMu.Unlock()
		return !m.diskBusy
	}, 5*time.Second, time.Millisecond)
}

func kinds(cs []*pb.NodeCondition) []pb.NodeConditionType {
	var out []pb.NodeConditionType
	for _, c := range cs {
		out = append(out, c.Type)
	}
	return out
}

func TestMonitor_conditionsBeginAtOnceAndEndAfterTheTransition(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, h := newMonitor(t, reg)
	check(t, m)
	require.Empty(t, m.Conditions(), "a healthy host is under no condition")

	changed := m.Changed()
	h.set(func(h *host) { h.space.FreeBytes = 5 * gib })
	check(t, m)
	select {
	case <-changed:
	default:
		t.Fatal("Changed was not closed when disk pressure began")
	}
	cs := m.Conditions()
	require.Equal(t, []pb.NodeConditionType{pb.NodeConditionType_NODE_CONDITION_TYPE_DISK_PRESSURE}, kinds(cs))
	require.Equal(t, "5.0 GiB of 100.0 GiB free on the filesystem of /var/lib/hostscale-agent (5.0 %, under 10 %)", cs[0].Message)
	began := h.clock()
	require.Equal(t, began, cs[0].Since.AsTime())
	require.Equal(t, 1.0, testutil.ToFloat64(m.gauge.WithLabelValues("disk_pressure")))

	// The cause goes and comes back inside the transition: the condition
	// holds, from when it began.
	changed = m.Changed()
	h.set(func(h *host) { h.space.FreeBytes = 50 * gib })
	h.advance(50 * time.Second)
	check(t, m)
	h.set(func(h *host) { h.space.FreeBytes = 5 * gib })
	h.advance(5 * time.Second)
	check(t, m)
	h.set(func(h *host) { h.space.FreeBytes = 50 * gib })
	h.advance(59 * time.Second)
	check(t, m)
	require.Len(t, m.Conditions(), 1, "a cause gone for less than the transition keeps the condition")
	require.Equal(t, began, m.Conditions()[0].Since.AsTime())
	select {
	case <-changed:
		t.Fatal("Changed was closed while the set of conditions stayed the same")
	default:
	}

	h.advance(time.Second)
	check(t, m)
	require.Empty(t, m.Conditions(), "the cause was gone for the transition")
	select {
	case <-changed:
	default:
		t.Fatal("Changed was not closed when the condition ended")
	}
	require.Equal(t, 0.0, testutil.ToFloat64(m.gauge.WithLabelValues("disk_pressure")))
}

func TestMonitor_eachCause(t *testing.T) {
	cases := []struct {
		name    string
		set     func(h *host)
		want    pb.NodeConditionType
		message string
	}{
		{"inodes", func(h *host) { h.space.FreeInodes = 40 }, pb.NodeConditionType_NODE_CONDITION_TYPE_DISK_PRESSURE,
			"40 of 1000 inodes free on the filesystem of /var/lib/hostscale-agent (4.0 %, under 5 %)"},
		{"memory", func(h *host) { h.avail = 512 << 20 }, pb.NodeConditionType_NODE_CONDITION_TYPE_MEMORY_PRESSURE,
			"512.0 MiB of 16.0 GiB memory available (3.1 %, under 5 %)"},
		{"stalled", func(h *host) { h.stalled = 7 * time.Second }, pb.NodeConditionType_NODE_CONDITION_TYPE_DISK_STALLED,
			"a write of the state file in /var/lib/hostscale-agent has not returned for 7s"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, h := newMonitor(t, nil)
			h.set(c.set)
			check(t, m)
			cs := m.Conditions()
			require.Equal(t, []pb.NodeConditionType{c.want}, kinds(cs))
			require.Equal(t, c.message, cs[0].Message)
		})
	}

	t.Run("all at once, in type order", func(t *testing.T) {
		m, h := newMonitor(t, nil)
		h.set(func(h *host) { h.stalled, h.avail, h.space.FreeBytes = time.Minute, 1, 1 })
		check(t, m)
		require.Equal(t, []pb.NodeConditionType{
			pb.NodeConditionType_NODE_CONDITION_TYPE_DISK_PRESSURE,
			pb.NodeConditionType_NODE_CONDITION_TYPE_MEMORY_PRESSURE,
			pb.NodeConditionType_NODE_CONDITION_TYPE_DISK_STALLED,
		}, kinds(m.Conditions()))
	})

	t.Run("a write under the stall limit is no stall", func(t *testing.T) {
		m, h := newMonitor(t, nil)
		h.set(func(h *host) { h.stalled = 4 * time.Second })
		check(t, m)
		require.Empty(t, m.Conditions())
	})

	t.Run("a filesystem that cannot be measured is no pressure", func(t *testing.T) {
		m, h := newMonitor(t, nil)
		h.set(func(h *host) { h.diskErr = errors.New("statfs: no such file or directory"); h.space.FreeBytes = 0 })
		check(t, m)
		require.Empty(t, m.Conditions())
	})
}

func TestMonitor_aHungStatfsHoldsNoOtherCheckBack(t *testing.T) {
	m, h := newMonitor(t, nil)
	check(t, m)
	release := make(chan struct{})
	h.set(func(h *host) { h.statfsBlocked = release; h.space.FreeBytes = 1 })
	m.Check(context.Background()) // starts the statfs that hangs

	h.set(func(h *host) { h.stalled = 10 * time.Second })
	done := make(chan struct{})
	go func() { m.Check(context.Background()); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Check waited for a statfs that had not returned")
	}
	require.Equal(t, []pb.NodeConditionType{pb.NodeConditionType_NODE_CONDITION_TYPE_DISK_STALLED}, kinds(m.Conditions()),
		"the stall is seen, and the filesystem's last known space is used")

	close(release)
	h.set(func(h *host) { h.statfsBlocked = nil })
	check(t, m)
	check(t, m)
	require.Len(t, m.Conditions(), 2, "the statfs that returned shows the pressure")
}

func TestMonitor_realDataDir(t *testing.T) {
	cfg := DefaultConfig()
	cfg.DataDir = t.TempDir()
	m, err := New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	require.Eventually(t, func() bool {
		m.diskMu.Lock()
		defer m.diskMu.Unlock()
		return m.diskKnown
	}, 5*time.Second, 10*time.Millisecond)
	m.diskMu.Lock()
	sp, serr := m.disk, m.diskErr
	m.diskMu.Unlock()
	require.NoError(t, serr)
	require.NotZero(t, sp.TotalBytes)
	require.LessOrEqual(t, sp.FreeBytes, sp.TotalBytes)
	cancel()
	require.NoError(t, <-done)

	cfg.DataDir = "/nonexistent-" + strings.Repeat("x", 8)
	_, err = os.Stat(cfg.DataDir)
	require.True(t, os.IsNotExist(err))
	_, err = statfs(cfg.DataDir)
	require.Error(t, err)
}

func TestConfig_validate(t *testing.T) {
	for name, f := range map[string]func(c *Config){
		"DataDir":           func(c *Config) { c.DataDir = "" },
		"DiskFreePercent":   func(c *Config) { c.DiskFreePercent = 100 },
		"MemoryFreePercent": func(c *Config) { c.MemoryFreePercent = -1 },
		"Transition":        func(c *Config) { c.Transition = -time.Second },
		"Interval":          func(c *Config) { c.Interval = 0 },
		"StallLimit":        func(c *Config) { c.Stalled = func() time.Duration { return 0 }; c.StallLimit = 0 },
	} {
		c := DefaultConfig()
		c.DataDir = "/d"
		f(&c)
		_, err := New(c)
		require.ErrorContains(t, err, name)
	}
}

func TestBytes(t *testing.T) {
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536 << 20: "1.5 GiB", 3 << 40: "3.0 TiB"} {
		require.Equal(t, want, bytes(n))
	}
}
