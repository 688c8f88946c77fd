package watch

import (
	"errors"
	"fmt"
	"math"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hostscale/hostscale/internal/hostport"
	"github.com/hostscale/hostscale/internal/names"

	"github.com/hostscale/hostscale/balancer"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// DefaultWeight is the weight given to a backend whose wire weight is 0.
// It is the controller's default, so that backends with and without an
// explicit weight keep the shares the controller meant.
const DefaultWeight = 100

// errNoVersion marks a wire table without a version: it can be neither
// ordered nor acknowledged.
var errNoVersion = errors.New("table has no version")

// FromProto converts a controller's wire table into a balancer.Table. A pool
// without hosts routes any host ("*"); a backend weight of 0 becomes
// DefaultWeight; an unset hold_when_empty is no hold. Errors wrap balancer.ErrInvalidTable and name the field, as
// Table.Validate does; FromProto does not validate what Apply will. It does
// not retain t.
func FromProto(t *pb.Table) (*balancer.Table, error) {
	if t == nil {
		return nil, fmt.Errorf("%w: nil table", balancer.ErrInvalidTable)
	}
	if t.Version == nil {
		return nil, fmt.Errorf("%w: %w", balancer.ErrInvalidTable, errNoVersion)
	}
	out := &balancer.Table{
		Version: versionFromProto(t.Version),
		Pools:   make([]balancer.Pool, 0, len(t.GetPools())),
	}
	for i, p := range t.GetPools() {
		pool := balancer.Pool{
			Name:          p.GetName(),
			Hosts:         append([]string(nil), p.GetHosts()...),
			PathPrefix:    p.GetPathPrefix(),
			Backends:      make([]balancer.Backend, 0, len(p.GetBackends())),
			HTTPSRedirect: p.GetHttpsRedirect(),
		}
		if len(pool.Hosts) == 0 {
			pool.Hosts = []string{"*"}
		}
		if d := p.GetHoldWhenEmpty(); d != nil {
			if err := d.CheckValid(); err != nil {
				return nil, fmt.Errorf("%w: pools[%d].hold_when_empty: %v", balancer.ErrInvalidTable, i, err)
			}
			// Out of range is Validate's to say, with the bounds.
			pool.HoldWhenEmpty = d.AsDuration()
		}
		switch p.GetPolicy() {
		case pb.Policy_POLICY_UNSPECIFIED, pb.Policy_POLICY_LEAST_REQUEST:
			pool.Policy = balancer.PolicyLeastRequest
		case pb.Policy_POLICY_ROUND_ROBIN:
			pool.Policy = balancer.PolicyRoundRobin
		default:
			return nil, fmt.Errorf("%w: pools[%d].policy: unknown policy %d", balancer.ErrInvalidTable, i, p.GetPolicy())
		}
		for j, b := range p.GetBackends() {
			w := uint64(b.GetWeight())
			if w == 0 {
				w = DefaultWeight
			}
			if w > balancer.MaxWeight {
				return nil, fmt.Errorf("%w: pools[%d].backends[%d].weight: %d is above %d",
					balancer.ErrInvalidTable, i, j, w, balancer.MaxWeight)
			}
			pool.Backends = append(pool.Backends, balancer.Backend{
				Address:  b.GetAddress(),
				Weight:   int(w),
				Draining: b.GetDraining(),
			})
		}
		out.Pools = append(out.Pools, pool)
	}
	return out, nil
}

func versionFromProto(v *pb.TableVersion) balancer.Version {
	return balancer.Version{Term: v.GetTerm(), Index: v.GetIndex()}
}

func versionToProto(v balancer.Version) *pb.TableVersion {
	return &pb.TableVersion{Term: v.Term, Index: v.Index}
}

// bucketBounds converts latency bucket bounds to seconds.
func bucketBounds(buckets []time.Duration) []float64 {
	out := make([]float64, len(buckets))
	for i, b := range buckets {
		out[i] = b.Seconds()
	}
	return out
}

// statsToProto builds a stats report of the backends' and pools' counters
// taken at now. The request shares bounds, which must not change; it does
// not retain stats or pools.
func statsToProto(name string, bounds []float64, stats []balancer.BackendStats, pools []balancer.PoolStats, now time.Time) *pb.ReportStatsRequest {
	req := &pb.ReportStatsRequest{
		Balancer:     name,
		Time:         timestamppb.New(now),
		BucketBounds: bounds,
		Backends:     make([]*pb.BackendCounters, 0, len(stats)),
		Pools:        make([]*pb.PoolCounters, 0, len(pools)),
	}
	for _, p := range pools {
		waiting := uint32(math.MaxUint32)
		if p.Waiting < math.MaxUint32 {
			waiting = uint32(max(p.Waiting, 0))
		}
		req.Pools = append(req.Pools, &pb.PoolCounters{Pool: p.Pool, Waiting: waiting, Unserved: p.Unserved})
	}
	for _, s := range stats {
		req.Backends = append(req.Backends, &pb.BackendCounters{
			Pool:            s.Pool,
			Address:         s.Address,
			Requests:        s.Requests,
			Errors:          s.Errors,
			InFlight:        s.InFlight,
			InFlightSeconds: proto.Float64(s.InFlightSeconds),
			LatencyCounts:   append([]uint64(nil), s.LatencyCounts...),
		})
	}
	return req
}

// ParseControllers parses a comma-separated list of host:port addresses.
// Spaces around an entry are ignored and duplicates dropped; an empty list
// is not an error (it means no controller).
func ParseControllers(s string) ([]string, error) { return hostport.ParseList(s) }

// ValidName reports whether name can name a balancer to the controllers: a
// DNS label, [a-z0-9]([-a-z0-9]*[a-z0-9])?, at most 63 characters.
func ValidName(name string) bool { return names.Check(name) == nil }

// NameFromHostname turns a host name into a balancer name: lowercased, every
// run of other characters (dots included) replaced by one '-', trimmed of
// '-' at both ends and cut to 63 characters. It returns "" when nothing
// usable is left.
func NameFromHostname(hostname string) string { return names.FromHostname(hostname) }
