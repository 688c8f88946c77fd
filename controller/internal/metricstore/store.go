// Package metricstore keeps the leader's in-memory window of host samples:
// one ring buffer per node, each slot a timestamp and one float32 per
// series. Samples are perishable and never written to Raft; a new leader
// starts with empty windows.
//
// Memory: a slot is 64 bytes (8 for the time, 14 series × 4), so a node
// with the default 300 slots (5 minutes at one sample a second) takes about
// 19 KiB, and 10,000 nodes about 190 MiB. float32 keeps about seven
// significant digits: byte counts are stored to within a millionth.
package metricstore

import (
	"math"
	"slices"
	"sort"
	"sync"
	"time"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// The series a sample holds, in slot order.
const (
	CPUPercent = iota
	Load1
	Load5
	Load15
	MemoryUsedPercent
	MemoryUsedBytes
	SwapUsedPercent
	DiskUsedPercent
	DiskReadBytesPerSecond
	DiskWriteBytesPerSecond
	NetRxBytesPerSecond
	NetTxBytesPerSecond
	TCPConnections
	Processes
	NumSeries
)

// SeriesNames are the series' names in the API, by index.
var SeriesNames = [NumSeries]string{
	"cpu_percent", "load1", "load5", "load15", "memory_used_percent", "memory_used_bytes",
	"swap_used_percent", "disk_used_percent", "disk_read_bytes_per_second", "disk_write_bytes_per_second",
	"net_rx_bytes_per_second", "net_tx_bytes_per_second", "tcp_connections", "processes",
}

// SeriesIndex returns the index of a series name.
func SeriesIndex(name string) (int, bool) {
	i := slices.Index(SeriesNames[:], name)
	return i, i >= 0
}

type slot struct {
	t int64 // unix nanoseconds
	v [NumSeries]float32
}

type ring struct {
	slots []slot
	next  int // where the next slot goes
	n     int // slots in use
}

func (r *ring) last() (slot, bool) {
	if r.n == 0 {
		return slot{}, false
	}
	return r.slots[(r.next-1+len(r.slots))%len(r.slots)], true
}

// Store is safe for concurrent use.
type Store struct {
	capacity int
	mu       sync.RWMutex
	nodes    map[string]*ring
}

// New returns a store keeping the newest capacity samples of each node.
func New(capacity int) *Store {
	return &Store{capacity: max(capacity, 1), nodes: map[string]*ring{}}
}

// Values extracts a sample's series values.
func Values(s *pb.Sample) [NumSeries]float64 {
	var v [NumSeries]float64
	v[CPUPercent] = s.CpuPercent
	v[Load1], v[Load5], v[Load15] = s.Load1, s.Load5, s.Load15
	v[MemoryUsedPercent] = s.MemoryUsedPercent
	v[MemoryUsedBytes] = float64(s.MemoryUsedBytes)
	v[SwapUsedPercent] = s.SwapUsedPercent
	for _, d := range s.Disks {
		v[DiskUsedPercent] = math.Max(v[DiskUsedPercent], d.UsedPercent)
	}
	v[DiskReadBytesPerSecond] = s.DiskReadBytesPerSecond
	v[DiskWriteBytesPerSecond] = s.DiskWriteBytesPerSecond
	v[NetRxBytesPerSecond] = s.NetRxBytesPerSecond
	v[NetTxBytesPerSecond] = s.NetTxBytesPerSecond
	v[TCPConnections] = float64(s.TcpConnections)
	v[Processes] = float64(s.Processes)
	return v
}

// Add stores a sample of node. It returns false, storing nothing, when the
// sample is not newer than the node's newest.
func (s *Store) Add(node string, smp *pb.Sample) bool {
	t := smp.GetTime().AsTime().UnixNano()
	vals := Values(smp)
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.nodes[node]
	if r == nil {
		r = &ring{slots: make([]slot, s.capacity)}
		s.nodes[node] = r
	}
	if last, ok := r.last(); ok && t <= last.t {
		return false
	}
	sl := &r.slots[r.next]
	sl.t = t
	for i, v := range vals {
		sl.v[i] = float32(v)
	}
	r.next = (r.next + 1) % len(r.slots)
	r.n = min(r.n+1, len(r.slots))
	return true
}

// Newest returns the time of node's newest sample.
func (s *Store) Newest(node string) (time.Time, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if r := s.nodes[node]; r != nil {
		if l, ok := r.last(); ok {
			return time.Unix(0, l.t).UTC(), true
		}
	}
	return time.Time{}, false
}

// Point is one value of a series.
type Point struct {
	Time  time.Time
	Value float64
}

// Series returns node's values of one series since from, oldest first.
func (s *Store) Series(node string, series int, from time.Time) []Point {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r := s.nodes[node]
	if r == nil {
		return nil
	}
	f := from.UnixNano()
	out := make([]Point, 0, r.n)
	for i := range r.n {
		sl := r.slots[(r.next-r.n+i+len(r.slots))%len(r.slots)]
		if sl.t >= f {
			out = append(out, Point{Time: time.Unix(0, sl.t).UTC(), Value: float64(sl.v[series])})
		}
	}
	return out
}

// Nodes returns the nodes with samples.
func (s *Store) Nodes() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]string, 0, len(s.nodes))
	for n := range s.nodes {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Reset forgets every sample.
func (s *Store) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nodes = map[string]*ring{}
}

// Forget drops node's samples.
func (s *Store) Forget(node string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.nodes, node)
}

// Quantile returns the q-quantile (0..1) of vs by nearest rank; vs is
// sorted in place. NaN for no values.
func Quantile(vs []float64, q float64) float64 {
	if len(vs) == 0 {
		return math.NaN()
	}
	sort.Float64s(vs)
	i := int(math.Ceil(q*float64(len(vs)))) - 1
	return vs[max(0, min(i, len(vs)-1))]
}

// Latest returns the time and values of node's newest sample without
// copying its window.
func (s *Store) Latest(node string) (time.Time, [NumSeries]float64, bool) {
	var vs [NumSeries]float64
	s.mu.RLock()
	defer s.mu.RUnlock()
	r := s.nodes[node]
	if r == nil {
		return time.Time{}, vs, false
	}
	l, ok := r.last()
	if !ok {
		return time.Time{}, vs, false
	}
	for i, v := range l.v {
		vs[i] = float64(v)
	}
	return time.Unix(0, l.t).UTC(), vs, true
}
