package sample

import (
	"time"

	"github.com/shirou/gopsutil/v3/cpu"
)

// counterDelta is how much a monotonic counter grew from prev to cur. A
// counter that went backwards was reset (a driver reload, a wrap of a 32-bit
// counter, an interface re-created): it counted up from zero since, so cur
// is the best estimate of its growth.
func counterDelta(prev, cur uint64) uint64 {
	if cur < prev {
		return cur
	}
	return cur - prev
}

// counters are named monotonic byte counters: per disk or per interface,
// index 0 for read/receive and 1 for write/transmit.
type counters map[string][2]uint64

// rates returns the per-second growth of the counters in cur over prev
// across elapsed, summed over names. A name that is new in cur contributes
// nothing: its history is unknown, and counting its whole value would
// report a spike.
func rates(prev, cur counters, elapsed time.Duration) (in, out float64) {
	if elapsed <= 0 {
		return 0, 0
	}
	var a, b uint64
	for name, c := range cur {
		p, ok := prev[name]
		if !ok {
			continue
		}
		a += counterDelta(p[0], c[0])
		b += counterDelta(p[1], c[1])
	}
	s := elapsed.Seconds()
	return float64(a) / s, float64(b) / s
}

// cpuTotal is the time a CPU spent in any state; guest time is already
// counted in user time on Linux.
func cpuTotal(t cpu.TimesStat) float64 {
	return t.User + t.System + t.Idle + t.Nice + t.Iowait + t.Irq + t.Softirq + t.Steal
}

// cpuPercent is the busy share of a CPU between two readings, in [0, 100].
// Idle and iowait count as not busy. Readings that went backwards (a CPU
// taken offline and back) give 0.
func cpuPercent(prev, cur cpu.TimesStat) float64 {
	total := cpuTotal(cur) - cpuTotal(prev)
	idle := (cur.Idle + cur.Iowait) - (prev.Idle + prev.Iowait)
	if total <= 0 {
		return 0
	}
	p := (total - idle) / total * 100
	switch {
	case p < 0:
		return 0
	case p > 100:
		return 100
	}
	return p
}

// sumTimes adds per-CPU times into one total.
func sumTimes(ts []cpu.TimesStat) cpu.TimesStat {
	var s cpu.TimesStat
	for _, t := range ts {
		s.User += t.User
		s.System += t.System
		s.Idle += t.Idle
		s.Nice += t.Nice
		s.Iowait += t.Iowait
		s.Irq += t.Irq
		s.Softirq += t.Softirq
		s.Steal += t.Steal
	}
	s.CPU = "cpu-total"
	return s
}
