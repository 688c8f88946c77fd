package endpoint

import (
	"context"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hostscale/hostscale/controller/internal/lbstats"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// Pools serves hostscale.v1.PoolService.
type Pools struct {
	pb.UnimplementedPoolServiceServer
	Core *Core
	// Traffic is the balancers' counters, on the leader (GetTraffic);
	// Leading reports whether this node is the ready leader. Without them
	// GetTraffic asks the leader.
	Traffic *lbstats.Store
	Leading func() bool
	// Unplaced returns, on the leader, the pools (pool's, when set) whose
	// wanted instances its scheduler found no node for (GetUnplaced);
	// without it GetUnplaced asks the leader.
	Unplaced func(pool string) []*pb.UnplacedPool
}

var _ pb.PoolServiceServer = (*Pools)(nil)

const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

// pool returns a copy of the named pool and the index the read reflects.
func (s *Pools) pool(name string) (*pb.Pool, uint64) {
	var p *pb.Pool
	idx := s.Core.FSM.Read(func(st *pb.State) {
		if x := st.Pools[name]; x != nil {
			p = proto.Clone(x).(*pb.Pool)
		}
	})
	return p, idx
}

func (s *Pools) CreatePool(ctx context.Context, req *pb.CreatePoolRequest) (*pb.CreatePoolResponse, error) {
	id, err := requestID(req.RequestId)
	if err != nil {
		return nil, err
	}
	req.RequestId = id
	if err := normalizePool(req.Pool); err != nil {
		return nil, err
	}
	resp := &pb.CreatePoolResponse{}
	res, fwd, err := s.Core.Write(ctx, req, resp, &pb.Command{
		RequestId: id,
		Command:   &pb.Command_CreatePool{CreatePool: &pb.CreatePoolCommand{Pool: req.Pool}},
	})
	if fwd || err != nil {
		return orNil(resp, err)
	}
	resp.Pool, resp.Index = s.pool(req.Pool.Name)
	resp.Index = max(resp.Index, res.Index)
	return resp, nil
}

func (s *Pools) UpdatePool(ctx context.Context, req *pb.UpdatePoolRequest) (*pb.UpdatePoolResponse, error) {
	id, err := requestID(req.RequestId)
	if err != nil {
		return nil, err
	}
	req.RequestId = id
	keep := req.Pool != nil && req.Pool.Desired == 0
	if err := normalizePool(req.Pool); err != nil {
		return nil, err
	}
	if keep {
		req.Pool.Desired = 0 // the state machine keeps the current count
	}
	resp := &pb.UpdatePoolResponse{}
	// Checked on the leader, whose state holds every committed pool.
	if fwd, err := s.Core.LeaderOnly(ctx, req, resp); fwd {
		return orNil(resp, err)
	}
	if p, _ := s.pool(req.Pool.Name); p == nil {
		return nil, status.Errorf(codes.NotFound, "pool %q not found", req.Pool.Name)
	}
	res, fwd, err := s.Core.Write(ctx, req, resp, &pb.Command{
		RequestId: id,
		Command:   &pb.Command_UpdatePool{UpdatePool: &pb.UpdatePoolCommand{Pool: req.Pool}},
	})
	if fwd || err != nil {
		return orNil(resp, err)
	}
	resp.Pool, resp.Index = s.pool(req.Pool.Name)
	resp.Index = max(resp.Index, res.Index)
	return resp, nil
}

func (s *Pools) GetPool(ctx context.Context, req *pb.GetPoolRequest) (*pb.GetPoolResponse, error) {
	if err := checkName("pool", req.Pool); err != nil {
		return nil, err
	}
	resp := &pb.GetPoolResponse{}
	if fwd, err := s.Core.Consistent(ctx, req.Consistent, req, resp); fwd || err != nil {
		return orNil(resp, err)
	}
	resp.Pool, resp.Index = s.pool(req.Pool)
	if resp.Pool == nil {
		return nil, status.Errorf(codes.NotFound, "pool %q not found", req.Pool)
	}
	return resp, nil
}

func (s *Pools) ListPools(ctx context.Context, req *pb.ListPoolsRequest) (*pb.ListPoolsResponse, error) {
	size, after, err := pageArgs(req.PageSize, req.PageToken)
	if err != nil {
		return nil, err
	}
	resp := &pb.ListPoolsResponse{}
	if fwd, err := s.Core.Consistent(ctx, req.Consistent, req, resp); fwd || err != nil {
		return orNil(resp, err)
	}
	resp.Index = s.Core.FSM.Read(func(st *pb.State) {
		names := make([]string, 0, len(st.Pools))
		for n := range st.Pools {
			if n > after {
				names = append(names, n)
			}
		}
		slices.Sort(names)
		if len(names) > size {
			names = names[:size]
			resp.NextPageToken = pageToken(names[size-1])
		}
		for _, n := range names {
			resp.Pools = append(resp.Pools, proto.Clone(st.Pools[n]).(*pb.Pool))
		}
	})
	return resp, nil
}

func (s *Pools) DeletePool(ctx context.Context, req *pb.DeletePoolRequest) (*pb.DeletePoolResponse, error) {
	id, err := requestID(req.RequestId)
	if err != nil {
		return nil, err
	}
	req.RequestId = id
	if err := checkName("pool", req.Pool); err != nil {
		return nil, err
	}
	resp := &pb.DeletePoolResponse{}
	res, fwd, err := s.Core.Write(ctx, req, resp, &pb.Command{
		RequestId: id,
		Command:   &pb.Command_DeletePool{DeletePool: &pb.DeletePoolCommand{Pool: req.Pool}},
	})
	if fwd || err != nil {
		return orNil(resp, err)
	}
	resp.Index = res.Index
	return resp, nil
}

func (s *Pools) AddBackend(ctx context.Context, req *pb.AddBackendRequest) (*pb.AddBackendResponse, error) {
	id, err := requestID(req.RequestId)
	if err != nil {
		return nil, err
	}
	req.RequestId = id
	if err := checkName("pool", req.Pool); err != nil {
		return nil, err
	}
	if err := checkBackend("backend", req.Backend); err != nil {
		return nil, err
	}
	if req.Backend.Weight == 0 {
		req.Backend.Weight = DefaultWeight
	}
	resp := &pb.AddBackendResponse{}
	res, fwd, err := s.Core.Write(ctx, req, resp, &pb.Command{
		RequestId: id,
		Command:   &pb.Command_AddBackend{AddBackend: &pb.AddBackendCommand{Pool: req.Pool, Backend: req.Backend}},
	})
	if fwd || err != nil {
		return orNil(resp, err)
	}
	resp.Pool, resp.Index = s.pool(req.Pool)
	resp.Index = max(resp.Index, res.Index)
	return resp, nil
}

func (s *Pools) RemoveBackend(ctx context.Context, req *pb.RemoveBackendRequest) (*pb.RemoveBackendResponse, error) {
	id, err := requestID(req.RequestId)
	if err != nil {
		return nil, err
	}
	req.RequestId = id
	if err := checkName("pool", req.Pool); err != nil {
		return nil, err
	}
	if err := checkAddress("address", req.Address); err != nil {
		return nil, err
	}
	resp := &pb.RemoveBackendResponse{}
	res, fwd, err := s.Core.Write(ctx, req, resp, &pb.Command{
		RequestId: id,
		Command:   &pb.Command_RemoveBackend{RemoveBackend: &pb.RemoveBackendCommand{Pool: req.Pool, Address: req.Address}},
	})
	if fwd || err != nil {
		return orNil(resp, err)
	}
	resp.Pool, resp.Index = s.pool(req.Pool)
	resp.Index = max(resp.Index, res.Index)
	return resp, nil
}

// orNil returns resp when err is nil, else a nil response and err, as gRPC
// handlers must.
func orNil[T any](resp *T, err error) (*T, error) {
	if err != nil {
		return nil, err
	}
	return resp, nil
}
