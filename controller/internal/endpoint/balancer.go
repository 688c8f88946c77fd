package endpoint

import (
	"context"
	"fmt"
	"maps"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hostscale/hostscale/controller/internal/autoscale"
	"github.com/hostscale/hostscale/controller/internal/fsm"
	"github.com/hostscale/hostscale/controller/internal/lbstats"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// Balancers serves hostscale.v1.BalancerService from this node's own state.
type Balancers struct {
	pb.UnimplementedBalancerServiceServer
	Core *Core
	Acks *TableAcks
	// Stats receives the balancers' counters on the leader.
	Stats *lbstats.Store

	// cache is the table of the newest pools index built so far, shared
	// by every watcher: it is never modified once built.
	cache atomic.Pointer[pb.Table]
}

var _ pb.BalancerServiceServer = (*Balancers)(nil)

// Table builds the balancers' table from a state; pools and backends come
// in a stable order.
func Table(st *pb.State) *pb.Table {
	t := &pb.Table{Version: &pb.TableVersion{Term: st.PoolsTerm, Index: st.PoolsIndex}}
	names := make([]string, 0, len(st.Pools))
	for n := range st.Pools {
		names = append(names, n)
	}
	slices.Sort(names)
	pools := make(map[string]*pb.TablePool, len(names))
	for _, n := range names {
		p := st.Pools[n]
		tp := &pb.TablePool{Name: p.Name, Hosts: slices.Clone(p.Hosts), PathPrefix: p.PathPrefix, Policy: p.Policy, HttpsRedirect: p.HttpsRedirect}
		// A pool that scales to zero is woken by the requests its
		// balancers hold.
		if hold := autoscale.ActivationTimeout(p.Scaling); hold > 0 {
			tp.HoldWhenEmpty = durationpb.New(hold)
		}
		for _, b := range p.Backends {
			tp.Backends = append(tp.Backends, &pb.TableBackend{Address: b.Address, Weight: b.Weight})
		}
		pools[n] = tp
		t.Pools = append(t.Pools, tp)
	}
	// A pool's instances are in its table while they are healthy and not
	// being removed.
	var routable []*pb.Instance
	for _, in := range st.Instances {
		if fsm.Routable(in) && pools[in.Pool] != nil {
			routable = append(routable, in)
		}
	}
	fsm.SortInstances(routable)
	for _, in := range routable {
		tp := pools[in.Pool]
		w := in.Weight
		if w == 0 {
			w = DefaultWeight
		}
		tp.Backends = append(tp.Backends, &pb.TableBackend{Address: in.Address, Weight: w})
	}
	return t
}

func (s *Balancers) WatchTable(req *pb.WatchTableRequest, stream pb.BalancerService_WatchTableServer) error {
	if err := checkName("balancer", req.Balancer); err != nil {
		return err
	}
	have := req.Have.GetIndex()
	ctx := stream.Context()
	// Without a version the balancer has nothing: it gets the table even
	// when no pool was ever written.
	first := req.Have == nil
	stale := time.NewTicker(WatchMaxStale / 5)
	defer stale.Stop()
	for {
		changed := s.Core.FSM.Changed()
		var t *pb.Table
		s.Core.FSM.Read(func(st *pb.State) {
			if st.PoolsIndex > have || first {
				t = s.table(st)
			}
		})
		first = false
		if t != nil {
			if err := stream.Send(&pb.WatchTableResponse{Table: t, Controller: s.Core.ID}); err != nil {
				return err
			}
			have = t.Version.Index
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-stale.C:
			if err := s.Core.staleness(WatchMaxStale); err != nil {
				return err
			}
		}
	}
}

// WatchMaxStale is how long a controller that is not the leader keeps a
// table watch open without hearing from a leader, and how long any
// controller keeps one open while its writes to its Raft log are stuck or
// failing. A follower cut off from the leader (or left alone after every
// other controller failed) could otherwise feed a balancer its last table
// for as long as the partition lasts, while the rest of the cluster moves
// on; so could one whose disk stalls or fails, as it still hears the
// leader's heartbeats but stores no entry. Ended, the watch moves to another
// controller. Five seconds is several elections long, so a routine
// failover leaves the watches where they are.
var WatchMaxStale = 5 * time.Second

// staleness returns UNAVAILABLE when this node's writes to its Raft log
// have been stuck or failing for more than max, or when it does not lead
// and has not heard from a leader for max.
func (c *Core) staleness(max time.Duration) error {
	if c.LogTrouble != nil {
		if d, what := c.LogTrouble(); d > max {
			return status.Errorf(codes.Unavailable, "controller %s: %s; its state may be stale: watch another controller", c.ID, what)
		}
	}
	if c.Raft.State() == raft.Leader {
		return nil
	}
	last := c.Raft.LastContact()
	if since := time.Since(last); last.IsZero() || since > max {
		heard := "never heard from a leader"
		if !last.IsZero() {
			heard = fmt.Sprintf("has not heard from a leader for %v", since.Round(time.Millisecond))
		}
		return status.Errorf(codes.Unavailable, "controller %s %s: its state may be stale; watch another controller", c.ID, heard)
	}
	return nil
}

// table returns the table of st, built once per pools index.
func (s *Balancers) table(st *pb.State) *pb.Table {
	if c := s.cache.Load(); c != nil && c.Version.Index == st.PoolsIndex && c.Version.Term == st.PoolsTerm {
		return c
	}
	t := Table(st)
	s.cache.Store(t)
	return t
}

func (s *Balancers) AckTable(ctx context.Context, req *pb.AckTableRequest) (*pb.AckTableResponse, error) {
	if err := checkName("balancer", req.Balancer); err != nil {
		return nil, err
	}
	if req.Version == nil {
		return nil, invalid("version", "must be set")
	}
	if len(req.Error) > 4096 {
		return nil, invalid("error", "at most 4096 characters")
	}
	s.Acks.Record(req.Balancer, req.Version, req.Error)
	// The leader waits for every balancer's acknowledgement before it stops
	// a removed instance: pass it on. The table is in force whether or not
	// the leader hears of it, so a failure to forward is not the
	// balancer's error.
	resp := &pb.AckTableResponse{}
	if _, err := s.Core.LeaderOnly(ctx, req, resp); err != nil {
		s.Core.Logger.Debug("forward table acknowledgement to the leader", "balancer", req.Balancer, "err", err)
	}
	return resp, nil
}

// Limits of a stats report.
const (
	maxReportedBackends = 10000
	maxBuckets          = 64
)

func (s *Balancers) ReportStats(ctx context.Context, req *pb.ReportStatsRequest) (*pb.ReportStatsResponse, error) {
	if err := checkName("balancer", req.Balancer); err != nil {
		return nil, err
	}
	if len(req.Backends) > maxReportedBackends {
		return nil, status.Errorf(codes.ResourceExhausted, "backends: %d backends exceed the limit of %d", len(req.Backends), maxReportedBackends)
	}
	if len(req.BucketBounds) > maxBuckets {
		return nil, invalid("bucket_bounds", "at most %d buckets", maxBuckets)
	}
	for i, b := range req.BucketBounds {
		if math.IsNaN(b) || math.IsInf(b, 0) || b <= 0 || (i > 0 && b <= req.BucketBounds[i-1]) {
			return nil, invalid(fmt.Sprintf("bucket_bounds[%d]", i), "bounds must be positive, finite and ascending")
		}
	}
	for i, b := range req.Backends {
		f := fmt.Sprintf("backends[%d]", i)
		if err := checkName(f+".pool", b.GetPool()); err != nil {
			return nil, err
		}
		if err := checkAddress(f+".address", b.GetAddress()); err != nil {
			return nil, err
		}
		if len(b.LatencyCounts) != 0 && len(b.LatencyCounts) != len(req.BucketBounds)+1 {
			return nil, invalid(f+".latency_counts", "%d counts for %d bounds (want bounds + 1)", len(b.LatencyCounts), len(req.BucketBounds))
		}
		if v := b.InFlightSeconds; v != nil && !(*v >= 0 && !math.IsInf(*v, 1)) {
			return nil, invalid(f+".in_flight_seconds", "must be finite and not negative, got %v", *v)
		}
	}
	if req.Started != nil {
		if err := req.Started.CheckValid(); err != nil {
			return nil, invalid("started", "%v", err)
		}
	}
	if len(req.Pools) > maxReportedBackends {
		return nil, status.Errorf(codes.ResourceExhausted, "pools: %d pools exceed the limit of %d", len(req.Pools), maxReportedBackends)
	}
	for i, p := range req.Pools {
		if err := checkName(fmt.Sprintf("pools[%d].pool", i), p.GetPool()); err != nil {
			return nil, err
		}
	}
	resp := &pb.ReportStatsResponse{}
	if fwd, err := s.Core.LeaderOnly(ctx, req, resp); fwd {
		return orNil(resp, err)
	}
	s.Stats.Record(req.Balancer, time.Now(), req)
	if req.Leaving {
		s.Stats.Forget(req.Balancer)
		s.Acks.Forget(req.Balancer)
		s.Core.Logger.Info("balancer left", "balancer", req.Balancer)
	}
	return resp, nil
}

// balancerForget is how long after its last acknowledgement and report
// ListBalancers stops listing a balancer: lbstats' own memory on the leader.
const balancerForget = 11 * time.Minute

// ListBalancers lists, on the leader, the balancers it heard from.
func (s *Balancers) ListBalancers(ctx context.Context, req *pb.ListBalancersRequest) (*pb.ListBalancersResponse, error) {
	size, after, err := pageArgs(req.PageSize, req.PageToken)
	if err != nil {
		return nil, err
	}
	resp := &pb.ListBalancersResponse{}
	if fwd, err := s.Core.LeaderOnly(ctx, req, resp); fwd {
		return orNil(resp, err)
	}
	var all []*pb.BalancerStatus
	all, resp.TableVersion, resp.Index = s.statuses(time.Now())
	for _, b := range all {
		if b.Name <= after {
			continue
		}
		if len(resp.Balancers) == size {
			resp.NextPageToken = pageToken(resp.Balancers[size-1].Name)
			break
		}
		resp.Balancers = append(resp.Balancers, b)
	}
	resp.Leader = s.Core.ID
	return resp, nil
}

// statuses returns what this node, as leader, knows of the balancers
// heard from within balancerForget, by name, with the table in force and
// the index it reflects.
func (s *Balancers) statuses(now time.Time) ([]*pb.BalancerStatus, *pb.TableVersion, uint64) {
	var version *pb.TableVersion
	index := s.Core.FSM.Read(func(st *pb.State) {
		version = &pb.TableVersion{Term: st.PoolsTerm, Index: st.PoolsIndex}
	})
	byName := map[string]*pb.BalancerStatus{}
	entry := func(name string) *pb.BalancerStatus {
		if byName[name] == nil {
			byName[name] = &pb.BalancerStatus{Name: name}
		}
		return byName[name]
	}
	for name, ack := range s.Acks.All() {
		if now.Sub(ack.Time) > balancerForget {
			continue
		}
		b := entry(name)
		b.AckedVersion, b.AckedAt, b.AckError = ack.Version, timestamppb.New(ack.Time), ack.Error
		b.InSync = ack.Version.GetIndex() == version.Index && ack.Error == ""
	}
	for name, r := range s.Stats.Balancers() {
		b := entry(name)
		b.ReportedAt = timestamppb.New(r.At)
		b.Lost = s.Stats.PresumedGone(r.At, now)
		if !r.Started.IsZero() {
			b.Started = timestamppb.New(r.Started)
		}
	}
	out := make([]*pb.BalancerStatus, 0, len(byName))
	for _, n := range slices.Sorted(maps.Keys(byName)) {
		out = append(out, byName[n])
	}
	return out, version, index
}

var (
	descBalancerInSync = prometheus.NewDesc("hostscale_controller_balancer_in_sync",
		"On the leader, per balancer heard from and not lost: 1 when it applied the table in force, 0 when it is behind or refused it.", []string{"balancer"}, nil)
	descBalancerUp = prometheus.NewDesc("hostscale_controller_balancer_up",
		"On the leader, per balancer that sent stats reports: 1 while it reports, 0 once it has sent none for -balancer-lost-after (presumed gone).", []string{"balancer"}, nil)
)

// Collector exports, while leading says this node leads, whether each
// balancer applied the table in force, and whether it still reports: an
// alert on the first catches a balancer that stopped taking tables, on
// the second one that is gone.
func (s *Balancers) Collector(leading func() bool) prometheus.Collector {
	return balancersCollector{s, leading}
}

type balancersCollector struct {
	s       *Balancers
	leading func() bool
}

func (balancersCollector) Describe(chan<- *prometheus.Desc) {}

func (c balancersCollector) Collect(ch chan<- prometheus.Metric) {
	if !c.leading() {
		return
	}
	all, _, _ := c.s.statuses(time.Now())
	for _, b := range all {
		if b.ReportedAt != nil {
			up := 1.0
			if b.Lost {
				up = 0
			}
			ch <- prometheus.MustNewConstMetric(descBalancerUp, prometheus.GaugeValue, up, b.Name)
		}
		if b.AckedVersion == nil || b.Lost {
			continue // reports only, or presumed gone: nothing to say of its table
		}
		v := 0.0
		if b.InSync {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descBalancerInSync, prometheus.GaugeValue, v, b.Name)
	}
}

// TableAcks remembers the newest version each balancer acknowledged to
// this controller. It is safe for concurrent use.
type TableAcks struct {
	mu   sync.Mutex
	acks map[string]Ack
	// notify is closed and replaced on every acknowledgement.
	notify chan struct{}
}

// Ack is a balancer's last acknowledgement.
type Ack struct {
	Version *pb.TableVersion
	Error   string
	Time    time.Time
}

// NewTableAcks returns an empty book.
func NewTableAcks() *TableAcks {
	return &TableAcks{acks: map[string]Ack{}, notify: make(chan struct{})}
}

// Record stores an acknowledgement unless an older version is reported.
func (a *TableAcks) Record(balancer string, v *pb.TableVersion, errText string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if prev, ok := a.acks[balancer]; ok && prev.Version.GetIndex() > v.GetIndex() {
		return
	}
	a.acks[balancer] = Ack{Version: proto.Clone(v).(*pb.TableVersion), Error: errText, Time: time.Now()}
	close(a.notify)
	a.notify = make(chan struct{})
}

// All returns every balancer's last acknowledgement, by name.
func (a *TableAcks) All() map[string]Ack {
	a.mu.Lock()
	defer a.mu.Unlock()
	return maps.Clone(a.acks)
}

// Get returns a balancer's last acknowledgement.
func (a *TableAcks) Get(balancer string) (Ack, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ack, ok := a.acks[balancer]
	return ack, ok
}

// Changed returns a channel closed at the next acknowledgement, or when a
// balancer is forgotten.
func (a *TableAcks) Changed() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.notify
}

// Forget forgets balancer's acknowledgements (it left): AllAcked no longer
// waits for it.
func (a *TableAcks) Forget(balancer string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.acks[balancer]; ok {
		delete(a.acks, balancer)
		close(a.notify)
		a.notify = make(chan struct{})
	}
}

// AllAcked reports whether every balancer heard from within ttl before now
// acknowledged a table at index or newer.
func (a *TableAcks) AllAcked(index uint64, now time.Time, ttl time.Duration) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, ack := range a.acks {
		if now.Sub(ack.Time) <= ttl && ack.Version.GetIndex() < index {
			return false
		}
	}
	return true
}
