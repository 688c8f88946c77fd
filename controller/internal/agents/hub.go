// Package agents keeps what the leader knows of the agents streaming to it
// that is not in Raft: when each was last heard, its latest sample, the
// conditions it is under, its sample window (metricstore), which stream
// is current; and the liveness loop that marks a silent node down through
// Raft.
package agents

import (
	"context"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/hostscale/hostscale/controller/internal/metricstore"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// Hub is safe for concurrent use.
type Hub struct {
	Store *metricstore.Store
	// Instances holds each instance's usage from its agent's samples, by
	// instance id: cpu_percent (of one core) and memory_used_bytes (RSS).
	Instances *metricstore.Store

	mu      sync.Mutex
	nodes   map[string]*live
	session uint64
}

type live struct {
	lastSeen   time.Time
	latest     *pb.Sample
	conditions []*pb.NodeCondition
	session    uint64
	cancel     context.CancelFunc
}

// NewHub returns a hub whose sample windows hold capacity samples a node.
func NewHub(capacity int) *Hub {
	return &Hub{Store: metricstore.New(capacity), Instances: metricstore.New(capacity), nodes: map[string]*live{}}
}

func (h *Hub) node(name string) *live {
	l := h.nodes[name]
	if l == nil {
		l = &live{}
		h.nodes[name] = l
	}
	return l
}

// Attach makes a new stream the node's current one. The returned context
// is cancelled when a newer stream of the same node attaches (an agent that
// reconnected before its old stream died) or when detach is called.
func (h *Hub) Attach(ctx context.Context, name string, now time.Time) (context.Context, func()) {
	sctx, cancel := context.WithCancel(ctx)
	h.mu.Lock()
	defer h.mu.Unlock()
	l := h.node(name)
	if l.cancel != nil {
		l.cancel()
	}
	h.session++
	id := h.session
	l.session, l.cancel, l.lastSeen = id, cancel, now
	return sctx, func() {
		cancel()
		h.mu.Lock()
		defer h.mu.Unlock()
		if l := h.nodes[name]; l != nil && l.session == id {
			l.cancel, l.session = nil, 0
		}
	}
}

// Seen records that the node was heard from at now.
func (h *Hub) Seen(name string, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if l := h.node(name); now.After(l.lastSeen) {
		l.lastSeen = now
	}
}

// Sampled records a sample as the node's latest if it is newer, and the
// usage of the instances it carries.
func (h *Hub) Sampled(name string, s *pb.Sample) {
	for _, u := range s.Instances {
		h.Instances.Add(u.Id, &pb.Sample{Time: s.Time, CpuPercent: u.CpuPercent, MemoryUsedBytes: u.RssBytes})
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	l := h.node(name)
	if l.latest == nil || s.GetTime().AsTime().After(l.latest.GetTime().AsTime()) {
		l.latest = s
	}
}

// SetConditions records the conditions the node's agent reported, the
// whole set, and returns the set it replaces.
func (h *Hub) SetConditions(name string, conds []*pb.NodeCondition) (old []*pb.NodeCondition) {
	h.mu.Lock()
	defer h.mu.Unlock()
	l := h.node(name)
	old, l.conditions = l.conditions, conds
	return old
}

// Conditions returns a copy of the conditions the node's agent last
// reported; nil when none.
func (h *Hub) Conditions(name string) []*pb.NodeCondition {
	h.mu.Lock()
	defer h.mu.Unlock()
	l := h.nodes[name]
	if l == nil || len(l.conditions) == 0 {
		return nil
	}
	out := make([]*pb.NodeCondition, len(l.conditions))
	for i, c := range l.conditions {
		out[i] = proto.CloneOf(c)
	}
	return out
}

// ConditionName is a condition's short name, as logs, metrics and alert
// rules spell it: disk_pressure, memory_pressure, disk_stalled.
func ConditionName(t pb.NodeConditionType) string {
	return strings.ToLower(strings.TrimPrefix(t.String(), "NODE_CONDITION_TYPE_"))
}

// ConditionCounts counts, for each condition, the nodes under it.
func (h *Hub) ConditionCounts() map[pb.NodeConditionType]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[pb.NodeConditionType]int{}
	for _, l := range h.nodes {
		for _, c := range l.conditions {
			out[c.Type]++
		}
	}
	return out
}

// Live returns when the node was last heard from and a copy of its latest
// sample; the zero time when never.
func (h *Hub) Live(name string) (time.Time, *pb.Sample) {
	h.mu.Lock()
	defer h.mu.Unlock()
	l := h.nodes[name]
	if l == nil {
		return time.Time{}, nil
	}
	var s *pb.Sample
	if l.latest != nil {
		s = proto.Clone(l.latest).(*pb.Sample)
	}
	return l.lastSeen, s
}

// LastSeen returns when the node was last heard from; the zero time when
// never. Unlike Live, it copies no sample.
func (h *Hub) LastSeen(name string) time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	if l := h.nodes[name]; l != nil {
		return l.lastSeen
	}
	return time.Time{}
}

// Connected reports whether the node has a current stream.
func (h *Hub) Connected(name string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	l := h.nodes[name]
	return l != nil && l.cancel != nil
}

// Reset forgets everything, closing every stream: the leadership it was
// collected under has ended.
func (h *Hub) Reset() {
	h.mu.Lock()
	for _, l := range h.nodes {
		if l.cancel != nil {
			l.cancel()
		}
	}
	h.nodes = map[string]*live{}
	h.mu.Unlock()
	h.Store.Reset()
	h.Instances.Reset()
}
