package sample

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/shirou/gopsutil/v3/cpu"
	"github.com/shirou/gopsutil/v3/disk"
	"github.com/shirou/gopsutil/v3/host"
	"github.com/shirou/gopsutil/v3/load"
	"github.com/shirou/gopsutil/v3/mem"
	"github.com/shirou/gopsutil/v3/net"
	"github.com/shirou/gopsutil/v3/process"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hostscale/hostscale/internal/logging"
	"github.com/hostscale/hostscale/internal/version"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// Config configures a Host sampler.
type Config struct {
	// Mounts are the mount points whose usage is reported. Empty means
	// every real filesystem (pseudo, memory-backed and layered filesystems
	// and bind mounts are skipped); when the host has none, "/" is
	// reported.
	Mounts []string
	// CPUs, when set, are the cores (by index) whose use is the host's:
	// cpu_percent is their average and cpu_core_percent lists them alone,
	// as for a host that is one cpuset of a larger machine.
	CPUs []int
	// Refresh is how often the lists of mounts, disks and network
	// interfaces are read again.
	Refresh time.Duration
	// Logger receives a warning the first time a source cannot be read
	// (and an info record when it recovers). Nil discards.
	Logger *slog.Logger
}

// DefaultConfig returns a config reporting every real filesystem.
func DefaultConfig() Config {
	return Config{Refresh: time.Minute}
}

// Validate reports the first field that makes the config unusable.
func (c Config) Validate() error {
	for _, m := range c.Mounts {
		if !filepath.IsAbs(m) {
			return fmt.Errorf("sample: mount %q is not an absolute path", m)
		}
	}
	if c.Refresh <= 0 {
		return errors.New("sample: Refresh must be positive")
	}
	return nil
}

// Host samples the machine it runs on through gopsutil. Calls to Sample
// are serialized; Host is safe for concurrent use.
type Host struct {
	cfg Config
	log *slog.Logger
	// sys is the root of sysfs (gopsutil's HOST_SYS convention).
	sys string

	mu        sync.Mutex
	prevAt    time.Time
	prevCPU   []cpu.TimesStat
	prevDisk  counters
	prevNet   counters
	refreshAt time.Time
	mounts    []string
	disks     []string
	nics      map[string]bool
	failing   map[string]bool
}

// New returns a Host sampler. It takes a first reading of the CPU, disk
// and network counters so that the first Sample already reports rates.
func New(cfg Config) (*Host, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	sys := os.Getenv("HOST_SYS")
	if sys == "" {
		sys = "/sys"
	}
	h := &Host{
		cfg:     cfg,
		log:     logging.OrDiscard(cfg.Logger),
		sys:     sys,
		failing: map[string]bool{},
	}
	ctx := context.Background()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.refresh(ctx, time.Now())
	h.prevAt = time.Now()
	h.prevCPU, _ = cpu.TimesWithContext(ctx, true)
	h.prevDisk = h.diskCounters(ctx)
	h.prevNet = h.netCounters(ctx)
	return h, nil
}

// Sample implements Sampler. A source that cannot be read leaves its
// fields zero instead of failing the sample; Sample fails only when ctx is
// done.
func (h *Host) Sample(ctx context.Context) (*pb.Sample, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	now := time.Now()
	if now.Sub(h.refreshAt) >= h.cfg.Refresh {
		h.refresh(ctx, now)
	}
	s := &pb.Sample{Time: timestamppb.New(now)}
	elapsed := now.Sub(h.prevAt)
	h.prevAt = now

	if ts, err := cpu.TimesWithContext(ctx, true); h.check("cpu", err) {
		if len(h.cfg.CPUs) > 0 {
			ts = pickCPUs(ts, h.cfg.CPUs)
		}
		if len(ts) == len(h.prevCPU) {
			s.CpuPercent = cpuPercent(sumTimes(h.prevCPU), sumTimes(ts))
			s.CpuCorePercent = make([]float64, len(ts))
			for i := range ts {
				s.CpuCorePercent[i] = cpuPercent(h.prevCPU[i], ts[i])
			}
		}
		h.prevCPU = ts
	}
	if l, err := load.AvgWithContext(ctx); h.check("load", err) {
		s.Load1, s.Load5, s.Load15 = l.Load1, l.Load5, l.Load15
	}
	if m, err := mem.VirtualMemoryWithContext(ctx); h.check("memory", err) {
		s.MemoryUsedPercent, s.MemoryUsedBytes = m.UsedPercent, m.Used
	}
	if m, err := mem.SwapMemoryWithContext(ctx); h.check("swap", err) {
		s.SwapUsedPercent, s.SwapUsedBytes = m.UsedPercent, m.Used
	}
	for _, mp := range h.mounts {
		u, err := disk.UsageWithContext(ctx, mp)
		if !h.check("disk usage "+mp, err) {
			continue
		}
		s.Disks = append(s.Disks, &pb.DiskUsage{
			Mount:       mp,
			UsedPercent: u.UsedPercent,
			UsedBytes:   u.Used,
			TotalBytes:  u.Total,
		})
	}
	if d := h.diskCounters(ctx); d != nil {
		s.DiskReadBytesPerSecond, s.DiskWriteBytesPerSecond = rates(h.prevDisk, d, elapsed)
		h.prevDisk = d
	}
	if n := h.netCounters(ctx); n != nil {
		s.NetRxBytesPerSecond, s.NetTxBytesPerSecond = rates(h.prevNet, n, elapsed)
		h.prevNet = n
	}
	if pc, err := net.ProtoCountersWithContext(ctx, []string{"tcp"}); h.check("tcp", err) && len(pc) == 1 {
		if n := pc[0].Stats["CurrEstab"]; n > 0 {
			s.TcpConnections = uint32(n)
		}
	}
	if pids, err := process.PidsWithContext(ctx); h.check("processes", err) {
		s.Processes = uint32(len(pids))
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return s, nil
}

// Facts implements Sampler.
func (h *Host) Facts(ctx context.Context) (*pb.NodeFacts, error) {
	info, err := host.InfoWithContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("host info: %w", err)
	}
	f := &pb.NodeFacts{
		Hostname:     info.Hostname,
		Os:           info.OS,
		Platform:     strings.TrimSpace(info.Platform + " " + info.PlatformVersion),
		Kernel:       info.KernelVersion,
		AgentVersion: version.Version,
	}
	if info.BootTime > 0 {
		f.BootTime = timestamppb.New(time.Unix(int64(info.BootTime), 0))
	}
	n, err := cpu.CountsWithContext(ctx, true)
	if err != nil {
		return nil, fmt.Errorf("cpu count: %w", err)
	}
	f.CpuCount = uint32(n)
	if len(h.cfg.CPUs) > 0 {
		f.CpuCount = uint32(len(h.cfg.CPUs)) // the host is this cpuset
	}
	m, err := mem.VirtualMemoryWithContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("memory: %w", err)
	}
	f.MemoryBytes = m.Total
	return f, nil
}

// check reports whether err is nil, logging a source's failure once and
// its recovery once.
func (h *Host) check(source string, err error) bool {
	if err != nil {
		if !h.failing[source] {
			h.failing[source] = true
			h.log.Warn("cannot read host metric", "source", source, "err", err)
		}
		return false
	}
	if h.failing[source] {
		delete(h.failing, source)
		h.log.Info("host metric readable again", "source", source)
	}
	return true
}

// refresh re-reads which mounts, disks and interfaces are reported.
func (h *Host) refresh(ctx context.Context, now time.Time) {
	h.refreshAt = now
	if len(h.cfg.Mounts) > 0 {
		h.mounts = h.cfg.Mounts
	} else if parts, err := disk.PartitionsWithContext(ctx, true); h.check("mounts", err) {
		h.mounts = realMounts(parts)
		if len(h.mounts) == 0 {
			h.mounts = []string{"/"}
		}
	}
	h.disks = physical(filepath.Join(h.sys, "block"), func(name string) bool {
		return !strings.HasPrefix(name, "loop") && !strings.HasPrefix(name, "ram") && !strings.HasPrefix(name, "zram")
	})
	nics := physical(filepath.Join(h.sys, "class", "net"), func(name string) bool { return name != "lo" })
	h.nics = make(map[string]bool, len(nics))
	for _, n := range nics {
		h.nics[n] = true
	}
}

// physical lists the entries of a sysfs class directory that are backed by
// a device (a disk, not a device-mapper or md volume over it; a NIC, not a
// bridge or veth over it), so that traffic is counted once. When none is,
// it lists every entry keep accepts.
func physical(dir string, keep func(string) bool) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var dev, all []string
	for _, e := range ents {
		name := e.Name()
		if !keep(name) {
			continue
		}
		all = append(all, name)
		if _, err := os.Stat(filepath.Join(dir, name, "device")); err == nil {
			dev = append(dev, name)
		}
	}
	if len(dev) > 0 {
		return dev
	}
	return all
}

func (h *Host) diskCounters(ctx context.Context) counters {
	if len(h.disks) == 0 {
		return nil
	}
	names := append([]string(nil), h.disks...)
	io, err := disk.IOCountersWithContext(ctx, names...)
	if !h.check("disk io", err) {
		return nil
	}
	c := make(counters, len(io))
	for name, s := range io {
		c[name] = [2]uint64{s.ReadBytes, s.WriteBytes}
	}
	return c
}

func (h *Host) netCounters(ctx context.Context) counters {
	io, err := net.IOCountersWithContext(ctx, true)
	if !h.check("network io", err) {
		return nil
	}
	c := make(counters, len(h.nics))
	for _, s := range io {
		if h.nics[s.Name] {
			c[s.Name] = [2]uint64{s.BytesRecv, s.BytesSent}
		}
	}
	return c
}

// pickCPUs returns the times of the chosen cores, in the order given;
// cores the host does not have are left out.
func pickCPUs(ts []cpu.TimesStat, cores []int) []cpu.TimesStat {
	out := make([]cpu.TimesStat, 0, len(cores))
	for _, c := range cores {
		if c >= 0 && c < len(ts) {
			out = append(out, ts[c])
		}
	}
	return out
}
