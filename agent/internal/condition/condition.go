// Package condition watches the host for what makes it unfit for new
// instances (the filesystem of the data directory nearly full, little
// memory available, a stalled disk) and keeps the set of conditions the
// agent reports to the controllers, as the kubelet keeps a node's pressure
// conditions.
//
// A condition begins as soon as its cause is seen, and ends once its cause
// has been gone for the transition period, so that a host hovering around
// a threshold does not flap between fit and unfit.
package condition

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shirou/gopsutil/v3/mem"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hostscale/hostscale/internal/logging"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// Space is what a filesystem has and has free.
type Space struct {
	TotalBytes, FreeBytes   uint64
	TotalInodes, FreeInodes uint64
}

// MinFreeInodesPercent: a filesystem with fewer inodes free than this is
// under disk pressure whatever its free bytes (the kubelet's default).
const MinFreeInodesPercent = 5

// Defaults.
const (
	DefaultDiskFreePercent   = 10
	DefaultMemoryFreePercent = 5
	DefaultTransition        = 5 * time.Minute
	DefaultStallLimit        = 5 * time.Second
)

// Config configures a Monitor.
type Config struct {
	// DataDir is the directory whose filesystem is watched for space.
	DataDir string
	// DiskFreePercent: under this much of the data directory's filesystem
	// free, the host is under disk pressure; 0 never.
	DiskFreePercent float64
	// MemoryFreePercent: under this much of the memory available, the host
	// is under memory pressure; 0 never.
	MemoryFreePercent float64
	// Transition is how long a cause must be gone before its condition
	// ends.
	Transition time.Duration
	// Stalled, when set, tells how long the write to the data directory
	// under way has run (zero when none); past StallLimit the disk is
	// stalled.
	Stalled    func() time.Duration
	StallLimit time.Duration
	// Interval is how often Run checks.
	Interval time.Duration
	// Disk and Memory measure the host; nil means statfs(2) and
	// /proc/meminfo through gopsutil.
	Disk   func(dir string) (Space, error)
	Memory func() (available, total uint64, err error)
	// Now is the clock; nil means time.Now.
	Now        func() time.Time
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// DefaultConfig returns the agent's defaults; DataDir must still be set.
func DefaultConfig() Config {
	return Config{
		DiskFreePercent:   DefaultDiskFreePercent,
		MemoryFreePercent: DefaultMemoryFreePercent,
		Transition:        DefaultTransition,
		StallLimit:        DefaultStallLimit,
		Interval:          time.Second,
	}
}

// Validate reports the first field that makes the config unusable.
func (c Config) Validate() error {
	switch {
	case c.DataDir == "":
		return errors.New("condition: DataDir must be set")
	case c.DiskFreePercent < 0 || c.DiskFreePercent >= 100:
		return fmt.Errorf("condition: DiskFreePercent %v is not in [0, 100)", c.DiskFreePercent)
	case c.MemoryFreePercent < 0 || c.MemoryFreePercent >= 100:
		return fmt.Errorf("condition: MemoryFreePercent %v is not in [0, 100)", c.MemoryFreePercent)
	case c.Transition < 0:
		return errors.New("condition: Transition must not be negative")
	case c.Interval <= 0:
		return errors.New("condition: Interval must be positive")
	case c.Stalled != nil && c.StallLimit <= 0:
		return errors.New("condition: StallLimit must be positive")
	}
	return nil
}

// state is one condition's.
type state struct {
	active  bool
	since   time.Time
	message string
	// seen is when the cause was last seen.
	seen time.Time
}

// Monitor keeps the host's conditions. It is safe for concurrent use.
type Monitor struct {
	cfg   Config
	log   *slog.Logger
	gauge *prometheus.GaugeVec

	// disk is the latest statfs result; a statfs that has not returned
	// (a hung network filesystem) holds back no other check.
	diskMu    sync.Mutex
	disk      Space
	diskErr   error
	diskKnown bool
	diskBusy  bool

	mu      sync.Mutex
	states  map[pb.NodeConditionType]*state
	changed chan struct{}
}

// types lists the conditions in the order they are reported.
var types = []pb.NodeConditionType{
	pb.NodeConditionType_NODE_CONDITION_TYPE_DISK_PRESSURE,
	pb.NodeConditionType_NODE_CONDITION_TYPE_MEMORY_PRESSURE,
	pb.NodeConditionType_NODE_CONDITION_TYPE_DISK_STALLED,
}

// Name is a condition's short name, as metrics and logs spell it:
// disk_pressure, memory_pressure, disk_stalled.
func Name(t pb.NodeConditionType) string {
	return strings.ToLower(strings.TrimPrefix(t.String(), "NODE_CONDITION_TYPE_"))
}

// New returns a Monitor with no condition; Check or Run fill it.
func New(cfg Config) (*Monitor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Disk == nil {
		cfg.Disk = statfs
	}
	if cfg.Memory == nil {
		cfg.Memory = memory
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	m := &Monitor{
		cfg:     cfg,
		log:     logging.OrDiscard(cfg.Logger),
		states:  map[pb.NodeConditionType]*state{},
		changed: make(chan struct{}),
		gauge: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hostscale_agent_node_condition",
			Help: "1 while the host is under the condition (disk_pressure, memory_pressure, disk_stalled), else 0: the controllers place no instance on it.",
		}, []string{"condition"}),
	}
	for _, t := range types {
		m.states[t] = &state{}
		m.gauge.WithLabelValues(Name(t)).Set(0)
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(m.gauge)
	}
	return m, nil
}

// Run checks every Interval until ctx is done. The first check is at once.
func (m *Monitor) Run(ctx context.Context) error {
	t := time.NewTicker(m.cfg.Interval)
	defer t.Stop()
	for {
		m.Check(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// statfsWait bounds Check's wait for the statfs it starts.
const statfsWait = time.Second

// Check measures the host once and updates the conditions. It waits for
// the statfs it starts for at most a second; one that has not returned by
// then (a hung network filesystem) is not started again until it does, and
// the disk's space is the last one known.
func (m *Monitor) Check(ctx context.Context) {
	now := m.cfg.Now()
	causes := map[pb.NodeConditionType]string{}

	if m.cfg.DiskFreePercent > 0 {
		if sp, err, ok := m.space(ctx); ok && err == nil {
			if msg := diskCause(m.cfg.DataDir, sp, m.cfg.DiskFreePercent); msg != "" {
				causes[pb.NodeConditionType_NODE_CONDITION_TYPE_DISK_PRESSURE] = msg
			}
		} else if ok {
			m.log.Debug("cannot measure the data directory's filesystem", "dir", m.cfg.DataDir, "err", err)
		}
	}
	if m.cfg.MemoryFreePercent > 0 {
		avail, total, err := m.cfg.Memory()
		if err == nil && total > 0 {
			if pct := 100 * float64(avail) / float64(total); pct < m.cfg.MemoryFreePercent {
				causes[pb.NodeConditionType_NODE_CONDITION_TYPE_MEMORY_PRESSURE] = fmt.Sprintf(
					"%s of %s memory available (%.1f %%, under %v %%)", bytes(avail), bytes(total), pct, m.cfg.MemoryFreePercent)
			}
		}
	}
	if m.cfg.Stalled != nil {
		if d := m.cfg.Stalled(); d > m.cfg.StallLimit {
			causes[pb.NodeConditionType_NODE_CONDITION_TYPE_DISK_STALLED] = fmt.Sprintf(
				"a write of the state file in %s has not returned for %v", m.cfg.DataDir, d.Round(time.Second))
		}
	}
	m.update(now, causes)
}

// diskCause says why sp is under disk pressure, or "" when it is not.
func diskCause(dir string, sp Space, minFree float64) string {
	if sp.TotalBytes > 0 {
		if pct := 100 * float64(sp.FreeBytes) / float64(sp.TotalBytes); pct < minFree {
			return fmt.Sprintf("%s of %s free on the filesystem of %s (%.1f %%, under %v %%)",
				bytes(sp.FreeBytes), bytes(sp.TotalBytes), dir, pct, minFree)
		}
	}
	if sp.TotalInodes > 0 {
		if pct := 100 * float64(sp.FreeInodes) / float64(sp.TotalInodes); pct < MinFreeInodesPercent {
			return fmt.Sprintf("%d of %d inodes free on the filesystem of %s (%.1f %%, under %d %%)",
				sp.FreeInodes, sp.TotalInodes, dir, pct, MinFreeInodesPercent)
		}
	}
	return ""
}

// space returns the last statfs result, starting a new one unless one
// runs; known is false until one returned.
func (m *Monitor) space(ctx context.Context) (sp Space, err error, known bool) {
	m.diskMu.Lock()
	var done chan struct{}
	if !m.diskBusy {
		m.diskBusy = true
		done = make(chan struct{})
		go func() {
			defer close(done)
			sp, err := m.cfg.Disk(m.cfg.DataDir)
			m.diskMu.Lock()
			m.disk, m.diskErr, m.diskKnown, m.diskBusy = sp, err, true, false
			m.diskMu.Unlock()
		}()
	}
	m.diskMu.Unlock()
	if done != nil {
		t := time.NewTimer(statfsWait)
		defer t.Stop()
		select {
		case <-done:
		case <-ctx.Done():
		case <-t.C:
		}
	}
	m.diskMu.Lock()
	defer m.diskMu.Unlock()
	return m.disk, m.diskErr, m.diskKnown
}

// update applies the causes seen at now.
func (m *Monitor) update(now time.Time, causes map[pb.NodeConditionType]string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	changed := false
	for _, t := range types {
		s := m.states[t]
		msg, present := causes[t]
		switch {
		case present && !s.active:
			s.active, s.since, s.message, s.seen = true, now, msg, now
			changed = true
			m.gauge.WithLabelValues(Name(t)).Set(1)
			m.log.Warn("the host is under a condition: no instance will be placed on it", "condition", Name(t), "cause", msg)
		case present:
			s.seen = now
		case s.active && now.Sub(s.seen) >= m.cfg.Transition:
			s.active = false
			changed = true
			m.gauge.WithLabelValues(Name(t)).Set(0)
			m.log.Info("a condition of the host ended", "condition", Name(t), "lasted", now.Sub(s.since).Round(time.Second))
		}
	}
	if changed {
		close(m.changed)
		m.changed = make(chan struct{})
	}
}

// Conditions returns the conditions the host is under, in type order.
func (m *Monitor) Conditions() []*pb.NodeCondition {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*pb.NodeCondition
	for _, t := range types {
		if s := m.states[t]; s.active {
			out = append(out, &pb.NodeCondition{Type: t, Since: timestamppb.New(s.since), Message: s.message})
		}
	}
	return out
}

// Changed returns a channel closed at the next change of Conditions.
func (m *Monitor) Changed() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.changed
}

func statfs(dir string) (Space, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return Space{}, err
	}
	bs := uint64(st.Bsize)
	return Space{
		TotalBytes: st.Blocks * bs, FreeBytes: st.Bavail * bs,
		TotalInodes: st.Files, FreeInodes: st.Ffree,
	}, nil
}

func memory() (uint64, uint64, error) {
	v, err := mem.VirtualMemory()
	if err != nil {
		return 0, 0, err
	}
	return v.Available, v.Total, nil
}

// bytes spells n in binary units: "512 B", "1.5 GiB".
func bytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
