package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/exp/trace"
)

// A write's critical path, from an execution trace of the load: starting
// at the end of a writer's "write" region and walking back in time, each
// moment is charged to what the write was waiting for then. While the
// goroutine followed runs, it is its CPU time, charged by the kind of
// goroutine; while it is runnable, the wait for a CPU; while it is in a
// system call, that call. When it was woken by another goroutine, the walk
// continues with that goroutine from the moment it woke it; when the
// network poller woke it, with the goroutine whose network write came
// last before, the gap being the network's wake-up. The parts of a write
// add up to its time in the trace.

// pathPart is where a write's critical path spends its time.
type pathPart string

const (
	// On a CPU, by the goroutine.
	partRaft      pathPart = "Raft"
	partTransport pathPart = "gRPC transport"
	partHandlers  pathPart = "handlers"
	partForward   pathPart = "leader's forwarding"
	partClient    pathPart = "client"
	partOtherCPU  pathPart = "other CPU"
	// Waiting.
	partSched        pathPart = "waiting for a CPU"
	partFsync        pathPart = "fsync"
	partDiskWrite    pathPart = "disk write"
	partNetWrite     pathPart = "network write"
	partNetRead      pathPart = "network read"
	partOtherSyscall pathPart = "other syscalls"
	partNetWake      pathPart = "network wake-up"
	partUnknown      pathPart = "unattributed"
)

// pathParts orders the parts for the report.
var pathParts = []pathPart{partRaft, partTransport, partHandlers, partForward, partClient, partOtherCPU,
	partSched, partFsync, partDiskWrite, partNetWrite, partNetRead, partOtherSyscall, partNetWake, partUnknown}

// writeRegion is the region each writer's write is traced in.
const writeRegion = "write"

// pathStats is the mean time per write of each part of the writes' critical
// paths in one trace.
type pathStats struct {
	writes int
	mean   time.Duration
	parts  map[pathPart]time.Duration
}

type transition struct {
	at       trace.Time
	from, to trace.GoState
	// by made the transition; trace.NoGoroutine when the runtime did,
	// as the network poller does.
	by     trace.GoID
	reason string
	// syscall is what a system call entered was.
	syscall pathPart
}

type goroutine struct {
	part  pathPart
	trans []transition
}

type span struct {
	g          trace.GoID
	start, end trace.Time
}

type pathTrace struct {
	gs     map[trace.GoID]*goroutine
	writes []span
	// sends are the network writes, by start.
	sends []span
}

// criticalPath reads an execution trace and returns the mean parts of its
// writes' critical paths. The first and last few writes, which may have
// begun before the trace or the goroutines' first events, are left out.
func criticalPath(r io.Reader) (*pathStats, error) {
	pt, err := readPathTrace(r)
	if err != nil {
		return nil, err
	}
	const skip = 3
	if len(pt.writes) <= 2*skip {
		return nil, fmt.Errorf("trace holds %d writes, too few", len(pt.writes))
	}
	ws := pt.writes[skip : len(pt.writes)-skip]
	st := &pathStats{writes: len(ws), parts: map[pathPart]time.Duration{}}
	var total time.Duration
	for _, w := range ws {
		pt.walk(w, st.parts)
		total += w.end.Sub(w.start)
	}
	n := time.Duration(len(ws))
	st.mean = total / n
	for p, d := range st.parts {
		st.parts[p] = d / n
	}
	return st, nil
}

func readPathTrace(r io.Reader) (*pathTrace, error) {
	tr, err := trace.NewReader(r)
	if err != nil {
		return nil, err
	}
	pt := &pathTrace{gs: map[trace.GoID]*goroutine{}}
	get := func(id trace.GoID) *goroutine {
		g := pt.gs[id]
		if g == nil {
			g = &goroutine{part: partOtherCPU}
			pt.gs[id] = g
		}
		return g
	}
	open := map[trace.GoID]trace.Time{}
	for {
		ev, err := tr.ReadEvent()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		switch ev.Kind() {
		case trace.EventRegionBegin:
			if ev.Region().Type == writeRegion {
				open[ev.Goroutine()] = ev.Time()
			}
		case trace.EventRegionEnd:
			if start, ok := open[ev.Goroutine()]; ok && ev.Region().Type == writeRegion {
				pt.writes = append(pt.writes, span{g: ev.Goroutine(), start: start, end: ev.Time()})
				delete(open, ev.Goroutine())
			}
		case trace.EventStateTransition:
			st := ev.StateTransition()
			if st.Resource.Kind != trace.ResourceGoroutine {
				continue
			}
			id := st.Resource.Goroutine()
			from, to := st.Goroutine()
			g := get(id)
			tn := transition{at: ev.Time(), from: from, to: to, by: ev.Goroutine(), reason: st.Reason}
			var frames []string
			if from == trace.GoRunning && st.Stack != trace.NoStack {
				// The goroutine's own stack: its root names it.
				for f := range st.Stack.Frames() {
					frames = append(frames, f.Func)
				}
				if len(frames) > 0 {
					g.part = cpuPart(frames[len(frames)-1])
				}
			}
			if to == trace.GoSyscall {
				// Without a stack, among the other system calls.
				tn.syscall = syscallPart(frames)
			}
			g.trans = append(g.trans, tn)
		}
	}
	for id, g := range pt.gs {
		for i, tn := range g.trans {
			if tn.syscall == partNetWrite && i+1 < len(g.trans) {
				pt.sends = append(pt.sends, span{g: id, start: tn.at, end: g.trans[i+1].at})
			}
		}
	}
	sort.Slice(pt.sends, func(i, j int) bool { return pt.sends[i].start < pt.sends[j].start })
	sort.Slice(pt.writes, func(i, j int) bool { return pt.writes[i].start < pt.writes[j].start })
	return pt, nil
}

// cpuPart charges a goroutine's CPU time by its root function.
func cpuPart(root string) pathPart {
	switch {
	case strings.HasPrefix(root, "github.com/hashicorp/raft"):
		return partRaft
	case strings.HasPrefix(root, "google.golang.org/grpc.(*Server).serverWorker"),
		strings.HasPrefix(root, "google.golang.org/grpc.(*Server).serveStreams"):
		// Where the handlers run, the followers' forwarding included.
		return partHandlers
	case strings.HasPrefix(root, "google.golang.org/grpc"):
		return partTransport
	case strings.Contains(root, "hostscale/controller/internal/raftnode"),
		strings.Contains(root, "hostscale/controller/internal/endpoint"):
		// The leader's end of forwarded calls.
		return partForward
	case strings.HasPrefix(root, "main."), strings.Contains(root, "hostscale/controller/internal/raftbench"):
		return partClient
	}
	return partOtherCPU
}

// syscallPart names a system call by its caller's frames.
func syscallPart(frames []string) pathPart {
	for _, f := range frames {
		switch {
		case strings.Contains(f, "Fsync"), strings.Contains(f, "Fdatasync"):
			return partFsync
		case strings.Contains(f, "Pwrite"), strings.HasPrefix(f, "os.(*File).Write"):
			return partDiskWrite
		case strings.Contains(f, "(*netFD).Write"), strings.Contains(f, "(*netFD).writeBuffers"):
			return partNetWrite
		case strings.Contains(f, "(*netFD).Read"), strings.Contains(f, "(*rawConn).Read"):
			return partNetRead
		}
	}
	return partOtherSyscall
}

// maxPathSteps bounds one write's walk.
const maxPathSteps = 100000

// walk charges the critical path of w to acc.
func (pt *pathTrace) walk(w span, acc map[pathPart]time.Duration) {
	id, t := w.g, w.end
	for steps := 0; t > w.start; steps++ {
		g := pt.gs[id]
		if g == nil || steps == maxPathSteps {
			acc[partUnknown] += t.Sub(w.start)
			return
		}
		i := sort.Search(len(g.trans), func(i int) bool { return g.trans[i].at >= t }) - 1
		if i < 0 {
			acc[partUnknown] += t.Sub(w.start)
			return
		}
		tn := g.trans[i]
		in := t.Sub(max(tn.at, w.start))
		switch tn.to {
		case trace.GoRunning:
			acc[g.part] += in
		case trace.GoSyscall:
			acc[tn.syscall] += in
		case trace.GoRunnable:
			acc[partSched] += in
			if tn.at <= w.start {
				return
			}
			switch {
			case tn.from == trace.GoRunning || tn.from == trace.GoSyscall:
				// Preempted, yielded, or back from a system call
				// without a CPU: the same goroutine ran before.
			case tn.by != trace.NoGoroutine && tn.by != id:
				// Woken, or started, by another goroutine.
				id = tn.by
			case i > 0 && g.trans[i-1].reason == "network":
				s, ok := pt.sender(id, tn.at)
				if !ok {
					acc[partUnknown] += tn.at.Sub(w.start)
					return
				}
				if s.end < tn.at {
					acc[partNetWake] += tn.at.Sub(max(s.end, w.start))
				}
				id, t = s.g, min(s.end, tn.at)
				continue
			default:
				// A timer, or the runtime.
				acc[partUnknown] += tn.at.Sub(w.start)
				return
			}
		default:
			acc[partUnknown] += in
		}
		t = tn.at
	}
}

// sender is the last network write by a goroutine other than id to start
// before at.
func (pt *pathTrace) sender(id trace.GoID, at trace.Time) (span, bool) {
	i := sort.Search(len(pt.sends), func(i int) bool { return pt.sends[i].start >= at }) - 1
	for ; i >= 0; i-- {
		if pt.sends[i].g != id {
			return pt.sends[i], true
		}
	}
	return span{}, false
}

// criticalPathFile is criticalPath of the trace in file.
func criticalPathFile(file string) (*pathStats, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return criticalPath(f)
}

// reportPaths prints the critical paths of the results that have one.
func reportPaths(w io.Writer, rs []result) {
	var tw *tabwriter.Writer
	for _, r := range rs {
		if r.path == nil {
			continue
		}
		if tw == nil {
			fmt.Fprintln(w, "\nA write's critical path, from one traced second, mean µs per write (on a CPU, by goroutine; then waiting):")
			tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
			head := []string{"store", "clients", "mode", "writes", "write"}
			for _, p := range pathParts {
				head = append(head, string(p))
			}
			fmt.Fprintln(tw, strings.Join(head, "\t")+"\t")
		}
		row := []string{r.store, fmt.Sprint(r.clients), r.mode, fmt.Sprint(r.path.writes), usText(r.path.mean)}
		for _, p := range pathParts {
			row = append(row, usText(r.path.parts[p]))
		}
		fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
	}
	if tw != nil {
		tw.Flush()
	}
}
