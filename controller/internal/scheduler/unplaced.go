package scheduler

import (
	"cmp"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// Unplaced keeps, while this node leads, the pools whose wanted instances
// the last round found no node for (GetUnplaced). Its zero value is
// empty and ready.
type Unplaced struct {
	mu    sync.Mutex
	pools map[string]*pb.UnplacedPool
}

// set replaces the pools with those of a round at now, keeping the since
// of each pool that was short already.
func (u *Unplaced) set(plan *Plan, now time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	next := make(map[string]*pb.UnplacedPool, len(plan.Unplaced))
	for pool, n := range plan.Unplaced {
		since := timestamppb.New(now)
		if old := u.pools[pool]; old != nil {
			since = old.Since
		}
		next[pool] = &pb.UnplacedPool{Pool: pool, Instances: uint32(n), Why: plan.UnplacedWhy[pool], Since: since}
	}
	u.pools = next
}

// clear forgets every pool: this node no longer leads.
func (u *Unplaced) clear() {
	u.mu.Lock()
	u.pools = nil
	u.mu.Unlock()
}

// Pools returns copies of the short pools, by name; only pool's when it
// is set.
func (u *Unplaced) Pools(pool string) []*pb.UnplacedPool {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []*pb.UnplacedPool
	for name, p := range u.pools {
		if pool == "" || name == pool {
			out = append(out, &pb.UnplacedPool{Pool: p.Pool, Instances: p.Instances, Why: p.Why, Since: timestamppb.New(p.Since.AsTime())})
		}
	}
	slices.SortFunc(out, func(a, b *pb.UnplacedPool) int { return cmp.Compare(a.Pool, b.Pool) })
	return out
}
