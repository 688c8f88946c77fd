package driver

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// clockTicks is USER_HZ, the unit of the times in /proc/<pid>/stat: 100 on
// every Linux architecture the agent runs on, whatever the kernel's HZ.
const clockTicks = 100

// usageMark is the last CPU reading of an instance's process: the
// baseline of its next one.
type usageMark struct {
	pid   int
	start uint64    // the process's start time, in ticks after boot
	cpu   uint64    // utime+stime+cutime+cstime, in ticks
	at    time.Time // when it was read; monotonic
}

// Usage returns the CPU and memory of every instance whose process runs
// (started or adopted), in id order; nil when none does. CPU is the
// process's CPU time (its own and that of its reaped children) over wall
// time since the previous Usage call, in percent of one core; the first
// call for a process (a new instance, or a restart with a new pid)
// averages over the process's whole life instead. The percentage is
// capped at 100 per core of the host, so that children reaped at once
// (whose whole CPU time lands in one window) cannot report a spike no
// host can produce. RSS is the process's resident memory. A process that
// exits meanwhile is left out.
//
// Usage reads /proc/<pid>/stat and /proc/<pid>/statm once per instance, and
// /proc/uptime once when a process is new. It is safe for concurrent use,
// with everything else the Driver does; the caller owns the result.
func (d *Driver) Usage() []*pb.InstanceUsage {
	type target struct {
		id    string
		pid   int
		ticks uint64
	}
	d.mu.Lock()
	targets := make([]target, 0, len(d.instances))
	for id, in := range d.instances {
		if p := in.proc; p != nil && !p.exited() {
			targets = append(targets, target{id, p.pid, p.ticks})
		}
	}
	d.mu.Unlock()
	slices.SortFunc(targets, func(a, b target) int { return strings.Compare(a.id, b.id) })

	// One caller at a time: the marks are each call's baselines.
	d.usageMu.Lock()
	defer d.usageMu.Unlock()
	prev := d.usage
	d.usage = make(map[string]usageMark, len(targets))
	maxPercent := 100 * float64(runtime.NumCPU())
	page := uint64(os.Getpagesize())
	uptime := -1.0 // read once, when a process has no baseline
	var out []*pb.InstanceUsage
	for _, tg := range targets {
		dir := "/proc/" + strconv.Itoa(tg.pid)
		b, err := os.ReadFile(dir + "/stat")
		if err != nil {
			continue // exited since
		}
		st, err := parseStatUsage(b)
		// A zombie is about to be reaped; another start time is another
		// process that got the pid (0: the driver could not read it).
		if err != nil || st.state == 'Z' || (tg.ticks != 0 && st.start != tg.ticks) {
			continue
		}
		b, err = os.ReadFile(dir + "/statm")
		if err != nil {
			continue
		}
		rss, err := parseStatm(b)
		if err != nil {
			continue
		}
		now := time.Now()
		cur := usageMark{pid: tg.pid, start: st.start, cpu: st.cpu, at: now}
		var pct float64
		if m, ok := prev[tg.id]; ok && m.pid == cur.pid && m.start == cur.start {
			if cur.cpu >= m.cpu {
				pct = cpuPercent(cur.cpu-m.cpu, now.Sub(m.at).Seconds(), maxPercent)
			}
		} else {
			if uptime < 0 {
				if uptime, err = readUptime(); err != nil {
					uptime = 0 // no CPU for new processes this time
				}
			}
			pct = cpuPercent(cur.cpu, uptime-float64(cur.start)/clockTicks, maxPercent)
		}
		d.usage[tg.id] = cur
		out = append(out, &pb.InstanceUsage{Id: tg.id, CpuPercent: pct, RssBytes: rss * page})
	}
	return out
}

// cpuPercent returns ticks of CPU time over seconds of wall time, in
// percent of one core, at most limit. No time passed is 0.
func cpuPercent(ticks uint64, seconds, limit float64) float64 {
	if seconds <= 0 {
		return 0
	}
	return min(100*float64(ticks)/clockTicks/seconds, limit)
}

// statUsage is what Usage reads of /proc/<pid>/stat.
type statUsage struct {
	state byte
	cpu   uint64 // utime+stime+cutime+cstime (fields 14-17), in ticks
	start uint64 // starttime (field 22), in ticks after boot
}

// parseStatUsage parses the contents of a /proc/<pid>/stat file, counting
// fields from the last ')' as parseStat does.
func parseStatUsage(b []byte) (statUsage, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return statUsage{}, errors.New("stat: no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), so field n is f[n-3].
	if len(f) < 20 || len(f[0]) != 1 {
		return statUsage{}, errors.New("stat: too few fields")
	}
	st := statUsage{state: f[0][0]}
	for n := 14; n <= 17; n++ {
		// cutime and cstime are signed in the kernel's format; a negative
		// one counts as nothing.
		v, err := strconv.ParseInt(f[n-3], 10, 64)
		if err != nil {
			return statUsage{}, fmt.Errorf("stat: field %d: %w", n, err)
		}
		st.cpu += uint64(max(v, 0))
	}
	var err error
	if st.start, err = strconv.ParseUint(f[22-3], 10, 64); err != nil {
		return statUsage{}, fmt.Errorf("stat: starttime: %w", err)
	}
	return st, nil
}

// parseStatm returns the resident pages, the second field of a
// /proc/<pid>/statm file.
func parseStatm(b []byte) (uint64, error) {
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, errors.New("statm: too few fields")
	}
	v, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("statm: resident: %w", err)
	}
	return v, nil
}

// readUptime returns the seconds since boot, from /proc/uptime.
func readUptime() (float64, error) {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0, err
	}
	return parseUptime(b)
}

// parseUptime parses the contents of /proc/uptime: the seconds since boot,
// then the idle seconds.
func parseUptime(b []byte) (float64, error) {
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, errors.New("uptime: empty")
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil || !(v >= 0) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("uptime: %q is no time since boot", f[0])
	}
	return v, nil
}
